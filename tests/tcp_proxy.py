"""A loopback TCP proxy that can cut the network between clients and a server.

Stopping a broker to simulate an outage also loses what a memory-backed broker holds (Tansu's
topics and committed offsets), so tests cut the path to it instead: the server advertises the
proxy's port, every client connection goes through the proxy, and `cut()` closes every open
connection and refuses new ones (the listening socket is closed: connects get ECONNREFUSED),
as a pulled cable or a dead switch does to a client. `restore()` listens again on the same port.

Each accepted connection gets a connection to the target and two pump threads, one per
direction; a pump that sees either side end closes both, so the peer notices at once.
"""

from __future__ import annotations

import socket
import threading

HOST = "127.0.0.1"
_CHUNK = 65536
_ACCEPT_POLL_S = 0.05  # how long the accept loop waits between looks at the cut flag


class TcpProxy:
    """Forwards `HOST:port` to `target_host:target_port` until `cut()`; `port` 0 picks a free one."""

    def __init__(self, target_port: int, port: int = 0, target_host: str = HOST) -> None:
        self.target = (target_host, target_port)
        self.port = port
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()  # both ends of every forwarded connection
        self._listener: socket.socket | None = None
        self._accepting: threading.Thread | None = None
        self._cut = threading.Event()
        self.connections = 0  # accepted since start, for tests that check clients came through here

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def start(self) -> None:
        """Listen and forward (also what `restore()` does after a `cut()`)."""
        if self._listener is not None:
            raise RuntimeError(f"proxy on {self.address} is already listening")
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((HOST, self.port))
        listener.listen(64)
        listener.settimeout(_ACCEPT_POLL_S)
        self.port = listener.getsockname()[1]
        self._cut.clear()
        self._listener = listener
        self._accepting = threading.Thread(target=self._accept, args=(listener,), name=f"proxy-{self.port}",
                                           daemon=True)
        self._accepting.start()

    def cut(self) -> None:
        """Close every open connection and stop listening: new connections are refused."""
        self._cut.set()
        if self._accepting is not None:
            self._accepting.join()
            self._accepting = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            ends, self._open = list(self._open), set()
        for end in ends:
            _close(end)

    def restore(self) -> None:
        """Listen on the same port again."""
        self.start()

    def stop(self) -> None:
        self.cut()

    def _accept(self, listener: socket.socket) -> None:
        while not self._cut.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                _close(client)
                continue
            for end in (client, server):
                end.settimeout(None)
            with self._lock:
                if self._cut.is_set():
                    _close(client)
                    _close(server)
                    return
                self._open |= {client, server}
                self.connections += 1
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(_CHUNK):
                sink.sendall(data)
        except OSError:
            pass
        with self._lock:
            self._open -= {source, sink}
        _close(source)
        _close(sink)


def _close(end: socket.socket) -> None:
    try:
        end.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    end.close()
