"""UDP and TCP serving of one sandbox's sockets. UDP: the fast path runs inline in `datagram_received`
(prepared answers need no task): a query spelt exactly like one answered before, from the name table or
from the cache while its TTLs hold (the same as `resolver.core.answer.exact_cached_reply`), costs one
dictionary lookup and one concatenation; everything else goes through the dispatcher. TCP (RFC 7766):
2-byte length framing read exactly, several queries per connection answered concurrently and out of order
(bounded per connection), an idle timeout, a cap on connections per sandbox (a connection over it is
closed at once); a short or broken frame closes the connection. A client that does not read its replies
is not read from either, and is closed when it has not taken them within the idle timeout, so unread
replies cannot pile up in memory. TC is never set over TCP.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
from typing import TYPE_CHECKING

from resolver.core.answer import fast_cached_reply, fast_entry, forward_plain
from resolver.core.local import learn_exact
from resolver.server.metrics import FastCounts

if TYPE_CHECKING:
    from resolver.server.site import Site

log = logging.getLogger("resolver.listen")
UDP_RECEIVE_SIZE = 65535
_now = time.time


class UdpListener(asyncio.DatagramProtocol):
    def __init__(self, site: Site, counts: FastCounts) -> None:
        self.site = site
        self.counts = counts
        self.local_counts = counts.local
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if hasattr(transport, "max_size"):
            # stdlib asyncio reads 256 KiB per datagram, which makes glibc map and unmap memory per packet
            transport.max_size = UDP_RECEIVE_SIZE  # type: ignore[attr-defined]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        view = self.site.view
        spelling = data[2:]
        exact = view.table.exact.get(spelling)
        if exact is not None:
            self.local_counts[exact.slot] += 1
            self.transport.sendto(data[:2] + exact.tail, addr)  # type: ignore[union-attr]
            return
        cached = view.cached_exact.get(spelling)
        if cached is not None and _now() < cached[0]:
            self.counts.cached[data[-4:-2]] += 1
            self.transport.sendto(data[:2] + cached[1], addr)  # type: ignore[union-attr]
            return
        self._not_exact(data, addr)

    def _not_exact(self, data: bytes, addr: tuple[str, int]) -> None:
        site = self.site
        view = site.view
        entry = fast_entry(data, view.table)
        if entry is not None:
            self.local_counts[learn_exact(data, view.table, entry)] += 1
            self.transport.sendto(entry.fast_reply(data), addr)  # type: ignore[union-attr]
            return
        now = _now()
        if view.cached:
            reply = fast_cached_reply(data, view, now)
            if reply is not None:
                self.counts.cached[data[-4:-2]] += 1
                self.transport.sendto(reply, addr)  # type: ignore[union-attr]
                return
        transport = self.transport

        def send(wire: bytes) -> None:
            if not transport.is_closing():  # type: ignore[union-attr]
                transport.sendto(wire, addr)  # type: ignore[union-attr]

        dispatcher = site.dispatcher
        decided = forward_plain(data, view, dispatcher.cache, now)
        dispatcher.answer(data, view, "udp", send, site.tasks, fast_paths_tried=True, decided=decided)

    def error_received(self, exc: Exception) -> None:
        log.debug("udp error in %s: %s", self.site.sandbox, exc)


class TcpConnection:
    """One client connection: read frames until idle or closed, answer each as it completes."""

    def __init__(self, site: Site, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.site = site
        self.reader = reader
        self.writer = writer
        self.pending: set[asyncio.Future] = set()
        self.slots = asyncio.Semaphore(site.settings.tcp_max_pipelined)

    async def serve(self) -> None:
        try:
            while (message := await self._read_frame()) is not None:
                if not await self._replies_taken():
                    self.writer.transport.abort()  # close() would wait for the client to read them
                    break
                await self.slots.acquire()
                task = self.site.dispatcher.answer(message, self.site.view, "tcp", self._send, self.pending)
                if task is None:
                    self.slots.release()
                else:
                    task.add_done_callback(lambda _t: self.slots.release())
            if self.pending:
                await asyncio.wait(self.pending, timeout=self.site.settings.tcp_idle_timeout)
        finally:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()

    async def _replies_taken(self) -> bool:
        """Backpressure: once the replies waiting to be sent pass the transport's high-water mark, wait
        (up to the idle timeout) for the client to read them; False when it did not."""
        transport = self.writer.transport
        if transport.get_write_buffer_size() <= transport.get_write_buffer_limits()[1]:
            return True
        try:
            async with asyncio.timeout(self.site.settings.tcp_idle_timeout):
                await self.writer.drain()
        except (TimeoutError, ConnectionError):
            return False
        return True

    def _send(self, wire: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(struct.pack("!H", len(wire)) + wire)

    async def _read_frame(self) -> bytes | None:
        timeout = self.site.settings.tcp_idle_timeout
        try:
            async with asyncio.timeout(timeout):
                size = struct.unpack("!H", await self.reader.readexactly(2))[0]
                if size < 12 or size > self.site.settings.tcp_max_message:
                    return None
                return await self.reader.readexactly(size)
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, OSError):
            return None


async def serve_tcp(site: Site, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    if site.tcp_connections >= site.settings.tcp_max_connections:
        writer.close()
        return
    site.tcp_connections += 1
    try:
        await TcpConnection(site, reader, writer).serve()
    finally:
        site.tcp_connections -= 1
