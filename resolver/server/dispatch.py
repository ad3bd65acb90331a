"""Per-query driver: runs the pure core on a query, performs its action, counts and logs the outcome.

Rules: a query never raises out of here (an internal error answers SERVFAIL and is logged); a query
forwarded over UDP runs on callbacks when the forwarder can start it so (`Forwarder.start_udp`), any
other forwarded query runs as a task tracked by its site so shutdown can drain it; one debug line per
rejected or failed query, nothing per successful one.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Callable

from resolver.core import wire as w
from resolver.core.actions import Action, Drop, Forward, Reply
from resolver.core.answer import ForwardCache, Transport, respond, respond_general
from resolver.core.forward import servfail
from resolver.registry.names import key_text
from resolver.registry.view import View
from resolver.server.forwarder import Forwarder
from resolver.server.metrics import Metrics, type_name

log = logging.getLogger("resolver.query")
FAILED_OUTCOMES = frozenset(
    {
        "formerr",
        "notimp",
        "notimp-transfer",
        "refused-class",
        "refused-type",
        "refused-internal",
        "no-upstream",
        "badvers",
        "servfail",
        "overload",
        "error",
    }
)


def _qtype(wire: bytes) -> int:
    """The question's type (0 when the question cannot be read), for metrics."""
    try:
        end = w.read_name(wire, 12)
    except w.WireError:
        return 0
    return struct.unpack_from("!H", wire, end)[0] if end + 2 <= len(wire) else 0


def _question_text(wire: bytes) -> tuple[str, str]:
    """The question's name and type for a log line ("?" where they cannot be read)."""
    try:
        end = w.read_name(wire, 12)
    except w.WireError:
        return "?", "?"
    if end + 2 > len(wire):
        return key_text(wire[12:end]), "?"
    qtype = _qtype(wire)
    label = type_name(qtype)
    return key_text(wire[12:end]), f"TYPE{qtype}" if label == "other" else label


class Dispatcher:
    def __init__(
        self,
        metrics: Metrics,
        forwarder: Forwarder,
        cache: ForwardCache | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.metrics = metrics
        self.forwarder = forwarder
        self.cache = cache
        self.clock = clock

    def answer(
        self,
        wire: bytes,
        view: View,
        transport: Transport,
        send: Callable[[bytes], None],
        tasks: set,
        fast_paths_tried: bool = False,
        decided: Action | None = None,
    ) -> asyncio.Future | None:
        """Answer `wire` through `send`, now (returns None) or from a task added to `tasks` (returned).
        `fast_paths_tried`: the caller already looked for a prepared answer, go straight to the rest;
        `decided`: the caller already has the core's action for `wire`."""
        started = self.clock()
        try:
            action = decided or (respond_general if fast_paths_tried else respond)(
                wire, view, self.cache, time.time(), transport
            )
        except Exception:
            log.exception("internal error answering a query from %s", view.sandbox)
            if len(wire) >= 12:
                send(w.header_only(wire, w.query_flags(wire) & w.RD, w.SERVFAIL))
            self.metrics.count(_qtype(wire), "error", "local", transport)
            return None
        if isinstance(action, Reply):
            send(action.wire)
            self._done(
                wire,
                view,
                action.outcome,
                "cache" if action.outcome == "cache" else "local",
                transport,
                started,
            )
        elif isinstance(action, Forward):
            if transport == "udp" and self.forwarder.start_udp(
                action,
                view.sandbox,
                lambda reply, outcome: self._deliver(action, view, transport, send, started, reply, outcome),
            ):
                return None
            # create_task, not ensure_future (that one spends microseconds proving it got a coroutine);
            # get_event_loop: the fuzz targets call the listener with a loop set but not running
            task = asyncio.get_event_loop().create_task(self._forward(action, view, transport, send, started))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            return task
        else:
            self._dropped(action, view, transport)
        return None

    async def _forward(
        self, action: Forward, view: View, transport: Transport, send: Callable[[bytes], None], started: float
    ) -> None:
        try:
            reply, outcome = await self.forwarder.resolve(action, view.sandbox, transport == "tcp")
        except Exception:
            log.exception("internal error forwarding a query from %s", view.sandbox)
            reply, outcome = servfail(action), "error"
        self._deliver(action, view, transport, send, started, reply, outcome)

    def _deliver(
        self,
        action: Forward,
        view: View,
        transport: Transport,
        send: Callable[[bytes], None],
        started: float,
        reply: bytes,
        outcome: str,
    ) -> None:
        try:
            send(reply)
        except OSError as exc:
            log.debug("could not send a reply to %s: %s", view.sandbox, exc)
        self._done(action.query, view, outcome, "upstream", transport, started, action.qtype)

    def _done(
        self,
        wire: bytes,
        view: View,
        outcome: str,
        source: str,
        transport: str,
        started: float,
        qtype: int | None = None,
    ) -> None:
        self.metrics.count(_qtype(wire) if qtype is None else qtype, outcome, source, transport)
        self.metrics.observe(self.clock() - started)
        if outcome in FAILED_OUTCOMES and log.isEnabledFor(logging.DEBUG):
            name, type_text = _question_text(wire)
            log.debug(
                "query %s %s from %s answered %s",
                name,
                type_text,
                view.sandbox,
                outcome,
                extra={"sandbox": view.sandbox, "outcome": outcome, "qname": name, "qtype": type_text},
            )

    def _dropped(self, action: Drop, view: View, transport: str) -> None:
        self.metrics.count(0, "dropped", "local", transport)
        log.debug("query from %s dropped: %s", view.sandbox, action.reason, extra={"sandbox": view.sandbox})
