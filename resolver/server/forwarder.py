"""Forwarding driver: limits, coalescing of identical questions, failover across servers, TC retry
over TCP, and the forwarded-answer cache. Pure decisions come from `resolver.core.forward`.

Rules: in-flight forwarded queries are bounded per sandbox and in total; past a bound the client gets
SERVFAIL at once and the event is counted. Identical questions in flight (same upstream scope, name,
type, DO, transport) share one upstream query. Servers are tried in order (those marked down last);
SERVFAIL/REFUSED/NOTIMP/FORMERR or a timeout moves on to the next; all failed gives SERVFAIL.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from resolver.config import Settings
from resolver.core import forward as fw
from resolver.core.actions import Forward
from resolver.registry.model import Upstream
from resolver.server.metrics import Metrics
from resolver.server.upstream import (
    PROBE_QUESTION,
    Health,
    ReplyWatch,
    SandboxClosed,
    SocketFactory,
    UpstreamError,
    ask,
    plain_socket,
    probe_query,
)

log = logging.getLogger("resolver.forward")
MAX_PROBES = 120
"""After this many failed probes the server is tried by queries again (its sandbox may be gone)."""


async def host_socket(upstream: Upstream, kind: int) -> socket.socket:
    return plain_socket(upstream, kind)


class Forwarder:
    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        sandbox_sockets: Callable[[str], SocketFactory],
        cache: Any = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.sandbox_sockets = sandbox_sockets
        self.cache = cache
        self.health = Health()
        self._probes: set[asyncio.Future] = set()
        self.total = 0
        self.per_sandbox: Counter[str] = Counter()
        self.upstream_queries = 0
        self._inflight: dict[tuple, asyncio.Future[bytes | None]] = {}
        self._watch: ReplyWatch | None = None

    def reconfigure(self, settings: Settings) -> None:
        self.settings = settings

    def close(self) -> None:
        for probe in self._probes:
            probe.cancel()
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
        if self.per_sandbox[sandbox] >= self.settings.limits_inflight_per_sandbox:
            return "sandbox"
        return None

    async def resolve(self, forward: Forward, sandbox: str, tcp: bool) -> tuple[bytes, str]:
        """The client's reply to a forwarded query and where it came from."""
        limit = self.over_limit(sandbox)
        if limit is not None:
            self.metrics.overload[limit] += 1
            return fw.servfail(forward), "overload"
        self.total += 1
        self.per_sandbox[sandbox] += 1
        try:
            reply, relayed = await self._shared(forward, sandbox, forward.do, tcp)
            if relayed is None and reply is not None:
                relayed = fw.relay(reply, forward)
            if relayed is None:
                return fw.servfail(forward), "servfail"
            return relayed, "upstream"
        finally:
            self.total -= 1
            self.per_sandbox[sandbox] -= 1
            if not self.per_sandbox[sandbox]:
                del self.per_sandbox[sandbox]

    async def _shared(
        self, forward: Forward, sandbox: str, do: bool, tcp: bool
    ) -> tuple[bytes | None, bytes | None]:
        """Identical questions in flight share one upstream exchange: the first asker runs it, the
        others wait for its result. Returns the upstream reply and, for the first asker, the reply
        already relayed to it."""
        key = (forward.scope, forward.key, forward.qtype, do, tcp)
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending), None
        pending = self._inflight[key] = asyncio.get_running_loop().create_future()
        fetched = None
        try:
            fetched = await self._fetch(forward, sandbox, do, tcp)
        finally:
            del self._inflight[key]
            pending.set_result(None if fetched is None else fetched[0])
        return (None, None) if fetched is None else fetched

    async def _fetch(self, forward: Forward, sandbox: str, do: bool, tcp: bool) -> tuple[bytes, bytes] | None:
        candidates = self.health.order(forward.upstreams, sandbox)[
            : max(1, self.settings.upstream_max_attempts)
        ]
        for upstream in candidates:
            answered = await self._attempt(forward, sandbox, upstream, do, tcp)
            if answered is not None:
                if self.cache is not None:
                    self.cache.store(forward, answered[0], time.time())
                return answered
        return None

    async def _attempt(
        self, forward: Forward, sandbox: str, upstream: Upstream, do: bool, tcp: bool
    ) -> tuple[bytes, bytes] | None:
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
            reply = await exchange(tcp)
            if fw.verdict(reply) is fw.Verdict.TRUNCATED and not tcp:
                reply = await exchange(True)
        except UpstreamError as exc:
            self._failed(upstream, exc.reason, str(exc))
            if exc.reason == "timeout" and self.health.failed(upstream, sandbox):
                self._start_probe(upstream, sandbox, make_socket)
            return None
        except Exception as exc:  # a socket the namespace worker could not make, and the like
            self._failed(upstream, "error", repr(exc))
            return None
        if fw.verdict(reply) is fw.Verdict.TRY_NEXT:
            self._failed(upstream, f"rcode-{reply[3] & 0x0F}", "answered with an error rcode")
            return None
        relayed = fw.relay(reply, forward)
        if relayed is None:
            self._failed(upstream, "malformed", "sent a reply that cannot be relayed")
            return None
        self.health.succeeded(upstream, sandbox)
        return reply, relayed

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
