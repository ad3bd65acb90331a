"""Exchanges with upstream servers: one fresh socket per attempt, so the kernel picks an
unpredictable source port; the query id comes from `secrets`. Replies that do not match the
outstanding query are ignored until the deadline (RFC 5452). Servers that time out are marked down
and skipped until `down_for` has passed; then one query probes them again.

Sockets for upstreams that must be reached from inside a sandbox are created in its namespace by the
namespace worker; the event loop thread never switches namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import secrets
import socket
import struct
from collections.abc import Awaitable, Callable, Iterator

from resolver.core import forward as fw
from resolver.registry.model import Upstream

SocketFactory = Callable[[Upstream, int], Awaitable[socket.socket]]


class UpstreamError(Exception):
    """One attempt failed; `reason` is a metrics label (timeout, refused, network, ...)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@functools.lru_cache(maxsize=1024)
def _family(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ipaddress.ip_address(address.split("%")[0]).version == 6 else socket.AF_INET


class QueryIds:
    """Unpredictable 16-bit query ids from the OS's CSPRNG, drawn 2 KiB at a time (one getrandom
    call per 1,024 ids instead of one per query)."""

    def __init__(self, batch: int = 2048) -> None:
        self.batch = batch
        self._ids: list[int] = []

    def next(self) -> int:
        if not self._ids:
            raw = secrets.token_bytes(self.batch)
            self._ids = list(struct.unpack(f"!{self.batch // 2}H", raw))
        return self._ids.pop()


_query_ids = QueryIds()


def plain_socket(upstream: Upstream, kind: int) -> socket.socket:
    """A non-blocking socket in the calling thread's namespace."""
    return _new_socket(_family(upstream.address), kind)


def _new_socket(family: socket.AddressFamily, kind: int) -> socket.socket:
    sock = socket.socket(family, kind)
    sock.setblocking(False)
    return sock


def _new_sockets(family: socket.AddressFamily, kind: int, count: int) -> list[socket.socket]:
    return [_new_socket(family, kind) for _ in range(count)]


class SandboxClosed(OSError):
    """No socket is made in a sandbox the daemon no longer serves (it left, or its namespace went)."""


class SocketPool:
    """Fresh, never-used sockets made inside sandboxes in batches, so one trip through the namespace
    worker serves many upstream queries. Each socket is used for one query and closed: the kernel
    still picks a new random source port at connect time. Sockets are made only for sandboxes between
    `open` and `drop`: `drop` closes a sandbox's spare sockets, which would otherwise keep its namespace
    alive, and a query or probe still running for it afterwards gets SandboxClosed instead of a socket."""

    def __init__(self, run_in: Callable[..., Awaitable[list[socket.socket]]], batch: int = 32) -> None:
        self.run_in = run_in
        self.batch = batch
        self._spare: dict[tuple[str, socket.AddressFamily, int], list[socket.socket]] = {}
        self._open: set[str] = set()

    def open(self, sandbox: str) -> None:
        self._open.add(sandbox)

    def factory(self, sandbox: str) -> SocketFactory:
        async def make(upstream: Upstream, kind: int) -> socket.socket:
            key = (sandbox, _family(upstream.address), kind)
            spare = self._spare.get(key)
            if not spare:
                if sandbox not in self._open:
                    raise SandboxClosed(f"sandbox {sandbox} is no longer served")
                made = await self.run_in(sandbox, _new_sockets, key[1], kind, self.batch)
                if sandbox not in self._open:  # dropped while the sockets were being made
                    for sock in made:
                        sock.close()
                    raise SandboxClosed(f"sandbox {sandbox} is no longer served")
                spare = self._spare.setdefault(key, [])
                spare.extend(made)
            return spare.pop()

        return make

    def drop(self, sandbox: str) -> None:
        self._open.discard(sandbox)
        for key in [k for k in self._spare if k[0] == sandbox]:
            for sock in self._spare.pop(key):
                sock.close()

    def close(self) -> None:
        for sandbox in {*self._open, *(k[0] for k in self._spare)}:
            self.drop(sandbox)


ServerKey = tuple[str | None, str, int]


def server_key(upstream: Upstream, sandbox: str) -> ServerKey:
    """Servers reached from inside a sandbox are that sandbox's own: 127.0.0.1 differs per sandbox."""
    return (sandbox if upstream.from_sandbox else None, upstream.address, upstream.port)


class Health:
    """Which servers are down: a server that timed out is skipped (tried only when every server is
    down) until a probe sees it answer again."""

    def __init__(self) -> None:
        self._down: set[ServerKey] = set()

    def order(self, upstreams: tuple[Upstream, ...], sandbox: str) -> list[Upstream]:
        up = [u for u in upstreams if server_key(u, sandbox) not in self._down]
        return up or list(upstreams)

    def failed(self, upstream: Upstream, sandbox: str) -> bool:
        """Mark the server down; True if it was up (the caller then starts probing it)."""
        key = server_key(upstream, sandbox)
        if key in self._down:
            return False
        self._down.add(key)
        return True

    def succeeded(self, upstream: Upstream, sandbox: str) -> None:
        self._down.discard(server_key(upstream, sandbox))

    def is_down(self, upstream: Upstream, sandbox: str) -> bool:
        return server_key(upstream, sandbox) in self._down

    def forget(self, sandbox: str) -> None:
        """Drop what is known about a sandbox's own servers (it left); its probes then stop."""
        self._down = {key for key in self._down if key[0] != sandbox}

    def down(self) -> list[str]:
        return sorted(f"{a}:{p}" + (f" (from {s})" if s else "") for s, a, p in self._down)


PROBE_QUESTION = b"\x00\x00\x02\x00\x01"
"""The probe asks `. IN NS`: any well-formed answer, whatever its rcode, shows the server is back."""


def probe_query(query_id: int) -> bytes:
    return struct.pack("!HHHHHH", query_id, 0x0100, 1, 0, 0, 0) + PROBE_QUESTION


async def exchange_udp(
    sock: socket.socket, upstream: Upstream, query: bytes, query_id: int, question: bytes, timeout: float
) -> bytes:
    """Send `query` on a connected UDP socket and wait for the reply that matches it."""
    loop = asyncio.get_running_loop()
    with _as_upstream_error(upstream, "UDP", timeout):
        async with asyncio.timeout(timeout):
            # A UDP connect only sets the peer (the kernel then drops datagrams from anyone else); done
            # directly, it also avoids the event loop's resolver thread for an address already numeric.
            sock.connect((upstream.address, upstream.port))
            try:
                sock.send(query)
            except BlockingIOError:
                await loop.sock_sendall(sock, query)
            while not fw.matches(data := await loop.sock_recv(sock, 65535), query_id, question):
                pass
            return data


@contextlib.contextmanager
def _as_upstream_error(upstream: Upstream, transport: str, timeout: float) -> Iterator[None]:
    """Socket failures of one exchange, as an UpstreamError with a metrics reason."""
    try:
        yield
    except TimeoutError:
        raise UpstreamError(
            "timeout", f"{upstream.address} gave no matching {transport} answer in {timeout} s"
        ) from None
    except ConnectionRefusedError:
        raise UpstreamError("refused", f"{upstream.address}:{upstream.port} refused {transport}") from None
    except OSError as exc:
        raise UpstreamError("network", f"{upstream.address}: {exc.strerror or exc}") from None


async def exchange_tcp(
    sock: socket.socket, upstream: Upstream, query: bytes, query_id: int, question: bytes, timeout: float
) -> bytes:
    """Send `query` over TCP (length-prefixed) and return the matching reply."""
    loop = asyncio.get_running_loop()
    with _as_upstream_error(upstream, "TCP", timeout):
        async with asyncio.timeout(timeout):
            await loop.sock_connect(sock, _numeric(sock, upstream))
            await loop.sock_sendall(sock, struct.pack("!H", len(query)) + query)
            while True:
                size = struct.unpack("!H", await _recv_exactly(loop, sock, 2))[0]
                data = await _recv_exactly(loop, sock, size)
                if fw.matches(data, query_id, question):
                    return data


def _numeric(sock: socket.socket, upstream: Upstream) -> tuple:
    """The address in the form the socket takes, so the loop has nothing to resolve."""
    if sock.family == socket.AF_INET6:
        info = socket.getaddrinfo(upstream.address, upstream.port, sock.family, 0, 0, socket.AI_NUMERICHOST)
        return info[0][4]
    return (upstream.address, upstream.port)


async def _recv_exactly(loop: asyncio.AbstractEventLoop, sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = await loop.sock_recv(sock, size - len(data))
        if not chunk:
            raise OSError("connection closed by the upstream")
        data += chunk
    return data


async def ask(
    make_socket: SocketFactory,
    upstream: Upstream,
    query_for: Callable[[int], bytes],
    question: bytes,
    timeout: float,
    tcp: bool,
) -> bytes:
    """One attempt against one server with a fresh id and a fresh socket."""
    query_id = _query_ids.next()
    kind = socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM
    sock = await make_socket(upstream, kind)
    with contextlib.closing(sock):
        exchange = exchange_tcp if tcp else exchange_udp
        return await exchange(sock, upstream, query_for(query_id), query_id, question, timeout)
