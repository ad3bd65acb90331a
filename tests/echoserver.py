"""Test helper: a threaded UDP/TCP echo server on a pair of namespace listeners (replies 'ping' as 'pong')."""

from __future__ import annotations

import selectors
import threading

from resolver.nsinject.netns import Listeners


class EchoServer:
    """Echoes one UDP datagram per recv and each TCP connection's first message, on a thread."""

    def __init__(self, listeners: Listeners) -> None:
        self.listeners = listeners
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> EchoServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _serve(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.listeners.udp, selectors.EVENT_READ)
        sel.register(self.listeners.tcp, selectors.EVENT_READ)
        while not self._stop.is_set():
            for key, _ in sel.select(timeout=0.1):
                if key.fileobj is self.listeners.udp:
                    data, peer = self.listeners.udp.recvfrom(512)
                    self.listeners.udp.sendto(data.replace(b"ping", b"pong"), peer)
                else:
                    conn, _ = self.listeners.tcp.accept()
                    with conn:
                        conn.setblocking(True)
                        conn.settimeout(3)
                        conn.sendall(conn.recv(512).replace(b"ping", b"pong"))
        sel.close()
