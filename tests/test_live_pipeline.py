"""The message pipeline's batch entry: a batch of messages ends exactly as the same messages
handed over one at a time (same results, same counts, same windows, same receipts), whatever
mix of accepted and rejected messages it holds and wherever in it windows complete, with or
without a device field in the payloads."""

from __future__ import annotations

import json

import numpy as np

from daemon.live.config import LimitsConfig, StreamConfig
from daemon.live.events import WindowJob
from daemon.live.ingest.buffers import DeviceBuffers
from daemon.live.ingest.payload import PayloadParser
from daemon.live.ingest.pipeline import MessagePipeline
from daemon.live.telemetry.metrics import MESSAGE_RESULTS, Metrics

FEATURES = ["a", "b"]
WINDOW = 3
NOW = 1_700_000_000.0
MAX_PAYLOAD = 200


def pipeline(max_devices: int = 3, device_field: str | None = None) -> tuple[MessagePipeline, list[WindowJob],
                                                                             Metrics]:
    metrics = Metrics()
    jobs: list[WindowJob] = []
    buffers = DeviceBuffers(WINDOW, len(FEATURES), StreamConfig(stride=2), LimitsConfig(max_devices=max_devices),
                            metrics)
    parser = PayloadParser(FEATURES, max_payload_bytes=MAX_PAYLOAD, device_field=device_field)
    return MessagePipeline(parser, buffers, jobs.append, metrics.messages), jobs, metrics


def topic(device: str) -> str:
    return f"sensors/{device}/data"


def reading(ts: float, a: float = 1.0, **extra: object) -> bytes:
    return json.dumps({"ts": ts, "a": a, "b": 2.0, **extra}).encode()


def mixed_messages() -> list[tuple[str, bytes, str]]:
    """(topic, payload, expected result): every result the pipeline gives, windows completing
    at several places in between (window 3, stride 2)."""
    d1, d2, d3 = topic("d1"), topic("d2"), topic("d3")
    return [
        (d1, reading(NOW - 100), "ok"),
        (d1, reading(NOW - 99, a=2), "ok"),
        (d2, reading(NOW - 99), "ok"),
        (d1, reading(NOW - 98, a=3), "ok"),  # d1's first window
        (d1, b"not json", "invalid_json"),
        (d1, b"[1, 2]", "invalid_json"),
        (d1, reading(NOW - 98), "duplicate"),
        (d1, reading(NOW - 99.5), "out_of_order"),
        (d1, reading(NOW + 3600), "bad_timestamp"),
        (d1, json.dumps({"ts": NOW - 97, "a": 1.0}).encode(), "missing_feature"),
        (d1, json.dumps({"ts": NOW - 97, "a": True, "b": 1.0}).encode(), "invalid_value"),
        (d1, json.dumps({"ts": NOW - 97, "a": "1", "b": 1.0}).encode(), "invalid_value"),
        (d1, b'{"ts": %f, "a": 1.0, "b": NaN}' % (NOW - 97), "non_finite"),
        (d1, json.dumps({"ts": NOW - 97, "a": 1e39, "b": 1.0}).encode(), "non_finite"),
        (d1, reading(NOW - 97, pad="x" * MAX_PAYLOAD), "oversized"),
        ("sensors/d,1/data", reading(NOW - 97), "bad_device_id"),
        ("other/d1", reading(NOW - 97), "bad_topic"),
        (d2, reading(NOW - 98, a=5), "ok"),
        (d3, reading(NOW - 99), "ok"),
        (topic("d4"), reading(NOW - 99), "too_many_devices"),
        (d1, reading(NOW - 97, a=4), "ok"),
        (d2, reading(NOW - 97, a=6), "ok"),  # d2's first window
        (d1, reading(NOW - 96, a=5), "ok"),  # d1's second window
        (d3, json.dumps({"ts": NOW - 98, "a": 0, "b": -3}).encode(), "ok"),  # ints are numbers
    ]


def naming(payload: bytes, device: object) -> bytes:
    """The payload with a device field first, if it is a JSON object."""
    if not payload.startswith(b"{"):
        return payload
    return b'{"device": ' + json.dumps(device).encode() + b", " + payload[1:]


REFUSED_BEFORE_THE_DEVICE_FIELD = {"oversized", "invalid_json", "bad_device_id", "bad_topic"}


def messages_naming_a_device() -> list[tuple[str, bytes, str]]:
    """`mixed_messages` with every payload naming its topic's device, each refused one also
    sent again naming another device (`key_mismatch`, unless the message is refused before its
    payload is read), an accepted one naming another device and one naming none (null)."""
    out = []
    for t, p, expected in mixed_messages():
        out.append((t, naming(p, t.split("/")[1]), expected))
        if expected != "ok":
            out.append((t, naming(p, "d9"), expected if expected in REFUSED_BEFORE_THE_DEVICE_FIELD else "key_mismatch"))
    return out + [(topic("d2"), naming(reading(NOW - 96), "d1"), "key_mismatch"),
                  (topic("d2"), naming(reading(NOW - 96), None), "ok")]


def windows(jobs: list[WindowJob]) -> list[tuple[str, float, list[list[float]]]]:
    return [(job.device, job.ts_end, job.window.tolist()) for job in jobs]


def batch_and_singles(messages: list[tuple[str, bytes, str]], device_field: str | None = None
                      ) -> tuple[tuple[MessagePipeline, list[WindowJob], Metrics], ...]:
    """The messages handed one at a time to one pipeline and as one batch to another, each
    ending in its expected result; (pipeline, windows, metrics) of the batch, then the singles."""
    one_by_one, jobs_single, metrics_single = pipeline(device_field=device_field)
    results = [one_by_one(t, p, NOW) for t, p, _ in messages]
    assert results == [expected for _, _, expected in messages]

    batched, jobs_batch, metrics_batch = pipeline(device_field=device_field)
    accepted = batched.handle_batch([(t, p, None) for t, p, _ in messages], NOW)
    assert accepted == results.count("ok")

    assert metrics_batch.messages.counts == metrics_single.messages.counts
    expected_counts = {r: sum(e == r for _, _, e in messages) for r in MESSAGE_RESULTS}
    assert metrics_batch.messages.counts == expected_counts
    assert windows(jobs_batch) == windows(jobs_single)
    assert batched.last_ok == one_by_one.last_ok == NOW
    return (batched, jobs_batch, metrics_batch), (one_by_one, jobs_single, metrics_single)


def test_a_batch_ends_as_the_same_messages_one_at_a_time():
    (_, jobs, _), _ = batch_and_singles(mixed_messages())
    assert [job.device for job in jobs] == ["d1", "d2", "d1"]
    assert np.array_equal(jobs[0].window, [[1.0, 2.0], [2.0, 2.0], [3.0, 2.0]])


def test_payloads_naming_a_device_end_as_one_at_a_time_with_a_mismatch_refused_once_the_payload_is_read():
    """The Kafka source's rule (`kafka.device_field`): every refusal keeps its reason and count
    whether the payload names its own device, another or none, in a batch or one at a time."""
    (_, jobs, metrics), _ = batch_and_singles(messages_naming_a_device(), device_field="device")
    (_, jobs_unnamed, _), _ = batch_and_singles(mixed_messages())
    assert windows(jobs) == windows(jobs_unnamed)
    assert metrics.messages.counts["key_mismatch"] == 10


def test_without_a_device_field_a_payload_naming_another_device_is_its_topics_reading():
    """MQTT: the topic names the device; a device in the payload is an extra field."""
    messages = [(t, naming(p, "d9"), expected) for t, p, expected in mixed_messages()]
    (_, jobs, _), _ = batch_and_singles(messages)
    (_, jobs_unnamed, _), _ = batch_and_singles(mixed_messages())
    assert windows(jobs) == windows(jobs_unnamed)


def test_a_batch_claims_a_receipt_for_each_window_in_record_order_with_its_record_tag():
    messages = mixed_messages()
    batched, jobs, _ = pipeline()
    claimed: list[object] = []

    def claim(tag: object) -> object:
        claimed.append(tag)
        return ("receipt", tag)

    batched.handle_batch([(t, p, i) for i, (t, p, _) in enumerate(messages)], NOW, claim)
    assert claimed == [3, 21, 22]  # the records that completed d1's, d2's and d1's windows
    assert [job.receipt for job in jobs] == [("receipt", 3), ("receipt", 21), ("receipt", 22)]


def test_batches_split_anywhere_end_as_one_batch():
    messages = [(t, p, None) for t, p, _ in mixed_messages()]
    whole, jobs_whole, metrics_whole = pipeline()
    whole.handle_batch(messages, NOW)
    for size in (1, 2, 5, 7):
        split, jobs_split, metrics_split = pipeline()
        for start in range(0, len(messages), size):
            split.handle_batch(messages[start:start + size], NOW)
        assert metrics_split.messages.counts == metrics_whole.messages.counts
        assert windows(jobs_split) == windows(jobs_whole)


class BuggyParser(PayloadParser):
    def parse_fields(self, topic: str, payload: bytes, now: float):
        if payload == b"bug":
            raise RuntimeError("a bug")
        return super().parse_fields(topic, payload, now)


def test_a_bug_costs_one_counted_message_and_the_rest_of_the_batch_goes_on():
    metrics = Metrics()
    jobs: list[WindowJob] = []
    buffers = DeviceBuffers(1, len(FEATURES), StreamConfig(stride=1), LimitsConfig(), metrics)
    handle = MessagePipeline(BuggyParser(FEATURES), buffers, jobs.append, metrics.messages)
    accepted = handle.handle_batch([(topic("d1"), reading(NOW - 2), None), (topic("d1"), b"bug", None),
                                    (topic("d1"), reading(NOW - 1), None)], NOW)
    assert accepted == 2
    assert {r: n for r, n in metrics.messages.counts.items() if n} == {"ok": 2, "internal_error": 1}
    assert len(jobs) == 2
    assert handle(topic("d1"), b"bug", NOW) == "internal_error"


def test_an_empty_batch_counts_nothing_and_leaves_the_last_accepted_time():
    handle, jobs, metrics = pipeline()
    handle(topic("d1"), reading(NOW - 5), NOW - 1)
    assert handle.handle_batch([], NOW) == 0
    assert handle.last_ok == NOW - 1
    assert sum(metrics.messages.counts.values()) == 1 and not jobs


def test_a_batch_of_rejects_only_leaves_the_last_accepted_time():
    handle, _, _ = pipeline()
    handle(topic("d1"), reading(NOW - 5), NOW - 1)
    assert handle.handle_batch([(topic("d1"), b"not json", None), (topic("d1"), b"{}", None)], NOW) == 0
    assert handle.last_ok == NOW - 1
