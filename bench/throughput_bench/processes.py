"""The parent's side of its processes: children spoken to with JSON lines, and the broker."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from .common import HOST, MOSQUITTO, ROOT, SCRIPT, free_port


class Child:
    """A role of the bench script in its own process, spoken to with JSON lines."""

    def __init__(self, role: str, spec: dict, log: Path, interactive: bool = True) -> None:
        self.role = role
        self.ready: dict = {}  # the first answer of an interactive child, when the caller keeps it
        self._log = open(log, "ab")
        self.proc = subprocess.Popen([sys.executable, str(SCRIPT), role, json.dumps(spec)],
                                     stdin=subprocess.PIPE if interactive else subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=self._log, text=True, cwd=ROOT)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def read(self, timeout: float) -> dict:
        """The child's next JSON line, or an error after `timeout` seconds."""
        result: list[str] = []
        reader = threading.Thread(target=lambda: result.append(self.proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        if not result or not result[0]:
            self.kill()
            raise RuntimeError(f"{self.role} (pid {self.pid}) gave no answer within {timeout:.0f} s; "
                               f"see {self._log.name}")
        answer = json.loads(result[0])
        if "error" in answer:
            raise RuntimeError(f"{self.role}: {answer['error']}")
        return answer

    def ask(self, cmd: str, timeout: float = 30.0, **extra) -> dict:
        self.proc.stdin.write(json.dumps({"cmd": cmd, **extra}) + "\n")
        self.proc.stdin.flush()
        return self.read(timeout)

    def stop(self, timeout: float = 30.0) -> dict:
        try:
            return self.ask("stop", timeout)
        finally:
            self.close()

    def wait_result(self, timeout: float) -> dict:
        try:
            return self.read(timeout)
        finally:
            self.close()

    def close(self) -> None:
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.kill()
        self._log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class Mosquitto:
    """A private broker on a free loopback port."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        conf = workdir / "mosquitto.conf"
        lines = [f"listener {self.port} {HOST}", "allow_anonymous true", "persistence false",
                 # The default of 1000 silently drops messages to a subscriber that falls behind.
                 "max_queued_messages 10000000", f"log_dest file {workdir / 'mosquitto.log'}"]
        if os.geteuid() == 0:
            lines.append("user root")
        conf.write_text("\n".join(lines) + "\n")
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection((HOST, self.port), timeout=0.2):
                return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"mosquitto did not start on port {self.port} (see {workdir / 'mosquitto.log'})")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
