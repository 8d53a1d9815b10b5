"""Per-device models: send each message to the pipeline of the bundle that scores its device.

`model.devices` maps device-id globs to bundles (first match in file order wins, devices
that match none use `model.path`). Each route has its own parser (the bundle's features),
ring buffers (its window and stride) and alert states; they share the window queue, the
worker and the sink. A device's route is decided by its id alone, once per topic: the
decision is remembered (`TopicMemory`), so a known topic costs one dict lookup on top of the
single-model path. With no `model.devices` the service does not use this module at all.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Sequence

from daemon.live.ingest.payload import PayloadParser, Rejected
from daemon.live.ingest.pipeline import Claim, MessageHandler, Record
from daemon.live.ingest.topics import TopicMemory


class DeviceRouter:
    def __init__(self, topics: PayloadParser, routes: Sequence[tuple[str, MessageHandler]],
                 default: MessageHandler) -> None:
        """`topics` extracts and validates device ids (any route's parser: topic rules are
        shared); `routes` are (glob, pipeline) in priority order; `default` takes the rest,
        including messages whose topic is unusable, so they are rejected and counted there."""
        self._device_of = topics.device_of
        self._routes = tuple(routes)
        self._default = default
        self._by_topic: TopicMemory[MessageHandler] = TopicMemory()

    def route_of(self, device: str) -> MessageHandler:
        return next((pipeline for pattern, pipeline in self._routes if fnmatchcase(device, pattern)), self._default)

    def __call__(self, topic: str, payload: bytes, received: float) -> object:
        return self._pipeline_of(topic)(topic, payload, received)

    def handle_batch(self, records: Sequence[Record], received: float, claim: Claim | None = None) -> int:
        """Each run of consecutive records of one route goes to that route's pipeline as one
        batch: runs, not one batch per route, so windows are claimed in record order (a Kafka
        partition commits up to its oldest claim)."""
        accepted = 0
        run: list[Record] = []
        run_pipeline: MessageHandler | None = None
        for record in records:
            pipeline = self._pipeline_of(record[0])
            if pipeline is not run_pipeline:
                if run_pipeline is not None:
                    accepted += run_pipeline.handle_batch(run, received, claim)
                run, run_pipeline = [], pipeline
            run.append(record)
        if run_pipeline is not None:
            accepted += run_pipeline.handle_batch(run, received, claim)
        return accepted

    def _pipeline_of(self, topic: str) -> MessageHandler:
        pipeline = self._by_topic.get(topic)
        if pipeline is None:
            device = self._device_of(topic)
            if type(device) is Rejected:
                return self._default  # which rejects and counts the message
            pipeline = self._by_topic.remember(topic, self.route_of(device))
        return pipeline
