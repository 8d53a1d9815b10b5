import os
import stat

import pytest

from daemon.cli import main as cli_main
from daemon.live.config import read_yaml, validate
from daemon.live.sinks.spool import Spool


def lines(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{i:03d}" for i in range(n)]  # 4-6 bytes + newline each


def drain(spool: Spool, max_lines: int = 1000) -> list[str]:
    out = []
    while (batch := spool.read_oldest(max_lines)) is not None:
        out += batch.lines
        spool.ack(batch)
    return out


def segments(directory) -> list[str]:
    return sorted(p.name for p in directory.glob("*.seg"))


def test_reads_oldest_first_and_ack_removes(tmp_path):
    spool = Spool(tmp_path, max_bytes=10_000)
    spool.append(["a1", "a2", "a3"])
    spool.append(["b1"])
    first = spool.read_oldest(2)
    assert first.lines == ["a1", "a2"]
    spool.ack(first)
    assert drain(spool) == ["a3", "b1"]
    assert spool.empty and spool.pending_bytes == 0
    assert spool.read_oldest(10) is None


def test_released_batch_is_read_again(tmp_path):
    spool = Spool(tmp_path, max_bytes=10_000)
    spool.append(["a", "b"])
    batch = spool.read_oldest(10)
    spool.release(batch)
    assert spool.read_oldest(10).lines == ["a", "b"]


def test_only_one_batch_in_flight_and_settled_once(tmp_path):
    spool = Spool(tmp_path, max_bytes=10_000)
    spool.append(["a", "b"])
    batch = spool.read_oldest(1)
    with pytest.raises(RuntimeError, match="already in flight"):
        spool.read_oldest(1)
    spool.ack(batch)
    with pytest.raises(RuntimeError, match="not the one in flight"):
        spool.ack(batch)


def test_reopen_reads_what_was_left_and_not_what_was_acked(tmp_path):
    spool = Spool(tmp_path, max_bytes=10_000)
    spool.append(lines("x", 5))
    spool.ack(spool.read_oldest(2))
    spool.close()
    assert drain(Spool(tmp_path, max_bytes=10_000)) == ["x002", "x003", "x004"]


def test_crash_between_write_and_ack_resends_that_batch_once(tmp_path):
    spool = Spool(tmp_path, max_bytes=10_000)
    spool.append(lines("x", 4))
    spool.ack(spool.read_oldest(1))
    in_flight = spool.read_oldest(2)  # written to the database, then the process dies
    assert in_flight.lines == ["x001", "x002"]
    del spool
    assert drain(Spool(tmp_path, max_bytes=10_000)) == ["x001", "x002", "x003"]


def test_segments_rotate_and_are_deleted_once_acked(tmp_path):
    spool = Spool(tmp_path, max_bytes=10_000, segment_bytes=20)
    for i in range(4):
        spool.append(lines(f"s{i}", 4))  # 20 bytes: one segment per append
    assert len(segments(tmp_path)) == 4
    first = spool.read_oldest(100)
    assert first.lines == lines("s0", 4), "a batch never crosses a segment"
    spool.ack(first)
    assert len(segments(tmp_path)) == 3
    assert drain(spool) == lines("s1", 4) + lines("s2", 4) + lines("s3", 4)
    assert segments(tmp_path) == []


def test_numbering_continues_after_the_spool_emptied_and_reopened(tmp_path):
    spool = Spool(tmp_path, max_bytes=10_000, segment_bytes=10)
    spool.append(["old-1", "old-2"])
    drain(spool)
    spool.close()
    spool = Spool(tmp_path, max_bytes=10_000, segment_bytes=10)
    spool.append(["new"])
    spool.close()
    assert drain(Spool(tmp_path, max_bytes=10_000)) == ["new"]


def test_over_the_bound_the_oldest_points_are_dropped_and_counted(tmp_path):
    spool = Spool(tmp_path, max_bytes=50, segment_bytes=20)
    assert spool.append(lines("a", 8)) == 0  # 40 bytes
    assert spool.append(lines("b", 4)) == 2  # 60 bytes: the two oldest lines go
    assert spool.pending_bytes <= 50
    assert drain(spool) == lines("a", 8)[2:] + lines("b", 4)


def test_a_batch_larger_than_the_bound_keeps_its_newest_lines(tmp_path):
    spool = Spool(tmp_path, max_bytes=25)
    assert spool.append(lines("a", 10)) == 5
    assert drain(spool) == lines("a", 10)[5:]


def test_bound_waits_for_the_batch_in_flight_so_written_points_are_not_counted_dropped(tmp_path):
    spool = Spool(tmp_path, max_bytes=30, segment_bytes=10)
    spool.append(lines("a", 4))  # 20 bytes
    batch = spool.read_oldest(2)
    assert spool.append(lines("b", 4)) == 0  # 40 bytes, over the bound, but a000/a001 are being written
    assert spool.ack(batch) == 0  # a0, a1 written: 20 bytes left
    assert drain(spool) == ["a002", "a003"] + lines("b", 4)


def test_a_released_batch_is_the_oldest_and_dropped_first(tmp_path):
    spool = Spool(tmp_path, max_bytes=30, segment_bytes=10)
    spool.append(lines("a", 4))
    batch = spool.read_oldest(2)
    spool.append(lines("b", 4))
    assert spool.release(batch) == 2
    assert drain(spool) == ["a002", "a003"] + lines("b", 4)


def test_a_torn_last_line_is_cut_on_reopen(tmp_path):
    spool = Spool(tmp_path, max_bytes=10_000)
    spool.append(["whole"])
    spool.close()
    (segment,) = tmp_path.glob("*.seg")
    with open(segment, "ab") as f:
        f.write(b"half-writ")
    reopened = Spool(tmp_path, max_bytes=10_000)
    reopened.append(["next"])
    assert drain(reopened) == ["whole", "next"]


def test_pending_bytes_counts_unacknowledged_data(tmp_path):
    spool = Spool(tmp_path, max_bytes=10_000)
    spool.append(["abc", "de"])
    assert spool.pending_bytes == 7
    spool.ack(spool.read_oldest(1))
    assert spool.pending_bytes == 3


def test_a_line_with_a_newline_is_refused(tmp_path):
    with pytest.raises(ValueError, match="contains a newline"):
        Spool(tmp_path, max_bytes=100).append(["a\nb"])


def test_a_directory_is_used_by_one_spool_at_a_time(tmp_path):
    first = Spool(tmp_path, max_bytes=100)
    with pytest.raises(RuntimeError, match="in use by another Spool"):
        Spool(tmp_path, max_bytes=100)
    first.close()
    Spool(tmp_path, max_bytes=100).close()


def test_a_corrupt_cursor_is_named(tmp_path):
    (tmp_path / "cursor").write_text("garbage")
    with pytest.raises(ValueError, match="cursor"):
        Spool(tmp_path, max_bytes=100)


@pytest.fixture
def umask_022():
    """The usual default umask, under which new files would be world-readable."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def modes(directory) -> dict[str, int]:
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in directory.iterdir()}


def test_the_spool_directory_is_0700_and_its_files_0600_whatever_the_umask(tmp_path, umask_022):
    directory = tmp_path / "var" / "spool"
    spool = Spool(directory, max_bytes=10_000, segment_bytes=10)
    spool.append(lines("a", 5))
    spool.append(lines("b", 5))  # a second segment
    spool.ack(spool.read_oldest(2))  # writes the cursor
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    files = modes(directory)
    assert {"lock", "cursor"} < set(files) and len(segments(directory)) == 2
    assert set(files.values()) == {0o600}
    spool.close()


def test_a_spool_left_with_open_modes_is_made_private_on_open(tmp_path, umask_022):
    directory = tmp_path / "spool"
    first = Spool(directory, max_bytes=10_000)
    first.append(lines("a", 3))
    first.ack(first.read_oldest(1))
    first.close()
    directory.chmod(0o755)
    for path in directory.iterdir():
        path.chmod(0o644)

    second = Spool(directory, max_bytes=10_000)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert set(modes(directory).values()) == {0o600}
    assert drain(second) == ["a001", "a002"]
    second.close()


@pytest.mark.parametrize("size", [0, -1])
def test_a_spool_size_the_spool_refuses_is_rejected_by_the_config_naming_the_field(tmp_path, capsys, size):
    with pytest.raises(ValueError):
        Spool(tmp_path / "spool", max_bytes=size)
    path = tmp_path / "config.yaml"
    path.write_text(f"influxdb: {{spool_max_bytes: {size}}}\n")
    problem = f"influxdb.spool_max_bytes: must be an integer >= 1, got {size}"
    assert validate(read_yaml(path)) == [problem]

    assert cli_main(["check-config", str(path)]) == 2
    assert problem in capsys.readouterr().err
    assert cli_main(["run", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and problem in err
