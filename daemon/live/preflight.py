"""What `anomalyd run` needs from the host at start, checked before anything starts.

`validate` judges the config file on its own; these checks judge it against this host: the
metrics port can be bound on its address, and the directory the sink writes to can be created
and written. `check-config` and `run` both call `start_problems`, so what `check-config` calls
ok is what `run` can start with, and `run` reports a failure as one line naming the field
instead of a traceback from deep inside a constructor.

Nothing here creates a file or a directory: the checks ask the file system and release what
they bind, so running `check-config` leaves the host as it was.

Two resources are exclusive: the metrics port and the spool's lock. A running instance holds
both, so `check-config` run beside it (before a reload or restart) skips them with
`exclusive=False`.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from daemon.live.config import Config, MetricsConfig
from daemon.live.sinks.spool import LOCK_NAME


def start_problems(config: Config, *, exclusive: bool = True) -> list[str]:
    """Every reason `run` could not start with `config` on this host, as "field.path: message"."""
    problems: list[str] = []
    if config.metrics.enabled:
        problems.extend(_listen_problems(config.metrics, exclusive))
    if config.influxdb.enabled:
        problems.extend(_directory_problems("influxdb.spool_dir", Path(config.influxdb.spool_dir)))
        if exclusive and not problems:
            problems.extend(_spool_lock_problems(Path(config.influxdb.spool_dir)))
    elif config.local_store.path:
        problems.extend(_file_problems("local_store.path", Path(config.local_store.path)))
    return problems


def _listen_problems(metrics: MetricsConfig, exclusive: bool) -> list[str]:
    """Resolve the address, and bind the port the way the metrics server does (same class, so
    the same address family and socket options), then let it go."""
    address, port = metrics.address, metrics.port
    try:
        socket.getaddrinfo(address, port, socket.AF_INET, socket.SOCK_STREAM)
    except socket.gaierror as exc:
        return [f"metrics.address: cannot resolve {address!r} to an IPv4 address: {exc.strerror}"]
    if not exclusive:
        return []
    try:
        server = ThreadingHTTPServer((address, port), BaseHTTPRequestHandler)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return [f"metrics.port: {port} is already in use on {address}"]
        if exc.errno == errno.EADDRNOTAVAIL:
            return [f"metrics.address: {address} is not an address of this host"]
        if exc.errno == errno.EACCES:
            return [f"metrics.port: no permission to listen on {address}:{port} (ports below 1024 need "
                    f"CAP_NET_BIND_SERVICE)"]
        return [f"metrics.address: cannot listen on {address}:{port}: {exc.strerror or exc}"]
    server.server_close()
    return []


def _directory_problems(where: str, directory: Path) -> list[str]:
    """The directory exists and is writable, or its nearest existing ancestor lets it be made."""
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return [f"{where}: cannot create {directory}: {existing} is not a directory"]
    if not os.access(existing, os.W_OK | os.X_OK):
        if existing == directory:
            return [f"{where}: {directory} is not writable by this user"]
        return [f"{where}: cannot create {directory}: {existing} is not writable by this user"]
    return []


def _file_problems(where: str, path: Path) -> list[str]:
    """The file can be appended to: it is a writable file, or its directory can hold it."""
    if path.is_dir():
        return [f"{where}: {path} is a directory, not a file"]
    if path.exists():
        return [] if os.access(path, os.W_OK) else [f"{where}: {path} is not writable by this user"]
    return _directory_problems(where, path.parent)


def _spool_lock_problems(directory: Path) -> list[str]:
    """The spool refuses a second writer: see whether another process holds its lock."""
    lock = directory / LOCK_NAME
    if not lock.is_file():
        return []
    try:
        with open(lock, "rb") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return [f"influxdb.spool_dir: {directory} is in use by another process (another anomalyd with "
                        f"the same spool_dir?)"]
    except OSError as exc:
        return [f"influxdb.spool_dir: cannot open {lock}: {exc.strerror or exc}"]
    return []
