"""Exchanges with upstream servers: one fresh socket per attempt, so the kernel picks an
unpredictable source port; the query id comes from `secrets`. Replies that do not match the
outstanding query are ignored until the deadline (RFC 5452). Servers that time out are marked down
and skipped until `down_for` has passed; then one query probes them again.

Sockets for upstreams that must be reached from inside a sandbox are created in its namespace by the
namespace worker; the event loop thread never switches namespace.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import functools
import ipaddress
import itertools
import os
import secrets
import select
import socket
import struct
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Protocol

from resolver.core import forward as fw
from resolver.registry.model import Upstream

SocketFactory = Callable[[Upstream, int], Awaitable[socket.socket]]
UPSTREAM_RECEIVE_SIZE = 65535
PoolKey = tuple[str, socket.AddressFamily, int]


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
next_query_id: Callable[[], int] = _query_ids.next
"""A fresh unpredictable query id (RFC 5452)."""


_libc_holding_gil = ctypes.PyDLL(None, use_errno=True)
_c_socket = _libc_holding_gil.socket
_c_connect = _libc_holding_gil.connect
"""Both take Python ints (as C int) and bytes (as a pointer) and return a C int, ctypes' defaults;
declaring argtypes would cost a conversion per call (connect: 1.7 us instead of 2.9 here)."""
GIL_YIELD_EVERY = 32
"""Sockets a refill makes between two chances for the loop thread to take the GIL."""


def _new_sockets(family: socket.AddressFamily, kind: int, count: int) -> list[int]:
    """`count` non-blocking socket descriptors (the caller owns them), made without letting go of the
    GIL for each one: the namespace worker runs this while the loop thread serves queries on the same
    CPU, and `socket.socket` releases the GIL around each of its system calls, so every socket of a
    batch cost two thread switches (a futex storm of about five per forwarded query). libc's socket()
    through ctypes.PyDLL keeps the GIL, and SOCK_NONBLOCK saves the ioctl. Every `GIL_YIELD_EVERY`
    sockets the worker lets go of the GIL and of the CPU (sched_yield), so the loop thread, if it waits,
    runs first: a refill holds it up for about 0.2 ms instead of the whole batch (2 to 5 ms for 256
    sockets measured here, which made the p99 of forwarded queries at 2,500 q/s). Letting go of the
    GIL alone does not do it: the worker takes it straight back on the shared CPU."""
    flags = kind | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
    made: list[int] = []
    for index in range(count):
        if index and not index % GIL_YIELD_EVERY:
            os.sched_yield()
        fd = _c_socket(family, flags, 0)
        if fd < 0:
            err = ctypes.get_errno()
            for made_fd in made:
                os.close(made_fd)
            raise OSError(err, os.strerror(err))
        made.append(fd)
    return made


def raw_socket(upstream: Upstream, kind: int) -> int:
    """A non-blocking socket descriptor in the calling thread's namespace (the caller closes it)."""
    return _new_sockets(_family(upstream.address), kind, 1)[0]


def plain_socket(upstream: Upstream, kind: int) -> socket.socket:
    """A non-blocking socket object in the calling thread's namespace."""
    return wrap(raw_socket(upstream, kind), _family(upstream.address), kind)


def wrap(fd: int, family: socket.AddressFamily, kind: int) -> socket.socket:
    """A socket object owning `fd`; with its family and type given, Python makes no system call."""
    return socket.socket(family, kind | socket.SOCK_NONBLOCK, 0, fileno=fd)


@functools.lru_cache(maxsize=1024)
def _sockaddr(address: str, port: int) -> bytes:
    """The C socket address of a numeric `address` (an IPv6 one may carry %scope)."""
    host, _, scope = address.partition("%")
    ip = ipaddress.ip_address(host)
    if ip.version == 4:
        return struct.pack("=H", socket.AF_INET) + struct.pack("!H4s8x", port, ip.packed)
    scope_id = int(scope) if scope.isdigit() else socket.if_nametoindex(scope) if scope else 0
    family = struct.pack("=H", socket.AF_INET6)
    return family + struct.pack("!HI16s", port, 0, ip.packed) + struct.pack("=I", scope_id)


def connect_fd(fd: int, upstream: Upstream) -> None:
    """Connect a UDP descriptor to `upstream`: the kernel then picks a random source port and drops
    datagrams from anyone else. OSError (of the errno's kind) on failure."""
    address = _sockaddr(upstream.address, upstream.port)
    if _c_connect(fd, address, len(address)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class SandboxClosed(OSError):
    """No socket is made in a sandbox the daemon no longer serves (it left, or its namespace went)."""


class SocketPool:
    """Fresh, never-used sockets made inside sandboxes in batches, so one trip through the namespace
    worker serves many upstream queries. Each socket is used for one query and closed: the kernel
    still picks a new random source port at connect time. One refill per (sandbox, family, kind) runs
    at a time and starts when half the batch is used, so queries rarely wait for the worker and a
    burst never sends one trip per waiting query. A sandbox whose queries found the pool empty gets
    twice the batch next time (up to `max_batch`), so a busy sandbox is not held to a quiet one's
    batch and a quiet one does not hold a busy one's descriptors. Sockets are made only for sandboxes
    between `open` and `drop`: `drop` closes a sandbox's spare sockets (they would keep its namespace
    alive), sockets of a refill that finishes after the drop are closed too, and a query or probe still
    running for the sandbox afterwards gets SandboxClosed instead of a socket."""

    def __init__(
        self, run_in: Callable[..., Awaitable[list[int]]], batch: int = 64, max_batch: int = 1024
    ) -> None:
        self.run_in = run_in
        self.batch = batch
        self.max_batch = max_batch
        self._batch: dict[PoolKey, int] = {}
        self._hungry: set[PoolKey] = set()
        """Keys a query found empty since their last refill started."""
        self._spare: dict[PoolKey, list[int]] = {}
        self._refills: dict[PoolKey, asyncio.Future[None]] = {}
        self._stale: set[PoolKey] = set()
        self._factories: dict[str, SocketFactory] = {}
        self._open: set[str] = set()

    def open(self, sandbox: str) -> None:
        self._open.add(sandbox)

    def factory(self, sandbox: str) -> SocketFactory:
        make = self._factories.get(sandbox)
        if make is None:

            async def make(upstream: Upstream, kind: int) -> socket.socket:
                return await self._take((sandbox, _family(upstream.address), kind))

            self._factories[sandbox] = make
        return make

    def take_nowait(self, sandbox: str, upstream: Upstream) -> int | None:
        """A fresh UDP socket descriptor for `upstream` made in `sandbox` (the caller closes it), or
        None when none is ready (a refill is then under way for the next query, as long as the sandbox
        is served)."""
        key = (sandbox, _family(upstream.address), socket.SOCK_DGRAM)
        spare = self._spare.get(key)
        if spare:
            if len(spare) <= self._batch.get(key, self.batch) // 2:
                self._refill(key)
            return spare.pop()
        if sandbox in self._open:
            self._starved(key)
            self._refill(key)
        return None

    async def _take(self, key: PoolKey) -> socket.socket:
        while True:
            spare = self._spare.get(key)
            if spare:
                if len(spare) <= self._batch.get(key, self.batch) // 2:
                    self._refill(key)
                return wrap(spare.pop(), key[1], key[2])
            if key[0] not in self._open:
                raise SandboxClosed(f"sandbox {key[0]} is no longer served")
            self._starved(key)
            await asyncio.shield(self._refill(key))

    def _starved(self, key: PoolKey) -> None:
        """A query found no socket: the next refill of `key` makes twice as many."""
        self._hungry.add(key)

    def _refill(self, key: PoolKey) -> asyncio.Future[None]:
        pending = self._refills.get(key)
        if pending is None:
            if key in self._hungry:
                self._hungry.discard(key)
                self._batch[key] = min(self.max_batch, 2 * self._batch.get(key, self.batch))
            pending = self._refills[key] = asyncio.ensure_future(self._make(key))
            pending.add_done_callback(_consume_error)
        return pending

    async def _make(self, key: PoolKey) -> None:
        sandbox, family, kind = key
        try:
            made = await self.run_in(sandbox, _new_sockets, family, kind, self._batch.get(key, self.batch))
        finally:
            del self._refills[key]
            stale = key in self._stale or sandbox not in self._open
            self._stale.discard(key)
        if stale:
            for fd in made:
                os.close(fd)
            raise UpstreamError("network", f"sandbox {sandbox} left while its sockets were made")
        self._spare.setdefault(key, []).extend(made)

    def drop(self, sandbox: str) -> None:
        self._open.discard(sandbox)
        self._stale.update(k for k in self._refills if k[0] == sandbox)
        self._factories.pop(sandbox, None)
        for key in [k for k in self._batch if k[0] == sandbox]:
            del self._batch[key]
        self._hungry = {k for k in self._hungry if k[0] != sandbox}
        for key in [k for k in self._spare if k[0] == sandbox]:
            for fd in self._spare.pop(key):
                os.close(fd)

    def close(self) -> None:
        for sandbox in {*self._open, *(k[0] for k in self._spare)}:
            self.drop(sandbox)


def _consume_error(future: asyncio.Future[None]) -> None:
    """A refill that failed is reported to the queries waiting for it; nothing is left to log."""
    if not future.cancelled():
        future.exception()


ServerKey = tuple[str | None, str, int]


def server_key(upstream: Upstream, sandbox: str) -> ServerKey:
    """Servers reached from inside a sandbox are that sandbox's own: 127.0.0.1 differs per sandbox."""
    return (sandbox if upstream.from_sandbox else None, upstream.address, upstream.port)


class Health:
    """Which servers are down: a server that timed out is skipped (tried only when every server is
    down) until a probe sees it answer again."""

    def __init__(self) -> None:
        self._down: set[ServerKey] = set()

    def order(self, upstreams: tuple[Upstream, ...], sandbox: str) -> Sequence[Upstream]:
        if not self._down:
            return upstreams
        up = [u for u in upstreams if server_key(u, sandbox) not in self._down]
        return up or upstreams

    def failed(self, upstream: Upstream, sandbox: str) -> bool:
        """Mark the server down; True if it was up (the caller then starts probing it)."""
        key = server_key(upstream, sandbox)
        if key in self._down:
            return False
        self._down.add(key)
        return True

    def succeeded(self, upstream: Upstream, sandbox: str) -> None:
        if self._down:
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


class Waiter(Protocol):
    """What `ReplyWatch` wakes: an asyncio future, or an object driven by callbacks with the same three
    methods (`set_exception` gets TimeoutError at the deadline)."""

    def done(self) -> bool: ...

    def set_result(self, result: None, /) -> None: ...

    def set_exception(self, exception: BaseException, /) -> None: ...


class ReplyWatch:
    """Waits for replies on upstream UDP sockets through one epoll instance that the loop watches, so
    an exchange costs one epoll registration instead of a loop reader (a poll handle, an ioctl and
    two epoll_ctl calls) plus a timer. Registrations are one-shot and vanish when the socket closes.

    A socket's deadline is set by its first `wait` and kept through re-arms until `forget` (or until it
    passes). Deadlines are kept in arrival order as (deadline, fd, token) and checked by one timer that
    runs at most every `tick` seconds: a deadline fires up to `tick` late, and one shortened by a
    reconfiguration can fire late by at most the old timeout. The queue holds no reference to a waiter,
    so an exchange that got its reply is freed at once instead of living on until its deadline."""

    def __init__(self, loop: asyncio.AbstractEventLoop, tick: float = 0.05) -> None:
        self.loop = loop
        self.tick = tick
        self._epoll = select.epoll()
        self._waiting: dict[int, Waiter] = {}
        self._armed: dict[int, int] = {}
        """fd -> token of its pending deadline."""
        self._deadlines: collections.deque[tuple[float, int, int]] = collections.deque()
        self._tokens = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        loop.add_reader(self._epoll.fileno(), self._ready)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.loop.remove_reader(self._epoll.fileno())
        self._epoll.close()

    def readable(self, fd: int, first: bool, deadline: float) -> asyncio.Future[None]:
        """A future done when `fd` is readable, or failing with TimeoutError at `deadline`."""
        future = self.loop.create_future()
        self.wait(fd, future, first, deadline)
        return future

    def wait(self, fd: int, waiter: Waiter, first: bool, deadline: float) -> None:
        """Call `waiter.set_result(None)` when `fd` is readable, or `waiter.set_exception` with a
        TimeoutError at `deadline`, unless `waiter.done()` by then. `first`: `fd` is not registered yet
        (a re-arm after a datagram that did not match passes False, and keeps the first deadline)."""
        if first:
            self._epoll.register(fd, _ONE_SHOT_IN)
        else:
            self._epoll.modify(fd, _ONE_SHOT_IN)
        self._waiting[fd] = waiter
        if fd not in self._armed:
            token = self._armed[fd] = next(self._tokens)
            self._deadlines.append((deadline, fd, token))
            if self._timer is None:  # also for a re-arm whose deadline the timer already passed
                self._timer = self.loop.call_at(deadline, self._expire)

    def forget(self, fd: int) -> None:
        """Call before the socket closes (its number can be reused at once)."""
        self._waiting.pop(fd, None)
        self._armed.pop(fd, None)

    def _ready(self) -> None:
        waiting = self._waiting
        for fd, _events in self._epoll.poll(0):
            waiter = waiting.pop(fd, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def _expire(self) -> None:
        now = self.loop.time()
        deadlines = self._deadlines
        armed = self._armed
        while deadlines and deadlines[0][0] <= now:
            _deadline, fd, token = deadlines.popleft()
            if armed.get(fd) != token:
                continue  # forgotten, or the number now belongs to a later socket
            del armed[fd]
            waiter = self._waiting.pop(fd, None)
            if waiter is not None and not waiter.done():
                waiter.set_exception(TimeoutError())
        self._timer = (
            self.loop.call_at(max(deadlines[0][0], now + self.tick), self._expire) if deadlines else None
        )


_ONE_SHOT_IN = select.EPOLLIN | select.EPOLLONESHOT


async def exchange_udp(
    sock: socket.socket,
    upstream: Upstream,
    query: bytes,
    query_id: int,
    question: bytes,
    timeout: float,
    watch: ReplyWatch | None = None,
) -> bytes:
    """Send `query` on a connected UDP socket and wait for the reply that matches it."""
    if watch is None:
        return await _exchange_udp_on_loop(sock, upstream, query, query_id, question, timeout)
    deadline = watch.loop.time() + timeout
    fd = sock.fileno()
    first = True
    with _as_upstream_error(upstream, "UDP", timeout):
        # A UDP connect only sets the peer (the kernel then drops datagrams from anyone else); done
        # directly, it also avoids the event loop's resolver thread for an address already numeric.
        sock.connect((upstream.address, upstream.port))
        sock.send(query)
        try:
            while True:
                await watch.readable(fd, first, deadline)
                first = False
                try:
                    data = sock.recv(UPSTREAM_RECEIVE_SIZE)
                except BlockingIOError:
                    continue
                if fw.matches(data, query_id, question):
                    return data
        finally:
            watch.forget(fd)


async def _exchange_udp_on_loop(
    sock: socket.socket, upstream: Upstream, query: bytes, query_id: int, question: bytes, timeout: float
) -> bytes:
    loop = asyncio.get_running_loop()
    with _as_upstream_error(upstream, "UDP", timeout):
        async with asyncio.timeout(timeout):
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
    except OSError as exc:  # TimeoutError is one
        raise upstream_error(exc, upstream, transport, timeout) from None


def upstream_error(exc: OSError, upstream: Upstream, transport: str, timeout: float) -> UpstreamError:
    """The UpstreamError (with its metrics reason) for a socket failure of one exchange."""
    if isinstance(exc, TimeoutError):
        return UpstreamError(
            "timeout", f"{upstream.address} gave no matching {transport} answer in {timeout} s"
        )
    if isinstance(exc, ConnectionRefusedError):
        return UpstreamError("refused", f"{upstream.address}:{upstream.port} refused {transport}")
    return UpstreamError("network", f"{upstream.address}: {exc.strerror or exc}")


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
    watch: ReplyWatch | None = None,
) -> bytes:
    """One attempt against one server with a fresh id and a fresh socket."""
    query_id = _query_ids.next()
    sock = await make_socket(upstream, socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM)
    with contextlib.closing(sock):
        if tcp:
            return await exchange_tcp(sock, upstream, query_for(query_id), query_id, question, timeout)
        return await exchange_udp(sock, upstream, query_for(query_id), query_id, question, timeout, watch)
