"""The Kafka source without a broker: its config section, the librdkafka settings made from it,
the topic that carries a record key through the pipeline's topic rule, the replay span, and the
buffer hook that forgets devices whose partitions moved away."""

import pytest

pytest.importorskip("confluent_kafka")

from daemon.live.config import Config, KafkaConfig, LimitsConfig, StreamConfig, TlsConfig, build, validate  # noqa: E402
from daemon.live.ingest.buffers import DeviceBuffers  # noqa: E402
from daemon.live.ingest.kafka import consumer_settings, device_topic, replay_span  # noqa: E402
from daemon.live.ingest.payload import PayloadParser  # noqa: E402
from daemon.live.telemetry.metrics import Metrics  # noqa: E402


# ---- config ---------------------------------------------------------------------------------

def test_source_defaults_to_mqtt_and_takes_kafka():
    assert Config().source == "mqtt"
    config = build({"source": "kafka", "stream": {"sample_period_seconds": 1.0},
                    "kafka": {"bootstrap_servers": "k1:9092,k2:9092", "topics": "plant-a, plant-b"}}, {})
    assert config.source == "kafka"
    assert config.kafka.topic_list == ["plant-a", "plant-b"]


@pytest.mark.parametrize("raw, problem", [
    ({"source": "amqp"}, "source: must be one of mqtt, kafka"),
    ({"kafka": {"topics": " , "}}, "kafka.topics: names no topic"),
    ({"kafka": {"security_protocol": "sasl_ssl"}}, "kafka.username: required with security_protocol sasl_ssl"),
    ({"kafka": {"username": "u", "password": "p"}}, "kafka.security_protocol: plaintext sends no user name"),
    ({"kafka": {"security_protocol": "sasl_ssl", "username": "u", "password": "p", "password_file": "/etc/hostname"}},
     "kafka.password_file: both password and password_file are set"),
    ({"kafka": {"tls": {"enabled": True}}}, "kafka.tls: set, but security_protocol plaintext does not use TLS"),
    ({"kafka": {"security_protocol": "ssl", "tls": {"cert_file": "/etc/hostname"}}},
     "kafka.tls.key_file: cert_file and key_file go together"),
    ({"kafka": {"batch_size": 0}}, "kafka.batch_size: must be an integer >= 1, got 0"),
    ({"kafka": {"group": "x"}}, "kafka.group: unknown key (did you mean 'group_id'?)"),
])
def test_kafka_section_problems_name_the_field(raw, problem):
    problems = validate(raw)
    assert any(p.startswith(problem) for p in problems), problems


def test_kafka_password_comes_from_the_environment_or_a_file(tmp_path):
    secret = tmp_path / "kafka-password"
    secret.write_text("from-file\n")
    raw = {"kafka": {"security_protocol": "sasl_ssl", "username": "anomalyd", "password_file": str(secret)}}
    assert build(raw, {}).kafka.password == "from-file"
    assert build(raw, {"ANOMALYD_KAFKA_PASSWORD": "from-env"}).kafka.password == "from-env"
    assert "from-file" not in repr(build(raw, {}).kafka)


# ---- librdkafka settings --------------------------------------------------------------------

def test_consumer_settings_use_cooperative_assignment_and_manual_commits():
    conf = consumer_settings(KafkaConfig(bootstrap_servers="k1:9092", group_id="g", session_timeout_ms=6000))
    assert conf["partition.assignment.strategy"] == "cooperative-sticky"
    assert conf["enable.auto.commit"] is False and conf["enable.auto.offset.store"] is False
    assert conf["bootstrap.servers"] == "k1:9092" and conf["group.id"] == "g"
    assert conf["heartbeat.interval.ms"] < conf["session.timeout.ms"] == 6000
    assert "group.instance.id" not in conf  # dynamic membership unless an instance id is configured
    assert conf["security.protocol"] == "plaintext" and not any(k.startswith(("sasl.", "ssl.")) for k in conf)


def test_consumer_settings_carry_static_membership_sasl_and_tls():
    settings = KafkaConfig(group_instance_id="host-3", security_protocol="sasl_ssl", sasl_mechanism="SCRAM-SHA-256",
                           username="anomalyd", password="secret",
                           tls=TlsConfig(ca_file="/ca.pem", cert_file="/c.pem", key_file="/k.pem"))
    conf = consumer_settings(settings)
    assert conf["group.instance.id"] == "host-3"
    assert (conf["security.protocol"], conf["sasl.mechanism"], conf["sasl.username"], conf["sasl.password"]) == (
        "sasl_ssl", "SCRAM-SHA-256", "anomalyd", "secret")
    assert (conf["ssl.ca.location"], conf["ssl.certificate.location"], conf["ssl.key.location"]) == (
        "/ca.pem", "/c.pem", "/k.pem")


def test_consumer_settings_are_accepted_by_librdkafka():
    from confluent_kafka import Consumer

    Consumer(consumer_settings(KafkaConfig(group_instance_id="host-1"))).close()


# ---- record key -> pipeline topic -----------------------------------------------------------

@pytest.mark.parametrize("pattern, level", [
    ("sensors/+/data", 1), ("+", 0), ("plant/+/+/raw", 2), ("plant/+/#", 1), ("#", 0), ("a/#", 3), ("+/x", 0),
])
def test_the_topic_made_from_a_key_gives_the_key_back_through_the_topic_rule(pattern, level):
    parser = PayloadParser(["a"], topic=pattern, device_level=level)
    topic_of = device_topic(pattern, level)
    for device in ("pump-1", "d.2:x_y"):
        assert parser.device_of(topic_of(device)) == device


def test_replay_span_refills_the_window_plus_a_margin():
    assert replay_span(window=60, sample_period=1.0, margin=10.0) == 70.0
    assert replay_span(window=30, sample_period=10.0, margin=0.0) == 300.0


# ---- buffers forget the devices of a partition that moved away ------------------------------

def test_drop_devices_forgets_buffers_and_alert_state_but_counts_no_eviction():
    forgotten = []
    metrics = Metrics()
    buffers = DeviceBuffers(2, 1, StreamConfig(stride=1), LimitsConfig(max_devices=100), metrics,
                            on_evict=forgotten.append)
    for device in ("d1", "d2", "d3"):
        buffers.push_values(device, 1.0, [1.0], 1.0)
    assert buffers.drop_devices({"d1", "d3", "never-seen"}) == 2
    assert len(buffers) == 1 and sorted(forgotten) == ["d1", "d3"]
    assert metrics.registry.get_sample_value("anomalyd_devices_evicted_total") == 0
    # A dropped device starts a fresh window: one more reading is not enough for a window of 2.
    assert buffers.push_values("d1", 2.0, [2.0], 2.0) is None
