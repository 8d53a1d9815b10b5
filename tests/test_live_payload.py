"""The payload parser, driven through `parse_fields` as the message pipeline calls it."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.live.ingest.payload import PayloadParser, Rejected, decode_json
from daemon.live.ingest.topics import TOPIC_MEMORY_SIZE, TopicMemory, topic_problem
from daemon.live.telemetry.metrics import MESSAGE_RESULTS

FEATURES = ["temp", "pressure", "vibration"]
NOW = 1_700_000_000.0
TOPIC = "sensors/pump-7/data"


def parser(**kwargs) -> PayloadParser:
    return PayloadParser(FEATURES, **kwargs)


def message(**fields) -> bytes:
    doc = {"ts": NOW - 1, "temp": 20.5, "pressure": 1013, "vibration": 0.01}
    doc.update(fields)
    return json.dumps({k: v for k, v in doc.items() if v is not ...}).encode()


def accepted(result) -> tuple[str, float, tuple]:
    """(device, ts, values) of an accepted message."""
    assert not isinstance(result, Rejected), result
    device, ts, values = result
    return device, ts, values


def device_of(result) -> str:
    return accepted(result)[0]


def ts_of(result) -> float:
    return accepted(result)[1]


def values_of(result) -> list[float]:
    return list(accepted(result)[2])


def rejected(result, reason: str) -> Rejected:
    assert isinstance(result, Rejected), result
    assert result.reason == reason, result
    assert result.reason in MESSAGE_RESULTS
    return result


def test_valid_message_becomes_device_time_and_values_in_model_order():
    payload = b'{"vibration": 0.25, "ts": 1699999999.5, "pressure": 1013, "temp": 20.5}'
    assert accepted(parser().parse_fields(TOPIC, payload, NOW)) == ("pump-7", 1699999999.5, (20.5, 1013, 0.25))


def test_missing_ts_means_arrival_time():
    assert ts_of(parser().parse_fields(TOPIC, message(ts=...), NOW)) == NOW


def test_rfc3339_timestamps_with_offset_are_accepted():
    p = parser()
    assert ts_of(p.parse_fields(TOPIC, message(ts="2023-11-14T22:13:19Z"), NOW)) == 1_699_999_999.0
    assert ts_of(p.parse_fields(TOPIC, message(ts="2023-11-14T23:13:19.5+01:00"), NOW)) == 1_699_999_999.5


@pytest.mark.parametrize("ts", ["2023-11-14T22:13:19", "yesterday", "", True, None, [1], "2023-11-14"])
def test_unusable_ts_is_bad_timestamp(ts):
    rejected(parser().parse_fields(TOPIC, message(ts=ts), NOW), "bad_timestamp")


@pytest.mark.parametrize("literal", [b"NaN", b"-Infinity", b"1" + b"0" * 400, b"-1", b'"1969-12-31T23:59:59Z"'])
def test_non_finite_absurd_or_pre_1970_ts_is_bad_timestamp(literal):
    rejected(parser().parse_fields(TOPIC, b'{"ts": ' + literal + b', "temp": 1, "pressure": 1, "vibration": 1}', NOW),
             "bad_timestamp")


def test_ts_too_far_in_the_future_is_bad_timestamp_and_millis_get_a_hint():
    p = parser(max_future_seconds=300)
    assert accepted(p.parse_fields(TOPIC, message(ts=NOW + 299), NOW))
    rejected(p.parse_fields(TOPIC, message(ts=NOW + 301), NOW), "bad_timestamp")
    assert "milliseconds" in rejected(p.parse_fields(TOPIC, message(ts=NOW * 1000), NOW), "bad_timestamp").detail


def test_late_timestamps_are_accepted():
    assert ts_of(parser().parse_fields(TOPIC, message(ts=NOW - 86400 * 30), NOW)) == NOW - 86400 * 30


def test_extra_fields_are_ignored():
    values = values_of(parser().parse_fields(TOPIC, message(firmware="1.2.3", extra={"a": [1]}), NOW))
    assert values == [20.5, 1013.0, 0.01]


def test_without_a_device_field_a_device_named_in_the_payload_is_an_extra_field():
    """MQTT: the topic alone names the device."""
    assert device_of(parser().parse_fields(TOPIC, message(device="pump-9"), NOW)) == "pump-7"


@pytest.mark.parametrize("named", ["pump-7", None, ...])
def test_a_device_field_that_agrees_is_absent_or_null_is_accepted(named):
    assert device_of(parser(device_field="device").parse_fields(TOPIC, message(device=named), NOW)) == "pump-7"


@pytest.mark.parametrize("named", ["pump-9", "PUMP-7", "", 7, ["pump-7"], {"id": "pump-7"}, False])
def test_a_device_field_naming_another_device_is_key_mismatch(named):
    result = rejected(parser(device_field="device").parse_fields(TOPIC, message(device=named), NOW), "key_mismatch")
    assert "pump-7" in result.detail and "'device'" in result.detail


def test_a_device_field_is_read_from_the_decoded_payload_however_its_name_is_written():
    payload = message().replace(b"{", b'{"\\u0064evice": "pump-9", ', 1)
    assert json.loads(payload)["device"] == "pump-9"
    rejected(parser(device_field="device").parse_fields(TOPIC, payload, NOW), "key_mismatch")


@pytest.mark.parametrize("payload, reason", [
    (message(device="pump-9", pad="x" * 300), "oversized"),
    (b'{"device": "pump-9", "ts": }', "invalid_json"),
    (message(device="pump-9", ts=NOW + 3600), "key_mismatch"),
    (message(device="pump-9", temp=...), "key_mismatch"),
    (message(device="pump-9", temp="1"), "key_mismatch"),
])
def test_a_device_field_is_checked_once_the_payload_is_an_object_before_its_time_and_features(payload, reason):
    rejected(parser(device_field="device", max_payload_bytes=300).parse_fields(TOPIC, payload, NOW), reason)


def test_missing_feature_names_the_feature():
    assert "'pressure'" in rejected(parser().parse_fields(TOPIC, message(pressure=...), NOW), "missing_feature").detail


@pytest.mark.parametrize("value", ["20.5", True, False, None, [1.0], {"v": 1}])
def test_non_numbers_and_bools_are_invalid_value(value):
    rejected(parser().parse_fields(TOPIC, message(temp=value), NOW), "invalid_value")


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400", "1e39"])
def test_nan_infinity_and_float32_overflow_are_non_finite(literal):
    payload = message().replace(b'"temp": 20.5', b'"temp": ' + literal.encode())
    rejected(parser().parse_fields(TOPIC, payload, NOW), "non_finite")


def test_integers_and_large_finite_values_are_numbers():
    assert values_of(parser().parse_fields(TOPIC, message(temp=-3, pressure=10**30), NOW))[:2] == [-3, 10**30]


@pytest.mark.parametrize("payload", [b"", b"{", b"\xff\xfe\x00garbage", b"[1, 2]", b'"text"', b"42", b"null",
                                     b"[" * 50_000 + b"]" * 50_000])
def test_undecodable_or_non_object_payload_is_invalid_json(payload):
    rejected(parser(max_payload_bytes=200_000).parse_fields(TOPIC, payload, NOW), "invalid_json")


json_documents = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8)


def outcome(decode, payload: bytes) -> tuple[str, str]:
    """What decoding gives: the value (repr, so NaN equals NaN) or the error, message and all."""
    try:
        return "value", repr(decode(payload))
    except Exception as exc:  # noqa: BLE001 - compared, not handled
        return type(exc).__name__, str(exc)


@settings(max_examples=300, deadline=None)
@given(doc=json_documents, ascii_only=st.booleans(),
       encoding=st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le",
                                 "utf-32-be"]),
       before=st.sampled_from(["", " ", "\n\t"]), after=st.sampled_from(["", " ", "\r\n", "x", "}", "\x00", ",1"]))
def test_the_fast_decoder_gives_what_json_loads_gives_in_every_encoding_and_surrounding(doc, ascii_only, encoding,
                                                                                         before, after):
    payload = (before + json.dumps(doc, ensure_ascii=ascii_only) + after).encode(encoding, "surrogatepass")
    assert outcome(decode_json, payload) == outcome(json.loads, payload)


@settings(max_examples=300, deadline=None)
@given(payload=st.binary(max_size=24) | st.sampled_from([b"{}", b'{"a": 1}', b"[]", b"1", b'"x"']).flatmap(
    lambda doc: st.binary(max_size=4).map(lambda noise: doc + noise)))
def test_the_fast_decoder_gives_what_json_loads_gives_for_any_bytes(payload):
    assert outcome(decode_json, payload) == outcome(json.loads, payload)


def test_oversized_payload_is_rejected_before_decoding():
    one_mb = b"{" + b" " * (1 << 20) + b"}"  # would decode fine: size alone rejects it
    result = rejected(parser().parse_fields(TOPIC, one_mb, NOW), "oversized")
    assert "65536" in result.detail
    assert accepted(parser(max_payload_bytes=2 << 20).parse_fields(TOPIC, one_mb[:-1] + message()[1:], NOW))


@pytest.mark.parametrize("device", ["a,b=c d", "", "x" * 65, "-lead", ".hidden", "..", "dév", "a b", "a\nb",
                                    "a\x00b", 'a"b', "a=b", "a\\b",
                                    "pump\n"])  # `$` in a naive ^...$ regex would let a trailing newline through
def test_hostile_device_ids_are_bad_device_id(device):
    rejected(parser().parse_fields(f"sensors/{device}/data", message(), NOW), "bad_device_id")


def test_path_traversal_in_a_multi_level_topic_is_bad_device_id():
    rejected(parser(topic="devices/#", device_level=1).parse_fields("devices/../x", message(), NOW), "bad_device_id")


@pytest.mark.parametrize("device", ["pump-7", "A", "x" * 64, "site1.line2:plc_3", "0"])
def test_reasonable_device_ids_are_accepted(device):
    assert device_of(parser().parse_fields(f"sensors/{device}/data", message(), NOW)) == device


@pytest.mark.parametrize("topic", ["sensors/pump-7", "sensors/pump-7/data/x", "other/pump-7/data",
                                   "sensors/pump-7/status", "/sensors/pump-7/data"])
def test_topic_not_matching_the_pattern_is_bad_topic(topic):
    rejected(parser().parse_fields(topic, message(), NOW), "bad_topic")


def test_device_id_can_sit_at_any_wildcard_level():
    p = parser(topic="plant/+/line/+/telemetry", device_level=3)
    assert device_of(p.parse_fields("plant/berlin/line/robot-2/telemetry", message(), NOW)) == "robot-2"
    p = parser(topic="devices/#", device_level=1)
    assert device_of(p.parse_fields("devices/robot-2/a/b", message(), NOW)) == "robot-2"
    rejected(p.parse_fields("devices", message(), NOW), "bad_topic")


@pytest.mark.parametrize(("pattern", "level", "fragment"), [
    ("sensors/+/data", 0, "not a wildcard"),
    ("sensors/+/data", 3, "no level 3"),
    ("sensors/dev+/data", 1, "whole topic level"),
    ("sensors/#/data", 1, "must be the last"),
    ("sensors/+/data", -1, ">= 0"),
])
def test_topic_problem_explains_unusable_patterns(pattern, level, fragment):
    assert fragment in topic_problem(pattern, level)
    with pytest.raises(ValueError, match="topic: "):
        PayloadParser(FEATURES, topic=pattern, device_level=level)


def test_topic_problem_accepts_plus_and_hash_levels():
    assert topic_problem("sensors/+/data", 1) is None
    assert topic_problem("sensors/#", 1) is None
    assert topic_problem("+/data", 0) is None


def test_topic_memory_is_emptied_when_full_instead_of_growing_without_bound():
    memory = TopicMemory()
    for i in range(TOPIC_MEMORY_SIZE):
        memory.remember(f"sensors/d{i}/data", f"d{i}")
    assert len(memory) == TOPIC_MEMORY_SIZE
    assert memory.remember("sensors/new/data", "new") == "new"
    assert dict(memory) == {"sensors/new/data": "new"}


def test_a_topic_forgotten_by_the_memory_is_worked_out_again():
    p = parser()
    for i in range(TOPIC_MEMORY_SIZE + 1):
        p.parse_fields(f"sensors/d{i}/data", message(), NOW)
    assert device_of(p.parse_fields("sensors/d0/data", message(), NOW)) == "d0"
