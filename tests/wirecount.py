"""A TCP proxy that counts (and may keep) the bytes between a client and a broker: what is on
the wire, measured on real sockets. Used by the compression tests and bench/bench_wire.py."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable


class CountingProxy:
    """Listens on ``host`` (``url``; 127.0.0.1 unless told) and forwards each connection to
    ``upstream``.

    ``sent`` counts client-to-broker bytes, ``received`` broker-to-client bytes; with
    ``keep``, ``upstream_bytes`` and ``downstream_bytes`` hold them too (to read headers).
    """

    def __init__(self, upstream: str, *, keep: bool = False, host: str = "127.0.0.1") -> None:
        target, port = upstream.removeprefix("http://").rsplit(":", 1)
        self.target = (target, int(port))
        self.keep = keep
        self.sent = 0
        self.received = 0
        self.upstream_bytes = bytearray()
        self.downstream_bytes = bytearray()
        self._lock = threading.Lock()
        self._server = socket.create_server((host, 0))
        self.url = f"http://{host}:{self._server.getsockname()[1]}"
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def reset(self) -> tuple[int, int]:
        """(sent, received) so far, and start counting again."""
        with self._lock:
            counts = (self.sent, self.received)
            self.sent = self.received = 0
            self.upstream_bytes.clear()
            self.downstream_bytes.clear()
        return counts

    def close(self) -> None:
        self._closed = True
        self._server.close()

    def __enter__(self) -> CountingProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._pump, args=(client, server, self._up),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, self._down),
                             daemon=True).start()

    def _up(self, data: bytes) -> None:
        with self._lock:
            self.sent += len(data)
            if self.keep:
                self.upstream_bytes += data

    def _down(self, data: bytes) -> None:
        with self._lock:
            self.received += len(data)
            if self.keep:
                self.downstream_bytes += data

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket,
              count: Callable[[bytes], None]) -> None:
        try:
            while data := source.recv(262144):
                count(data)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
