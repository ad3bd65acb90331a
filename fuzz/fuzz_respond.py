"""Coverage-guided fuzzing of the answering core (atheris): arbitrary datagrams, over UDP and TCP, against
views with local names, a domain, services and SRV, an internal-only view and a view with a warm cache.
The core must never raise; every Reply must carry the query's id with QR set.

Run (not part of the test suite):  .venv/bin/pip install atheris
  .venv/bin/python fuzz/fuzz_respond.py -max_total_time=300 -max_len=1024 fuzz/corpus
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    import dns.message
    import dns.rrset

    from resolver.core.actions import Forward, Reply
    from resolver.core.answer import respond
    from resolver.core.cache import AnswerCache
    from resolver.registry import model as m
    from resolver.registry.registry import Registry
    from resolver.registry.view import build_view


def _views() -> tuple[list, AnswerCache]:
    registry = Registry()
    registry.apply(m.CreateNetwork("front", domain="corp.test"))
    registry.apply(m.CreateNetwork("vault", internal=True))
    registry.apply(m.CreateService("front", "api", ("10.1.0.100",)))
    for i in range(4):
        registry.apply(
            m.JoinEndpoint(
                "front",
                f"ns{i}",
                f"{i:012x}ab",
                f"web{i}",
                aliases=("www",),
                ipv4=(f"10.1.0.{i + 2}",),
                ipv6=(f"fd00::{i + 2}",),
                service="api",
                ports=("http:tcp:80",),
            )
        )
    registry.apply(m.JoinEndpoint("vault", "nsv", "v1", "secret", ipv4=("10.9.0.2",)))
    cache = AnswerCache(100, 3600)
    views = [build_view(registry.state, "ns0", ("192.0.2.53",)), build_view(registry.state, "nsv", ())]
    query = dns.message.make_query("cached.example", "A")
    action = respond(query.to_wire(), views[0], cache, 0.0)
    assert isinstance(action, Forward)
    reply = dns.message.make_response(query)
    reply.answer.append(dns.rrset.from_text("cached.example.", 300, "IN", "A", "192.0.2.7"))
    cache.store(action, reply.to_wire(), 0.0)
    return views, cache


VIEWS, CACHE = _views()


def test_one(data: bytes) -> None:
    for view in VIEWS:
        for transport in ("udp", "tcp"):
            action = respond(data, view, CACHE, 1.0, transport)  # type: ignore[arg-type]
            if isinstance(action, Reply):
                assert action.wire[:2] == data[:2] and action.wire[2] & 0x80, (
                    "reply without the query id or QR"
                )
                if transport == "udp":
                    assert len(action.wire) <= 65535


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one)
    atheris.Fuzz()
