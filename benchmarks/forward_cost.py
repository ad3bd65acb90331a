"""The forwarded path alone, in one process: a client, the daemon's UDP listener, dispatcher and
forwarder, and a stub upstream that answers every name, all on one uvloop in a namespace this tool
makes. It prints CPU per forwarded query (user and system, the client's and stub's share included) and,
with --profile, the daemon functions by own time. Numbers move with the machine; for a figure that does
not, run it under callgrind and compare instruction counts of two query counts:

  valgrind --tool=callgrind .venv/bin/python -m benchmarks.forward_cost --queries 3000 --no-netns ...

(run inside `ip netns exec` of a namespace with lo up; the difference between --queries 3000 and 1500,
divided by 1500, is the instructions per forwarded query). Every query is a new name, so every one goes
upstream (the cache-miss case of `python -m benchmarks -s fwd-miss`). Run as root.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import struct
import subprocess
import sys
import time

from resolver.config import Settings
from resolver.core.cache import AnswerCache
from resolver.registry import model as m
from resolver.registry.registry import Registry
from resolver.registry.view import build_view
from resolver.server.dispatch import Dispatcher
from resolver.server.forwarder import Forwarder
from resolver.server.listeners import UdpListener
from resolver.server.metrics import Metrics
from resolver.server.site import Site
from resolver.server.upstream import SocketPool

LISTEN = ("127.0.0.11", 53)
UPSTREAM = ("127.0.0.61", 53)
ANSWER = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x01\x2c\x00\x04\xc0\x00\x02\x01"
"""One A record for the question's name: 192.0.2.1, TTL 300."""


class StubUpstream(asyncio.DatagramProtocol):
    """Answers every query with one A record, keeping the query's OPT."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.DatagramTransport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        end = data.index(b"\x00", 12) + 5
        header = data[:2] + b"\x81\x80\x00\x01\x00\x01\x00\x00" + data[10:12]
        self.transport.sendto(header + data[12:end] + ANSWER + data[end:], addr)


class Client(asyncio.DatagramProtocol):
    """Keeps `window` queries in flight, each for a name never asked before, until `total` came back."""

    def __init__(self, done: asyncio.Future[None], total: int, window: int) -> None:
        self.done, self.total, self.window = done, total, window
        self.sent = self.received = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.DatagramTransport = transport  # type: ignore[assignment]
        for _ in range(self.window):
            self._send()

    def _send(self) -> None:
        if self.sent < self.total:
            labels = (f"q{self.sent}".encode(), b"miss", b"test")
            name = b"".join(bytes([len(label)]) + label for label in labels) + b"\x00"
            self.transport.sendto(
                struct.pack("!HHHHHH", self.sent & 0xFFFF, 0x0100, 1, 0, 0, 0) + name + b"\x00\x01\x00\x01"
            )
            self.sent += 1

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received += 1
        if self.received >= self.total:
            self.done.set_result(None)
        else:
            self._send()


async def run(total: int, window: int, profile: bool) -> None:
    loop = asyncio.get_running_loop()
    registry = Registry()
    registry.apply(m.CreateNetwork("net"))
    registry.apply(m.JoinEndpoint("net", "ns1", "e1", "client", ipv4=("10.0.0.2",)))
    view = build_view(registry.state, "ns1", (UPSTREAM[0],))
    settings, metrics, cache = Settings(), Metrics(), AnswerCache(10_000, 3600)
    pool = SocketPool(None)  # type: ignore[arg-type]  # host upstreams: the pool is never asked
    forwarder = Forwarder(settings, metrics, pool.factory, cache, pool.take_nowait)
    site = Site("ns1", lambda _netns: view, None, Dispatcher(metrics, forwarder, cache), settings)  # type: ignore[arg-type]
    await loop.create_datagram_endpoint(StubUpstream, local_addr=UPSTREAM)
    await loop.create_datagram_endpoint(lambda: UdpListener(site, metrics.fast), local_addr=LISTEN)
    done: asyncio.Future[None] = loop.create_future()
    profiler = cProfile.Profile() if profile else None
    before, started = os.times(), time.perf_counter()
    if profiler is not None:
        profiler.enable()
    await loop.create_datagram_endpoint(lambda: Client(done, total, window), remote_addr=LISTEN)
    await done
    if profiler is not None:
        profiler.disable()
    after, elapsed = os.times(), time.perf_counter() - started
    user, system = (
        1e6 * (b - a) / total for a, b in ((before.user, after.user), (before.system, after.system))
    )
    print(
        f"{total / elapsed:,.0f} forwarded queries/s; CPU per query: user {user:.1f} us, "
        f"system {system:.1f} us"
    )
    forwarded = sum(n for (_t, outcome, _s, _tr), n in metrics.queries.items() if outcome == "upstream")
    print(f"forwarded and answered: {forwarded} of {total}")
    if profiler is not None:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(30)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--queries", type=int, default=30_000)
    parser.add_argument("--window", type=int, default=10, help="queries in flight")
    parser.add_argument("--profile", action="store_true", help="cProfile the run (slows it)")
    parser.add_argument("--no-netns", action="store_true", help="run where we are (already in a namespace)")
    args = parser.parse_args()
    if not args.no_netns:
        netns = f"fcost-{os.getpid()}"
        subprocess.run(["ip", "netns", "add", netns], check=True)
        try:
            subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True)
            cmd = [sys.executable, "-m", "benchmarks.forward_cost", "--no-netns", *sys.argv[1:]]
            sys.exit(subprocess.run(["ip", "netns", "exec", netns, "taskset", "-c", "0", *cmd]).returncode)
        finally:
            subprocess.run(["ip", "netns", "delete", netns], check=False)
    import uvloop

    uvloop.run(run(args.queries, args.window, args.profile))


if __name__ == "__main__":
    main()
