"""Per-device models: which pipeline, and so which bundle, a device's messages reach."""

from daemon.live.ingest.payload import PayloadParser
from daemon.live.ingest.routing import DeviceRouter


class Recorder:
    def __init__(self, name: str) -> None:
        self.name = name
        self.topics: list[str] = []

        self.batches: list[list[str]] = []

    def __call__(self, topic: str, payload: bytes, now: float) -> str:
        self.topics.append(topic)
        return self.name

    def handle_batch(self, records, now: float, claim=None) -> int:
        self.batches.append([topic for topic, _, _ in records])
        return len(records)


def router(*patterns: str) -> tuple[DeviceRouter, dict[str, Recorder]]:
    pipelines = {p: Recorder(p) for p in patterns}
    default = Recorder("default")
    topics = PayloadParser(["x"], "sensors/+/data", 1)
    return DeviceRouter(topics, list(pipelines.items()), default), {**pipelines, "default": default}


def test_the_first_matching_glob_wins_and_the_rest_go_to_the_default():
    route, _ = router("fan-*", "f*", "pump-?")
    assert route("sensors/fan-1/data", b"{}", 0) == "fan-*"
    assert route("sensors/fridge/data", b"{}", 0) == "f*"
    assert route("sensors/pump-7/data", b"{}", 0) == "pump-?"
    assert route("sensors/pump-17/data", b"{}", 0) == "default"


def test_globs_are_case_sensitive_like_device_ids():
    route, _ = router("fan-*")
    assert route("sensors/FAN-1/data", b"{}", 0) == "default"


def test_unusable_topics_reach_the_default_pipeline_which_rejects_and_counts_them():
    route, seen = router("*")
    assert route("sensors/a,b=c d/data", b"{}", 0) == "default"
    assert route("other/x", b"{}", 0) == "default"
    assert seen["*"].topics == []


def test_every_message_of_a_device_takes_the_same_route():
    route, seen = router("fan-*")
    for _ in range(3):
        route("sensors/fan-1/data", b"{}", 0)
    assert seen["fan-*"].topics == ["sensors/fan-1/data"] * 3


def test_a_batch_reaches_each_route_in_runs_of_consecutive_records_in_record_order():
    """Runs, not one batch per route: windows are then claimed in record order, which a Kafka
    partition's commits rely on."""
    route, seen = router("fan-*")
    fan, pump, bad = "sensors/fan-1/data", "sensors/pump-1/data", "sensors/a,b/data"
    assert route.handle_batch([(t, b"{}", None) for t in (fan, fan, pump, bad, fan, pump)], 0) == 6
    assert seen["fan-*"].batches == [[fan, fan], [fan]]
    assert seen["default"].batches == [[pump, bad], [pump]]
    assert route.handle_batch([], 0) == 0 and seen["fan-*"].batches == [[fan, fan], [fan]]
