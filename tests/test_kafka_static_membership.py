"""Static membership (`kafka.group_instance_id`): an anomalyd process of the group that is killed
and restarted within the session timeout gets its own partitions back, and the rest of the group
never loses or gains one (no reshuffle, no replay elsewhere), against a real Kafka-protocol broker
(Tansu). Its devices wait for it (their records wait as lag) and then continue with no window
missing, and the alert episodes equal those of one instance over the same window flags.

The counterpart, a member that does not come back and whose partitions move, is
tests/test_kafka_failover.py (dynamic membership: Tansu does not expire a killed static member).
"""

from __future__ import annotations

import time
from collections import defaultdict

import pytest

pytest.importorskip("confluent_kafka")

from kafka_group import Member, SinkWatcher, episode_mismatches, keyed_readings, publish_with_restart  # noqa: E402
from servers import wait_until  # noqa: E402

from daemon.core.postprocess import AlertSpec  # noqa: E402

WINDOW = 20  # the demo bundle's window; stride 1
ALERT = AlertSpec(3, 5)  # the demo bundle's hysteresis
DEVICES = [f"pump-{i:02d}" for i in range(60)]
PARTITIONS = 4
RATE_HZ = 4.0  # readings per device per second of wall time
STEPS = 80  # 20 s of publishing
KILL_AT, RESTART_AT = 6.0, 7.0  # seconds after publishing starts
# Long enough for the restarted process to start and rejoin before the broker gives up on it.
SESSION_TIMEOUT_S = 30.0
REPLAY_S = WINDOW / RATE_HZ + 5.0


def test_a_restarted_static_member_gets_its_own_partitions_back_and_nobody_else_moves(tansu, tmp_path):
    tansu.create_topic("plant", PARTITIONS)
    start = int(time.time()) - 600
    steps = keyed_readings(DEVICES, STEPS, start, shift=(20, 50), spikes=(15, 60))
    a, b = (Member(name, tmp_path, tansu, SESSION_TIMEOUT_S, REPLAY_S, instance_id=f"host-{name}") for name in "ab")
    sinks = {"a1": tmp_path / "a1.lp", "a2": tmp_path / "a2.lp", "b": tmp_path / "b.lp"}
    a.start("a1")
    b.start("b")
    b_partitions = []  # b's assigned partition count, sampled while a goes and comes back
    try:
        with SinkWatcher(sinks) as sinks_seen:
            wait_until(lambda: a.healthy() and b.healthy(), 90, "two healthy members")
            wait_until(lambda: a.metric("anomalyd_kafka_assigned_partitions")
                       + b.metric("anomalyd_kafka_assigned_partitions") == PARTITIONS, 30, "the partitions split")
            publish_with_restart(tansu.bootstrap_servers, "plant", steps, RATE_HZ, a, KILL_AT, RESTART_AT, "a2",
                                 lambda: b_partitions.append(b.metric("anomalyd_kafka_assigned_partitions")))
            last_ts = (start + STEPS - 1) * 1000
            wait_until(lambda: all(sinks_seen.has(d, last_ts) for d in DEVICES), 90, "every device's last window")
            a_partitions = a.metric("anomalyd_kafka_assigned_partitions")
            b_moves = sum(b.metric(f'anomalyd_kafka_rebalances_total{{event="{event}"}}')
                          for event in ("revoked", "lost"))
            b_replayed = b.metric("anomalyd_kafka_replayed_total")
            a_replayed = a.metric("anomalyd_kafka_replayed_total")
        a.stop()
        b.stop()
    finally:
        for member in (a, b):
            if member.process is not None and member.process.poll() is None:
                member.process.kill()

    assert a_partitions == PARTITIONS - b_partitions[0]  # the restarted process holds what it held
    assert set(b_partitions) == {b_partitions[0]} and b_moves == 0 and b_replayed == 0  # b never moved

    points = sinks_seen.points
    expected = {(d, (start + k) * 1000) for d in DEVICES for k in range(WINDOW - 1, STEPS)}
    union = {(device, ts) for _, device, ts, _, _ in points}
    assert union == expected, f"{len(expected - union)} windows missing, e.g. {sorted(expected - union)[:5]}"
    writers: dict[str, set[str]] = defaultdict(set)
    for writer, device, _, _, _ in points:
        writers[device].add(writer)
    crossed = [d for d, w in writers.items() if "b" in w and w != {"b"}]
    assert not crossed, f"devices scored on both sides of the group: {crossed[:5]}"
    restarted_devices = sum("a2" in w for w in writers.values())

    written, reference, differing = episode_mismatches(points, DEVICES, ALERT)
    print(f"\nstatic membership: devices {len(DEVICES)}, windows {len(expected)}, points {len(points)}, "
          f"duplicates {len(points) - len(union)}, restarted member's devices {restarted_devices}, "
          f"replayed by it {a_replayed:.0f}, b's partitions {b_partitions[0]:.0f} throughout, "
          f"alert episodes {written} (single-instance reference {reference})")
    assert restarted_devices > 0 and a_replayed > 0  # it came back to its devices and refilled their windows
    assert reference > 0 and not differing, f"episodes differ for {differing[:5]}"
