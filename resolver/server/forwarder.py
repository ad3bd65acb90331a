"""Forwarding driver: limits, coalescing of identical questions, failover across servers, TC retry
over TCP, and the forwarded-answer cache. Pure decisions come from `resolver.core.forward`.

Rules: in-flight forwarded queries are bounded per sandbox and in total; past a bound the client gets
SERVFAIL at once and the event is counted. Identical questions in flight (same upstream scope, name,
type, DO, transport) share one upstream query. Servers are tried in order (those marked down last);
SERVFAIL/REFUSED/NOTIMP/FORMERR or a timeout moves on to the next; all failed gives SERVFAIL.

A query that came over UDP runs on callbacks (`UdpAttempt`, no task) as long as its first server
answers it plainly; truncation, an error rcode, a timeout or a socket error hand it to the coroutine
path, which goes on from there (TCP retry, next server, probes) rather than starting over. Both paths
share the limits, the coalescing and the cache.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any

from resolver.config import Settings
from resolver.core import forward as fw
from resolver.core.actions import Forward
from resolver.registry.model import Upstream
from resolver.server.metrics import Metrics
from resolver.server.upstream import (
    PROBE_QUESTION,
    UPSTREAM_RECEIVE_SIZE,
    Health,
    ReplyWatch,
    SandboxClosed,
    SocketFactory,
    UpstreamError,
    ask,
    connect_fd,
    next_query_id,
    plain_socket,
    probe_query,
    raw_socket,
    upstream_error,
)

log = logging.getLogger("resolver.forward")
MAX_PROBES = 120
"""After this many failed probes the server is tried by queries again (its sandbox may be gone)."""


TC_BYTE = 0x02
"""TC in the third header octet."""
Deliver = Callable[[bytes, str], None]
"""Takes the client's reply to a forwarded query and its outcome label."""
Fetched = tuple[bytes, bytes]
"""A server's reply and its relayed form."""


async def host_socket(upstream: Upstream, kind: int) -> socket.socket:
    return plain_socket(upstream, kind)


def client_reply(forward: Forward, reply: bytes | None, relayed: bytes | None) -> tuple[bytes, str]:
    """What the client gets: the relayed reply, the reply relayed now, or SERVFAIL."""
    if relayed is None and reply is not None:
        relayed = fw.relay(reply, forward)
    if relayed is None:
        return fw.servfail(forward), "servfail"
    return relayed, "upstream"


class UdpAttempt:
    """The first server's exchange of a query forwarded over UDP, driven by `ReplyWatch` callbacks
    instead of a task: send, wait for the matching datagram, and either finish (the server answered)
    or hand the rest to the forwarder's coroutine path (truncation, an error rcode, a timeout, a socket
    error). The socket is a bare descriptor, used once and closed either way; the id is fresh (RFC
    5452)."""

    __slots__ = (
        "candidates",
        "deadline",
        "deliver",
        "fd",
        "finished",
        "forward",
        "forwarder",
        "future",
        "key",
        "query_id",
        "sandbox",
    )

    def __init__(
        self,
        forwarder: Forwarder,
        forward: Forward,
        sandbox: str,
        candidates: Sequence[Upstream],
        key: tuple,
        deliver: Deliver,
        fd: int,
    ) -> None:
        self.forwarder = forwarder
        self.forward = forward
        self.sandbox = sandbox
        self.candidates = candidates
        self.key = key
        self.future: asyncio.Future[bytes | None] | None = None
        self.deliver = deliver
        self.fd = fd
        self.finished = False
        self.deadline = 0.0
        self.query_id = next_query_id()

    def send(self) -> None:
        forwarder = self.forwarder
        upstream = self.candidates[0]
        forwarder.upstream_queries += 1
        try:
            connect_fd(self.fd, upstream)
            os.write(self.fd, fw.upstream_query(self.forward, self.query_id, self.forward.do))
        except OSError as exc:
            self._give_up(upstream_error(exc, upstream, "UDP", forwarder.settings.upstream_timeout), False)
            return
        watch = forwarder.watch()
        self.deadline = watch.loop.time() + forwarder.settings.upstream_timeout
        watch.wait(self.fd, self, True, self.deadline)

    def done(self) -> bool:
        return self.finished

    def shared(self) -> asyncio.Future[bytes | None]:
        """A future for an identical question that came while this one is in flight: it gets the
        upstream reply (None if every server failed)."""
        if self.future is None:
            self.future = self.forwarder.watch().loop.create_future()
        return self.future

    def set_result(self, _result: None) -> None:
        """The socket is readable."""
        try:
            data = os.read(self.fd, UPSTREAM_RECEIVE_SIZE)
        except BlockingIOError:
            data = b""
        except OSError as exc:
            self._give_up(
                upstream_error(exc, self.candidates[0], "UDP", self.forwarder.settings.upstream_timeout),
                False,
            )
            return
        forwarder = self.forwarder
        if not fw.matches(data, self.query_id, self.forward.question):
            forwarder.watch().wait(self.fd, self, False, self.deadline)
            return
        self._close()
        if data[2] & TC_BYTE:
            forwarder.hand_over(self, data, False)
            return
        relayed = forwarder.judge(self.forward, self.sandbox, self.candidates[0], data)
        if relayed is None:
            forwarder.hand_over(self, None, True)
        else:
            forwarder.answered(self, data, relayed)

    def set_exception(self, exception: BaseException) -> None:
        """The deadline passed."""
        timeout = self.forwarder.settings.upstream_timeout
        self._give_up(upstream_error(TimeoutError(), self.candidates[0], "UDP", timeout), False)

    def _give_up(self, error: UpstreamError, skip_first: bool) -> None:
        self._close()
        self.forwarder.hand_over(self, error, skip_first)

    def _close(self) -> None:
        self.finished = True
        self.forwarder.watch().forget(self.fd)
        os.close(self.fd)


class Forwarder:
    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        sandbox_sockets: Callable[[str], SocketFactory],
        cache: Any = None,
        take_socket: Callable[[str, Upstream], int | None] | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.sandbox_sockets = sandbox_sockets
        self.take_socket = take_socket
        """A ready socket descriptor made in a sandbox, or None (the callback path then steps aside)."""
        self._resumed: set[asyncio.Task[None]] = set()
        self.cache = cache
        self.health = Health()
        self._probes: set[asyncio.Future] = set()
        self.total = 0
        self.per_sandbox: dict[str, int] = {}
        self.upstream_queries = 0
        self._inflight: dict[tuple, asyncio.Future[bytes | None] | UdpAttempt] = {}
        """The exchange each question in flight waits for: a task's future, or a callback attempt
        (which makes a future only when a second asker comes)."""
        self._watch: ReplyWatch | None = None

    def reconfigure(self, settings: Settings) -> None:
        self.settings = settings

    def close(self) -> None:
        for probe in self._probes:
            probe.cancel()
        for task in self._resumed:
            task.cancel()
        if self._watch is not None:
            self._watch.close()
            self._watch = None

    def watch(self) -> ReplyWatch:
        """The reply watcher of the running loop (made on first use, closed by `close`)."""
        if self._watch is None:
            self._watch = ReplyWatch(asyncio.get_running_loop())
        return self._watch

    def forget(self, sandbox: str) -> None:
        """The sandbox left: its own servers' health goes, and so do the probes of them."""
        self.health.forget(sandbox)

    def over_limit(self, sandbox: str) -> str | None:
        if self.total >= self.settings.limits_inflight_total:
            return "total"
        if self.per_sandbox.get(sandbox, 0) >= self.settings.limits_inflight_per_sandbox:
            return "sandbox"
        return None

    def _enter(self, sandbox: str) -> None:
        self.total += 1
        self.per_sandbox[sandbox] = self.per_sandbox.get(sandbox, 0) + 1

    def _leave(self, sandbox: str) -> None:
        self.total -= 1
        left = self.per_sandbox[sandbox] - 1
        if left:
            self.per_sandbox[sandbox] = left
        else:
            del self.per_sandbox[sandbox]

    def inflight(self, sandbox: str) -> int:
        """Forwarded queries of `sandbox` not yet answered."""
        return self.per_sandbox.get(sandbox, 0)

    def _candidates(self, forward: Forward, sandbox: str) -> Sequence[Upstream]:
        ordered = self.health.order(forward.upstreams, sandbox)
        attempts = self.settings.upstream_max_attempts
        return ordered if len(ordered) <= attempts else ordered[: max(1, attempts)]

    def start_udp(self, forward: Forward, sandbox: str, deliver: Deliver) -> bool:
        """Forward a query that came over UDP on callbacks, without a task, when nothing stands in the
        way: no limit reached, no identical question in flight, a socket ready. `deliver(reply,
        outcome)` gets the client's reply. False: nothing was started, take `resolve`."""
        if self.over_limit(sandbox) is not None:
            return False
        key = (forward.scope, forward.key, forward.qtype, forward.do, False)
        if key in self._inflight:
            return False
        candidates = self._candidates(forward, sandbox)
        upstream = candidates[0]
        if upstream.from_sandbox:
            fd = self.take_socket(sandbox, upstream) if self.take_socket is not None else None
            if fd is None:
                return False
        else:
            fd = raw_socket(upstream, socket.SOCK_DGRAM)
        self._enter(sandbox)
        attempt = self._inflight[key] = UdpAttempt(self, forward, sandbox, candidates, key, deliver, fd)
        attempt.send()
        return True

    async def resolve(self, forward: Forward, sandbox: str, tcp: bool) -> tuple[bytes, str]:
        """The client's reply to a forwarded query and where it came from."""
        limit = self.over_limit(sandbox)
        if limit is not None:
            self.metrics.overload[limit] += 1
            return fw.servfail(forward), "overload"
        self._enter(sandbox)
        try:
            key = (forward.scope, forward.key, forward.qtype, forward.do, tcp)
            pending = self._inflight.get(key)
            if pending is not None:  # an identical question is in flight: share its answer
                shared = pending.shared() if isinstance(pending, UdpAttempt) else pending
                return client_reply(forward, await asyncio.shield(shared), None)
            pending = self._inflight[key] = asyncio.get_running_loop().create_future()
            fetched = None
            try:
                fetched = await self._fetch(forward, sandbox, tcp, self._candidates(forward, sandbox))
            finally:
                self._release(key, pending, fetched)
            return client_reply(forward, *(fetched or (None, None)))
        finally:
            self._leave(sandbox)

    def _release(
        self, key: tuple, pending: asyncio.Future[bytes | None] | UdpAttempt, fetched: Fetched | None
    ) -> None:
        """The leader of `key` is done: later askers start their own exchange, waiters get the reply."""
        del self._inflight[key]
        shared = pending.future if isinstance(pending, UdpAttempt) else pending
        if shared is not None:
            shared.set_result(None if fetched is None else fetched[0])

    async def resume(
        self, attempt: UdpAttempt, first: bytes | UpstreamError | None, skip_first: bool
    ) -> None:
        """Finish what a callback attempt could not: a truncated reply, a failed first server."""
        fetched = None
        failed: tuple[bytes, str] | None = None
        candidates = attempt.candidates[1:] if skip_first else attempt.candidates
        try:
            fetched = await self._fetch(attempt.forward, attempt.sandbox, False, candidates, first)
        except Exception:
            log.exception("internal error forwarding a query from %s", attempt.sandbox)
            failed = (fw.servfail(attempt.forward), "error")
        finally:
            self._release(attempt.key, attempt, fetched)
            self._leave(attempt.sandbox)
        attempt.deliver(*(failed or client_reply(attempt.forward, *(fetched or (None, None)))))

    def answered(self, attempt: UdpAttempt, reply: bytes, relayed: bytes) -> None:
        """A callback attempt's first server answered: cache, release waiters, reply."""
        if self.cache is not None:
            self.cache.store(attempt.forward, reply, time.time())
        self._release(attempt.key, attempt, (reply, relayed))
        self._leave(attempt.sandbox)
        attempt.deliver(relayed, "upstream")

    def hand_over(self, attempt: UdpAttempt, first: bytes | UpstreamError | None, skip_first: bool) -> None:
        task = asyncio.get_running_loop().create_task(self.resume(attempt, first, skip_first))
        self._resumed.add(task)
        task.add_done_callback(self._resumed.discard)

    async def _fetch(
        self,
        forward: Forward,
        sandbox: str,
        tcp: bool,
        candidates: Sequence[Upstream],
        first: bytes | UpstreamError | None = None,
    ) -> Fetched | None:
        """Try `candidates` in order; `first` is what the first one already gave (a reply or an error)."""
        for index, upstream in enumerate(candidates):
            answered = await self._attempt(
                forward, sandbox, upstream, forward.do, tcp, None if index else first
            )
            if answered is not None:
                if self.cache is not None:
                    self.cache.store(forward, answered[0], time.time())
                return answered
        return None

    async def _attempt(
        self,
        forward: Forward,
        sandbox: str,
        upstream: Upstream,
        do: bool,
        tcp: bool,
        first: bytes | UpstreamError | None = None,
    ) -> Fetched | None:
        """The reply of one server and its relayed form, or None when the server failed."""
        make_socket = self.sandbox_sockets(sandbox) if upstream.from_sandbox else host_socket

        async def exchange(over_tcp: bool) -> bytes:
            self.upstream_queries += 1
            return await ask(
                make_socket,
                upstream,
                lambda qid: fw.upstream_query(forward, qid, do),
                forward.question,
                self.settings.upstream_timeout,
                over_tcp,
                self.watch(),
            )

        try:
            if isinstance(first, UpstreamError):
                raise first
            reply = first if first is not None else await exchange(tcp)
            if fw.verdict(reply) is fw.Verdict.TRUNCATED and not tcp:
                reply = await exchange(True)
        except UpstreamError as exc:
            self.failed_exchange(upstream, sandbox, exc, make_socket)
            return None
        except Exception as exc:  # a socket the namespace worker could not make, and the like
            self._failed(upstream, "error", repr(exc))
            return None
        relayed = self.judge(forward, sandbox, upstream, reply)
        return None if relayed is None else (reply, relayed)

    def judge(self, forward: Forward, sandbox: str, upstream: Upstream, reply: bytes) -> bytes | None:
        """The client's form of a server's (not truncated) reply, or None when the server failed."""
        if fw.verdict(reply) is fw.Verdict.TRY_NEXT:
            self._failed(upstream, f"rcode-{reply[3] & 0x0F}", "answered with an error rcode")
            return None
        relayed = fw.relay(reply, forward)
        if relayed is None:
            self._failed(upstream, "malformed", "sent a reply that cannot be relayed")
            return None
        self.health.succeeded(upstream, sandbox)
        return relayed

    def failed_exchange(
        self, upstream: Upstream, sandbox: str, exc: UpstreamError, make_socket: SocketFactory | None = None
    ) -> None:
        self._failed(upstream, exc.reason, str(exc))
        if exc.reason == "timeout" and self.health.failed(upstream, sandbox):
            if make_socket is None:
                make_socket = self.sandbox_sockets(sandbox) if upstream.from_sandbox else host_socket
            self._start_probe(upstream, sandbox, make_socket)

    def _start_probe(self, upstream: Upstream, sandbox: str, make_socket: SocketFactory) -> None:
        log.warning("upstream %s timed out; skipping it until it answers a probe", upstream.address)
        probe = asyncio.ensure_future(self._probe(upstream, sandbox, make_socket))
        self._probes.add(probe)
        probe.add_done_callback(self._probes.discard)

    async def _probe(self, upstream: Upstream, sandbox: str, make_socket: SocketFactory) -> None:
        for _ in range(MAX_PROBES):
            await asyncio.sleep(self.settings.upstream_probe_interval)
            if not self.health.is_down(upstream, sandbox):
                return
            try:
                await ask(
                    make_socket,
                    upstream,
                    probe_query,
                    PROBE_QUESTION,
                    self.settings.upstream_timeout,
                    False,
                    self.watch(),
                )
            except SandboxClosed:
                self.health.forget(sandbox)  # the sandbox left: nothing to probe from any more
                return
            except Exception:
                continue
            break
        log.info("upstream %s answers again", upstream.address)
        self.health.succeeded(upstream, sandbox)

    def _failed(self, upstream: Upstream, reason: str, detail: str) -> None:
        self.metrics.upstream_errors[(upstream.address, reason)] += 1
        log.debug("upstream %s failed: %s", upstream.address, detail)
