"""Failover of a consumer group of real anomalyd processes (`python -m daemon run`, source: kafka,
each with its own file sink and metrics port) against a real Kafka-protocol broker (Tansu).

A publisher produces keyed readings for 300 devices (some with faults, so alerts happen); one
instance is killed with SIGKILL mid-stream and started again later. The union of the sinks must
hold every window of every device (stride 1: one per reading from the window-th on), each device
must be scored by one instance at a time (two only for the windows in flight when it moved), no device may be silent longer than the session timeout plus the replay, and the
alert episodes must equal those of one instance running hysteresis over the same window flags
(the new owners take the alert states over from the alert-state topic). The counts are printed (`-s`) for the record.

Membership is dynamic: Tansu did not expire a SIGKILLed static member (`group.instance.id`)
after its session timeout, so its partitions stayed unassigned until it came back.
"""

from __future__ import annotations

import time
from collections import defaultdict

import pytest

pytest.importorskip("confluent_kafka")

from kafka_group import (Member, SinkWatcher, episode_mismatches, keyed_readings, longest_silence,  # noqa: E402
                         publish_with_restart)
from servers import wait_until  # noqa: E402

from daemon.core.postprocess import AlertSpec  # noqa: E402

WINDOW = 20  # the demo bundle's window; stride 1
ALERT = AlertSpec(3, 5)  # the demo bundle's hysteresis
DEVICES = [f"pump-{i:03d}" for i in range(300)]
PARTITIONS = 6
RATE_HZ = 4.0  # readings per device per second of wall time (data time advances 1 s per reading)
STEPS = 160  # readings per device: 40 s of publishing
KILL_AT, RESTART_AT = 12.0, 26.0  # seconds after publishing starts
SESSION_TIMEOUT_S = 6.0
# Record time a partition is rewound behind its last committed record: the window (WINDOW
# readings at RATE_HZ) and a margin.
REPLAY_S = WINDOW / RATE_HZ + 5.0


def owner_runs(writers_by_ts: dict[int, list[str]]) -> tuple[list[str], list[tuple[int, set[str]]]]:
    """A device's exclusive owners in time order (consecutive repeats collapsed) and the
    timestamps written by more than one instance."""
    runs: list[str] = []
    shared = []
    for ts in sorted(writers_by_ts):
        writers = set(writers_by_ts[ts])
        if len(writers) > 1:
            shared.append((ts, writers))
        elif not runs or runs[-1] != next(iter(writers)):
            runs.append(next(iter(writers)))
    return runs, shared


def test_a_killed_member_devices_continue_on_the_others_without_losing_a_window(tansu, tmp_path):
    tansu.create_topic("plant", PARTITIONS)
    start = int(time.time()) - 600  # data time: in the past, 1 s per reading
    steps = keyed_readings(DEVICES, STEPS, start)
    members = {name: Member(name, tmp_path, tansu, SESSION_TIMEOUT_S, REPLAY_S) for name in "abc"}
    sinks = {"a": tmp_path / "a.lp", "b1": tmp_path / "b1.lp", "b2": tmp_path / "b2.lp", "c": tmp_path / "c.lp"}
    for name, member in members.items():
        member.start("b1" if name == "b" else name)
    try:
        with SinkWatcher(sinks) as sinks_seen:
            wait_until(lambda: all(m.healthy() for m in members.values()), 90, "three healthy members")
            wait_until(lambda: sum(m.metric("anomalyd_kafka_assigned_partitions") for m in members.values())
                       == PARTITIONS, 30, "the partitions split over the group")
            publish_with_restart(tansu.bootstrap_servers, "plant", steps, RATE_HZ, members["b"], KILL_AT, RESTART_AT,
                                 "b2")
            published = time.time()
            last_ts = (start + STEPS - 1) * 1000
            wait_until(lambda: all(sinks_seen.has(d, last_ts) for d in DEVICES), 60, "every device's last window")
            replayed = sum(m.metric("anomalyd_kafka_replayed_total") for m in members.values())
            seeded = sum(m.metric('anomalyd_alert_state_records_total{result="loaded"}') for m in members.values())
        for member in members.values():
            member.stop()
    finally:
        for member in members.values():
            if member.process is not None and member.process.poll() is None:
                member.process.kill()

    points = sinks_seen.points
    expected = {(d, (start + k) * 1000) for d in DEVICES for k in range(WINDOW - 1, STEPS)}
    union = {(device, ts) for _, device, ts, _, _ in points}
    lost = expected - union
    assert not lost, f"{len(lost)} windows missing, e.g. {sorted(lost)[:5]}"
    assert union == expected  # and nothing that is not a window of a reading

    # One instance at a time per device; two only for the windows in flight at a move.
    writers: dict[str, dict[int, list[str]]] = defaultdict(lambda: defaultdict(list))
    for writer, device, ts, _, _ in points:
        writers[device][ts].append(writer)
    moved = shared_windows = 0
    for device, by_ts in writers.items():
        runs, shared = owner_runs(by_ts)
        assert len(runs) <= 3, f"{device}: owners {runs}"  # b1 -> a or c -> b2 at most
        assert len(set(runs)) == len(runs), f"{device} came back to an earlier owner: {runs}"
        for ts, both in shared:
            later = [r for r in runs if r in both]
            assert len(both) == 2 and len(later) == 2 and runs.index(later[1]) == runs.index(later[0]) + 1, \
                f"{device} at {ts}: scored by {both}, owners {runs}"
        moved += len(runs) > 1
        shared_windows += len(shared)
    duplicates = len(points) - len(union)

    silence, device = longest_silence(sinks_seen.first_seen, published)
    assert silence < SESSION_TIMEOUT_S + REPLAY_S, f"{device} silent for {silence:.1f} s"

    # Alert episodes: those of one instance running hysteresis over the same window flags.
    live_episodes, reference_episodes, differing = episode_mismatches(points, DEVICES, ALERT)
    print(f"\nfailover: devices {len(DEVICES)}, readings {len(DEVICES) * STEPS}, windows {len(expected)}, "
          f"points written {len(points)}, duplicates {duplicates} ({shared_windows} windows), "
          f"replayed {replayed:.0f} (after the restart; the killed member's count died with it), "
          f"alert states taken over {seeded:.0f}, "
          f"lost {len(lost)}, devices moved {moved}, longest silence {silence:.1f} s ({device}), "
          f"torn lines {sinks_seen.torn}, alert episodes {live_episodes} (single-instance reference "
          f"{reference_episodes}), devices whose episodes differ {len(differing)} {differing[:5]}")
    assert moved > 0 and replayed > 0  # the kill moved devices and their new owners replayed
    assert seeded > 0  # and took over the alert states of those in alert
    assert reference_episodes > 0
    assert not differing
