"""A private MQTT broker for the demo: mosquitto when installed, else the embedded amqtt."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Iterator

from daemon.core.errors import UserError

log = logging.getLogger(__name__)
MOSQUITTO_PATHS = ("mosquitto", "/usr/sbin/mosquitto")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_open(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise UserError(f"demo broker did not open 127.0.0.1:{port} within {timeout:.0f} s")


@contextlib.contextmanager
def _mosquitto(binary: str, workdir: Path) -> Iterator[tuple[str, int]]:
    port = free_port()
    conf = workdir / "mosquitto.conf"
    # max_queued_messages: by default mosquitto drops a slow subscriber's messages beyond 1000,
    # and the demo publishes faster than the service scores.
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nlog_dest none\npersistence false\n"
                    f"max_queued_messages 1000000\n" + ("user root\n" if _is_root() else ""))
    process = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_open(port)
        log.info("demo broker: mosquitto on 127.0.0.1:%d", port)
        yield "127.0.0.1", port
    finally:
        process.terminate()
        process.wait(timeout=10)


def _is_root() -> bool:
    import os
    return os.geteuid() == 0


async def _cancel_leftovers() -> None:
    """amqtt leaves its broadcast task pending after shutdown; finish it before the loop stops."""
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _started_broker(broker_class: type, config: dict, loop: asyncio.AbstractEventLoop):
    """The broker built inside its own loop: amqtt creates its shutdown future in the current
    loop, and a broker built outside it never sees shutdown and waits out amqtt's broadcast
    timeout at every exit."""
    broker = broker_class(config, loop=loop)
    await broker.start()
    return broker


@contextlib.contextmanager
def _amqtt() -> Iterator[tuple[str, int]]:
    try:
        from amqtt.broker import Broker
    except ImportError:
        raise UserError("demo: no mosquitto installed and no amqtt package: install one "
                        "(apt-get install mosquitto, or pip install 'anomalyd[demo]')") from None
    port = free_port()
    # amqtt logs client probes and its own shutdown races as errors with tracebacks; for a
    # throw-away demo broker that is noise, and broker failures still surface as exceptions.
    logging.getLogger("amqtt").setLevel(logging.CRITICAL)
    loop = asyncio.new_event_loop()
    config = {"listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
              "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}}}
    thread = threading.Thread(target=loop.run_forever, name="amqtt", daemon=True)
    thread.start()
    broker = asyncio.run_coroutine_threadsafe(_started_broker(Broker, config, loop), loop).result(timeout=10)
    try:
        log.info("demo broker: embedded amqtt on 127.0.0.1:%d", port)
        yield "127.0.0.1", port
    finally:
        asyncio.run_coroutine_threadsafe(broker.shutdown(), loop).result(timeout=10)
        asyncio.run_coroutine_threadsafe(_cancel_leftovers(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)


@contextlib.contextmanager
def local_broker(workdir: Path | None, prefer_mosquitto: bool = True) -> Iterator[tuple[str, int] | None]:
    """Yield (host, port) of a private broker, or None when `workdir` is None (use the config's)."""
    if workdir is None:
        yield None
        return
    binary = next((found for name in MOSQUITTO_PATHS if (found := shutil.which(name))), None)
    broker = _mosquitto(binary, workdir) if binary and prefer_mosquitto else _amqtt()
    with broker as address:
        yield address
