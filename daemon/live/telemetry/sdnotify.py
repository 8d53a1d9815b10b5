"""systemd readiness and watchdog over the NOTIFY_SOCKET datagram protocol (no dependency).

With `Type=notify` systemd waits for READY=1 before it calls the unit started, and with
`WatchdogSec` it restarts a daemon that stops sending WATCHDOG=1. The service pings while its
worker thread is alive, not only while /healthz says healthy: a dead worker gets the process
restarted, while a broker or database outage, which a restart cannot cure, does not. Outside
systemd (no NOTIFY_SOCKET) every call is a no-op.
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger(__name__)


class SystemdNotifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self._address = "\0" + address[1:] if address.startswith("@") else address
        usec = env.get("WATCHDOG_USEC", "")
        self._interval = int(usec) / 2e6 if usec.isdigit() else None
        self._last_ping = 0.0

    def _send(self, message: str) -> None:
        if not self._address:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(message.encode(), self._address)
        except OSError as exc:
            log.warning("sd_notify %r failed: %s", message, exc)

    def ready(self) -> None:
        self._send("READY=1")

    def reloading(self) -> None:
        self._send("RELOADING=1")

    def stopping(self) -> None:
        self._send("STOPPING=1")

    def watchdog(self) -> None:
        """Ping at half the watchdog interval systemd asked for."""
        if self._interval is None or time.monotonic() - self._last_ping < self._interval:
            return
        self._last_ping = time.monotonic()
        self._send("WATCHDOG=1")
