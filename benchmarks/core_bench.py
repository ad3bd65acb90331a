"""Micro-benchmark of the answering core alone (no sockets): local-answer queries per second on one
core, through the fast path and through the general path (plain and EDNS queries), plus dnslib's
parse-and-pack as the reference point of "a general DNS library per query".

Run: .venv/bin/python -m benchmarks.core_bench [--endpoints 1000] [--seconds 2]
"""

from __future__ import annotations

import argparse
import os
import random
import time
from collections.abc import Callable

import dns.message
import dnslib

from resolver.core import answer
from resolver.registry import model as m
from resolver.registry.registry import Registry
from resolver.registry.view import build_view


def build(endpoints: int) -> tuple[object, list[bytes]]:
    registry = Registry()
    registry.apply(m.CreateNetwork("bench", domain="bench.test"))
    for i in range(endpoints):
        registry.apply(
            m.JoinEndpoint(
                "bench",
                f"ns{i}",
                f"{i:012x}ab",
                f"host{i}",
                ipv4=(f"10.{i // 65536}.{i // 250 % 256}.{i % 250 + 1}",),
            )
        )
    view = build_view(registry.state, "ns0", ("192.0.2.1",))
    rng = random.Random(7)
    names = [f"host{rng.randrange(endpoints)}" for _ in range(2000)]
    queries = [dns.message.make_query(n, rng.choice(("A", "AAAA")), use_edns=False).to_wire() for n in names]
    return view, queries


def rate(label: str, fn: Callable[[bytes], object], queries: list[bytes], seconds: float) -> float:
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for q in queries:
            fn(q)
        done += len(queries)
    per_second = done / (time.perf_counter() - start)
    print(f"{label:<42} {per_second:>12,.0f} queries/s  {1e6 / per_second:7.2f} us/query")
    return per_second


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--endpoints", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {0})
    view, queries = build(args.endpoints)
    edns = [
        dns.message.make_query(dns.message.from_wire(q).question[0].name, "A", use_edns=0).to_wire()
        for q in queries
    ]
    for q in queries:  # prepare the entries once, as the first query for each name does
        answer.respond(q, view, None, 0.0)
    table = view.table
    print(f"answering core, {args.endpoints} endpoints, one core, {args.seconds:.0f} s per line")
    fast = rate(
        "fast path (plain A/AAAA, prepared)", lambda q: answer.fast_reply(q, table), queries, args.seconds
    )
    general = rate(
        "general path (same plain queries)",
        lambda q: answer._general(q, view, None, 0.0, "udp"),
        queries,
        args.seconds,
    )
    general_edns = rate(
        "general path (EDNS queries)",
        lambda q: answer.respond(q, view, None, 0.0),
        edns,
        args.seconds,
    )

    def dnslib_round_trip(q: bytes) -> bytes:
        request = dnslib.DNSRecord.parse(q)
        reply = request.reply()
        reply.add_answer(dnslib.RR(request.q.qname, dnslib.QTYPE.A, rdata=dnslib.A("10.0.0.1"), ttl=5))
        return reply.pack()

    reference = rate("reference: dnslib parse+pack per query", dnslib_round_trip, queries, args.seconds)
    print(
        f"ratios: fast/general {fast / general:.1f}x, fast/dnslib {fast / reference:.1f}x, "
        f"general/dnslib {general / reference:.1f}x, edns-general/dnslib {general_edns / reference:.1f}x"
    )


if __name__ == "__main__":
    main()
