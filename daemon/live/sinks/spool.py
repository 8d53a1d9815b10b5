"""A bounded on-disk FIFO of line-protocol lines, for while the database is down.

Layout: a directory of segment files `<seq>.seg` (one line per point, newline-terminated,
appended in order) and a `cursor` file holding `<seq> <byte offset>` of the oldest line not yet
acknowledged. New lines go to the newest segment, which rotates at `segment_bytes`; a segment
is deleted once the cursor has passed its end, so the disk holds only unacknowledged data.

Delivery: `read_oldest` hands out the oldest lines without removing them; `ack` removes them
after the database accepted them, `release` keeps them for the next attempt. A crash between a
successful write and its `ack` re-sends that one batch after restart: at-least-once, never
lost. The re-sent points carry the same timestamp and tags, so InfluxDB overwrites them with
identical values (VictoriaMetrics keeps both unless run with `-dedup.minScrapeInterval=1ms`).

Bound: when unacknowledged data exceeds `max_bytes`, whole lines are dropped from the OLDEST
end (the newest data is what an operator looks at after an outage) and `append` reports how
many, so the sink can count them. While a batch is in flight the bound is applied when it is
acked or released, so a point is never both written and counted as dropped.

Durability: every append is flushed to the OS, which survives a crash of the process. Pass
`fsync=True` to also survive power loss, at the cost of one disk sync per batch and per ack.
On reopen, a torn last line (crash mid-write) is cut off: that point was never acknowledged
to anyone, so nothing that was counted is lost.

Privacy: the spool holds the whole fleet's scores, so the directory is mode 0700 and every
file in it 0600, set by the spool itself whatever the process umask (a service started by
hand under root's default umask would otherwise leave them world-readable).

One spool per directory at a time: a second `Spool` on the same directory (another daemon with
the same config, or a reload that forgot to close the old sink) would send every point twice,
so it is refused while the first holds the directory's lock (released by `close`).
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Sequence

log = logging.getLogger(__name__)

SEGMENT_SUFFIX = ".seg"
CURSOR_NAME = "cursor"
LOCK_NAME = "lock"
PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


@dataclass(frozen=True)
class SpoolBatch:
    """The oldest lines of the spool, handed out by `read_oldest` and settled by `ack`/`release`."""

    lines: list[str]
    segment: int
    start: int  # byte offset of the first line in the segment
    end: int  # byte offset just after the last line


class Spool:
    """Thread-safe: any thread may `append`; one consumer reads, acks and releases."""

    def __init__(self, directory: str | os.PathLike[str], max_bytes: int, segment_bytes: int = 1 << 20,
                 fsync: bool = False) -> None:
        if max_bytes <= 0 or segment_bytes <= 0:
            raise ValueError(f"spool max_bytes and segment_bytes must be > 0, got {max_bytes} and {segment_bytes}")
        self._dir = Path(directory)
        self._dir.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
        _make_private_dir(self._dir)
        self._lock_file = _open_private(self._dir / LOCK_NAME, "wb")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise RuntimeError(f"spool {self._dir} is in use by another Spool (another process, or one not "
                               f"closed): two writers would send every point twice") from None
        self._max_bytes = max_bytes
        self._segment_bytes = segment_bytes
        self._fsync = fsync
        self._lock = threading.Lock()
        self._sizes: dict[int, int] = {}  # segment seq -> bytes, oldest first
        self._head_offset = 0  # in the oldest segment
        self._tail: BinaryIO | None = None  # the newest segment, open for appending
        self._inflight: SpoolBatch | None = None
        self._open_existing()

    # -- public -----------------------------------------------------------------------------

    @property
    def pending_bytes(self) -> int:
        """Bytes not yet acknowledged (an in-flight batch included)."""
        with self._lock:
            return self._pending_bytes()

    @property
    def empty(self) -> bool:
        return self.pending_bytes == 0

    def append(self, lines: Sequence[str]) -> int:
        """Append lines (without newlines) as the newest data; returns how many of the oldest
        points were dropped to stay within `max_bytes`."""
        if not lines:
            return 0
        data = ("\n".join(lines) + "\n").encode()
        if data.count(b"\n") != len(lines):
            raise ValueError("a spooled line contains a newline: each line must be exactly one point")
        with self._lock:
            seq = self._writable_segment()
            assert self._tail is not None
            self._tail.write(data)
            self._tail.flush()
            if self._fsync:
                os.fsync(self._tail.fileno())
            self._sizes[seq] += len(data)
            return 0 if self._inflight is not None else self._enforce_bound()

    def read_oldest(self, max_lines: int) -> SpoolBatch | None:
        """Up to `max_lines` of the oldest lines (never across segments), or None when empty.
        They stay in the spool until `ack`; only one batch can be in flight."""
        with self._lock:
            if self._inflight is not None:
                raise RuntimeError("a spool batch is already in flight: ack or release it first")
            if not self._pending_bytes():
                return None
            seq = next(iter(self._sizes))
            lines: list[str] = []
            with open(self._segment_path(seq), "rb") as f:
                f.seek(self._head_offset)
                while len(lines) < max_lines and f.tell() < self._sizes[seq]:
                    lines.append(f.readline().decode().rstrip("\n"))
                end = f.tell()
            self._inflight = SpoolBatch(lines, seq, self._head_offset, end)
            return self._inflight

    def ack(self, batch: SpoolBatch) -> int:
        """The batch reached the database: remove it. Returns points dropped by the bound."""
        with self._lock:
            self._settle(batch)
            self._advance(batch.end)
            return self._enforce_bound()

    def release(self, batch: SpoolBatch) -> int:
        """The write failed: keep the batch as the oldest data. Returns points dropped by the bound
        (the released batch first, being the oldest)."""
        with self._lock:
            self._settle(batch)
            return self._enforce_bound()

    def close(self) -> None:
        """Close the files and release the directory. Idempotent."""
        with self._lock:
            if self._tail is not None:
                self._tail.close()
                self._tail = None
            self._lock_file.close()

    # -- internals (called with the lock held) ----------------------------------------------

    def _segment_path(self, seq: int) -> Path:
        return self._dir / f"{seq:012d}{SEGMENT_SUFFIX}"

    def _pending_bytes(self) -> int:
        return sum(self._sizes.values()) - self._head_offset

    def _open_existing(self) -> None:
        """Pick up what a previous process left: segments, cursor, and a torn last line."""
        for path in self._dir.iterdir():  # files written under another umask, or copied in
            if path.is_file():
                os.chmod(path, PRIVATE_FILE)
        seqs = sorted(int(p.name[: -len(SEGMENT_SUFFIX)]) for p in self._dir.glob("*" + SEGMENT_SUFFIX))
        cursor_seq, cursor_offset = self._read_cursor()
        for seq in [s for s in seqs if s < cursor_seq]:  # acked, but deleted only after the cursor moved
            self._segment_path(seq).unlink()
            seqs.remove(seq)
        self._next_seq = max([cursor_seq, *seqs]) + 1
        for seq in seqs:
            self._sizes[seq] = self._segment_path(seq).stat().st_size
        if not seqs:
            return
        self._cut_torn_line(seqs[-1])
        self._tail = _open_private(self._segment_path(seqs[-1]), "ab")
        self._advance(cursor_offset if cursor_seq == seqs[0] else 0)
        if self._pending_bytes():
            log.info("spool %s: %d bytes left by a previous run will be replayed first", self._dir,
                     self._pending_bytes())

    def _read_cursor(self) -> tuple[int, int]:
        path = self._dir / CURSOR_NAME
        if not path.exists():
            return -1, 0
        text = path.read_text()
        try:
            seq, offset = (int(part) for part in text.split())
        except ValueError:
            raise ValueError(f"spool cursor {path} should hold '<segment> <offset>', got {text!r}") from None
        return seq, offset

    def _write_cursor(self, seq: int, offset: int) -> None:
        path = self._dir / CURSOR_NAME
        tmp = path.with_suffix(".tmp")
        with _open_private(tmp, "wb") as f:
            f.write(f"{seq} {offset}\n".encode())
            if self._fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)

    def _cut_torn_line(self, seq: int) -> None:
        path = self._segment_path(seq)
        data = path.read_bytes()
        keep = data.rfind(b"\n") + 1
        if keep < len(data):
            log.warning("spool %s: cut a torn last line of %d bytes (crash during a write)", path, len(data) - keep)
            os.truncate(path, keep)
            self._sizes[seq] = keep

    def _writable_segment(self) -> int:
        """The newest segment, rotated once it has reached `segment_bytes`."""
        if self._tail is not None:
            seq = next(reversed(self._sizes))
            if self._sizes[seq] < self._segment_bytes:
                return seq
            self._tail.close()
        seq = self._next_seq
        self._next_seq += 1
        self._tail = _open_private(self._segment_path(seq), "ab")
        self._sizes[seq] = 0
        return seq

    def _settle(self, batch: SpoolBatch) -> None:
        if batch is not self._inflight:
            raise RuntimeError("this spool batch is not the one in flight (settled twice?)")
        self._inflight = None

    def _advance(self, offset: int) -> None:
        """Move the cursor to `offset` in the oldest segment, deleting segments it has passed."""
        self._head_offset = offset
        while self._sizes:
            seq = next(iter(self._sizes))
            if self._head_offset < self._sizes[seq]:
                self._write_cursor(seq, self._head_offset)
                return
            if len(self._sizes) == 1 and self._tail is not None:
                self._tail.close()
                self._tail = None
            self._segment_path(seq).unlink()
            del self._sizes[seq]
            self._head_offset = 0
        self._write_cursor(self._next_seq - 1, 0)  # empty: no segment at or before it survives

    def _enforce_bound(self) -> int:
        """Drop whole lines from the oldest end until within `max_bytes`; returns how many."""
        dropped = 0
        while (excess := self._pending_bytes() - self._max_bytes) > 0:
            seq = next(iter(self._sizes))
            with open(self._segment_path(seq), "rb") as f:
                f.seek(self._head_offset)
                rest = f.read(self._sizes[seq] - self._head_offset)
            cut = len(rest) if len(rest) <= excess else rest.index(b"\n", excess - 1) + 1
            dropped += rest.count(b"\n", 0, cut)
            self._advance(self._head_offset + cut)
        return dropped


def _open_private(path: Path, mode: str) -> BinaryIO:
    """Open for writing ("ab" appends, "wb" truncates) with mode 0600, whatever the umask and
    whatever mode the file had."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_APPEND if mode == "ab" else os.O_TRUNC)
    fd = os.open(path, flags, PRIVATE_FILE)
    try:
        os.fchmod(fd, PRIVATE_FILE)
        return os.fdopen(fd, mode)
    except BaseException:
        os.close(fd)
        raise


def _make_private_dir(directory: Path) -> None:
    """Mode 0700 for the spool directory. A directory this process does not own (so cannot
    chmod) is used as it is, with a warning: the files in it are 0600 regardless."""
    try:
        os.chmod(directory, PRIVATE_DIR)
    except PermissionError:
        mode = directory.stat().st_mode & 0o777
        if mode & 0o077:
            log.warning("spool %s: mode %04o, not owned by this process so not made 0700; its files are 0600",
                        directory, mode)
