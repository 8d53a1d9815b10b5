"""The service's HTTP endpoints: `/metrics` for Prometheus and `/healthz` for probes.

`/healthz` answers 200 when every part is healthy and 503 otherwise, with the JSON details from
the `health` callback either way, so a failing probe already says which part failed. A callback
that raises counts as unhealthy (503 naming the exception) rather than a 500: a health check
that crashes is itself a health problem.

A small threaded stdlib server is enough for a scrape every few seconds and keeps the service
free of a web framework; each request runs on its own daemon thread, so a slow scraper cannot
stall a probe.
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

log = logging.getLogger(__name__)

HealthCheck = Callable[[], tuple[bool, dict]]


class MetricsServer:
    """Serve `/metrics` and `/healthz` on `address:port` (port 0 picks a free one; see `port`)."""

    def __init__(self, address: str, port: int, registry: CollectorRegistry, health: HealthCheck) -> None:
        self._address = address
        self._requested_port = port
        self._registry = registry
        self._health = health
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (the real one when 0 was requested)."""
        if self._server is None:
            raise RuntimeError("metrics server is not started: no bound port yet")
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self._address}:{self.port}"

    def start(self) -> None:
        if self._server is not None:
            raise RuntimeError(f"metrics server already started on {self.url}")
        try:
            self._server = ThreadingHTTPServer((self._address, self._requested_port), self._handler_class())
        except OSError as err:
            raise OSError(f"metrics server cannot listen on {self._address}:{self._requested_port}: {err}") from err
        # poll_interval bounds how long stop() waits for the serving loop to notice.
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="metrics-http", daemon=True)
        self._thread.start()
        log.info("serving /metrics and /healthz on %s", self.url)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting requests and release the port. Idempotent."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        assert self._thread is not None
        self._thread.join(timeout)
        self._server = None
        self._thread = None

    def __enter__(self) -> MetricsServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def health_report(self) -> tuple[int, dict]:
        """HTTP status and JSON body of /healthz."""
        try:
            ok, details = self._health()
        except Exception as err:  # the check itself is broken: report it, do not crash the request
            log.exception("health check raised")
            return 503, {"healthy": False, "error": f"health check raised {type(err).__name__}: {err}"}
        return (200 if ok else 503), {"healthy": ok, **details}

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (stdlib name)
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
                    self._reply(200, content_type, encoder(server._registry))
                elif path == "/healthz":
                    status, body = server.health_report()
                    self._reply(status, "application/json", json.dumps(body, default=str).encode())
                else:
                    self._reply(404, "text/plain; charset=utf-8", b"not found: try /metrics or /healthz\n")

            def _reply(self, status: int, content_type: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (stdlib signature)
                log.debug("%s %s", self.address_string(), format % args)

        return Handler
