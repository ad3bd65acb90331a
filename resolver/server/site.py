"""A site: one sandbox's listening sockets served on the loop (the aiohttp Site idea).

Rules: a site serves from the moment `start` returns; `view` is swapped whole when the registry
changes, lazily: a change only makes the site forget its view, and the next query builds the new one
(so a join costs the same whatever the number of sandboxes); `close` stops accepting, lets in-flight
queries finish up to a timeout, and closes the sockets (an open socket keeps a deleted namespace alive).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable
from dataclasses import dataclass, field

from resolver.config import Settings
from resolver.nsinject.netns import Listeners
from resolver.registry.view import View
from resolver.server.dispatch import Dispatcher
from resolver.server.listeners import UdpListener, serve_tcp
from resolver.server.metrics import FastCounts

DRAIN_POLL = 0.01


@dataclass(eq=False)
class Site:
    sandbox: str
    current_view: Callable[[str], View]
    """Builds this sandbox's view from the registry; called when `view` was forgotten."""
    listeners: Listeners
    dispatcher: Dispatcher
    settings: Settings
    tasks: set[asyncio.Future] = field(default_factory=set)
    tcp_connections: int = 0
    udp_transport: asyncio.DatagramTransport | None = None
    tcp_server: asyncio.base_events.Server | None = None

    @functools.cached_property
    def view(self) -> View:
        """The sandbox's view, built on first use after `forget_view`. Once built it is a plain
        instance attribute, so the hot path reads it at the cost of a dict lookup."""
        return self.current_view(self.sandbox)

    def forget_view(self) -> None:
        self.__dict__.pop("view", None)

    def holds_view_of(self, networks: set[str]) -> bool:
        """Whether the view it holds (if any) shows one of `networks`."""
        view = self.__dict__.get("view")
        return view is not None and not networks.isdisjoint(view.table.networks)

    async def start(self, fast_counts: FastCounts) -> None:
        loop = asyncio.get_running_loop()
        self.udp_transport, _ = await loop.create_datagram_endpoint(
            lambda: UdpListener(self, fast_counts), sock=self.listeners.udp
        )
        self.tcp_server = await asyncio.start_server(
            lambda r, w: serve_tcp(self, r, w), sock=self.listeners.tcp
        )

    async def close(self, drain_timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain_timeout
        if self.tcp_server is not None:
            self.tcp_server.close()
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=drain_timeout)
        forwarder = self.dispatcher.forwarder
        while forwarder.inflight(self.sandbox) and loop.time() < deadline:
            await asyncio.sleep(DRAIN_POLL)  # forwarded queries on callbacks have no task to wait for
        if self.udp_transport is not None:
            self.udp_transport.close()
        if self.tcp_server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.tcp_server.wait_closed(), drain_timeout)
        self.listeners.close()

    @property
    def port(self) -> int:
        return self.listeners.port
