"""The forwarded-answer cache (pure): what is stored, for how long, and what comes back out."""

from __future__ import annotations

import dns.flags
import dns.message
import dns.rcode
import dns.rrset
import pytest

from resolver.core.actions import Forward
from resolver.core.cache import AnswerCache, cache_key


def forward_for(name: str, qtype: str = "A", scope: tuple = ("up-a",)) -> Forward:
    wire = dns.message.make_query(name, qtype).to_wire()
    question = wire[12:]
    return Forward(
        wire,
        question,
        question[:-4].lower(),
        int(dns.message.from_wire(wire).question[0].rdtype),
        (),
        512,
        False,
        False,
        scope,
    )


def upstream_reply(
    name: str,
    rcode: int = dns.rcode.NOERROR,
    answer: str | None = None,
    soa: str | None = None,
    tc: bool = False,
) -> bytes:
    reply = dns.message.make_response(dns.message.make_query(name, "A"))
    reply.set_rcode(rcode)
    if answer:
        reply.answer.append(
            dns.rrset.from_text(name, *answer.split(" ", 1)[0:1], "IN", "A", answer.split()[1])
        )
    if soa:
        reply.authority.append(
            dns.rrset.from_text("example.", int(soa.split()[0]), "IN", "SOA", soa.split(" ", 1)[1])
        )
    if tc:
        reply.flags |= dns.flags.TC
    return reply.to_wire()


def ttls(records: tuple[bytes, ...]) -> list[int]:
    """The TTL of each encoded record (owner: a pointer or uncompressed labels)."""
    out = []
    for record in records:
        offset = 0
        while record[offset] and record[offset] < 0xC0:
            offset += record[offset] + 1
        offset += 2 if record[offset] >= 0xC0 else 1
        out.append(int.from_bytes(record[offset + 4 : offset + 8], "big"))
    return out


def test_positive_answer_counts_down_and_expires() -> None:
    cache = AnswerCache(size=10, max_ttl=3600)
    fwd = forward_for("www.example.")
    assert cache.store(fwd, upstream_reply("www.example.", answer="300 192.0.2.1"), now=1000.0)
    hit = cache.get(fwd, now=1010.4)
    assert hit is not None and hit.rcode == 0 and ttls(hit.records) == [290]
    assert hit.records[0].endswith(bytes([192, 0, 2, 1]))
    assert cache.get(fwd, now=1300.1) is None


def test_ttl_handed_out_is_capped_by_max_ttl() -> None:
    cache = AnswerCache(size=10, max_ttl=100)
    fwd = forward_for("www.example.")
    cache.store(fwd, upstream_reply("www.example.", answer="86400 192.0.2.1"), now=0.0)
    assert ttls(cache.get(fwd, now=1.0).records) == [99]  # type: ignore[union-attr]
    assert cache.get(fwd, now=100.5) is None


def test_nxdomain_is_cached_for_the_soa_minimum_with_its_soa() -> None:
    cache = AnswerCache(size=10, max_ttl=3600)
    fwd = forward_for("gone.example.")
    soa = "600 ns.example. host.example. 1 3600 600 86400 60"
    assert cache.store(fwd, upstream_reply("gone.example.", dns.rcode.NXDOMAIN, soa=soa), now=0.0)
    hit = cache.get(fwd, now=10.0)
    assert hit is not None and hit.rcode == dns.rcode.NXDOMAIN and hit.records == ()
    assert ttls(hit.authority) == [50]
    assert cache.get(fwd, now=60.5) is None


@pytest.mark.parametrize(
    ("reply", "why"),
    [
        (upstream_reply("x.example.", dns.rcode.NXDOMAIN), "negative without SOA"),
        (upstream_reply("x.example.", dns.rcode.SERVFAIL), "SERVFAIL"),
        (upstream_reply("x.example.", answer="300 192.0.2.1", tc=True), "truncated"),
        (upstream_reply("x.example.", answer="0 192.0.2.1"), "TTL 0"),
        (b"\x00\x01garbage", "unparsable"),
    ],
)
def test_uncacheable_replies(reply: bytes, why: str) -> None:
    cache = AnswerCache(size=10, max_ttl=3600)
    fwd = forward_for("x.example.")
    cache.store(fwd, reply, now=0.0)
    assert cache.get(fwd, now=0.0) is None, why
    assert len(cache) == 0, "an uncacheable reply is dropped at the latest on its first lookup"
    assert cache.misses == 1


def test_least_recently_used_entry_goes_first() -> None:
    cache = AnswerCache(size=2, max_ttl=3600)
    names = ["a.example.", "b.example.", "c.example."]
    for name in names[:2]:
        assert cache.store(forward_for(name), upstream_reply(name, answer="300 192.0.2.1"), now=0.0)
    assert cache.get(forward_for("a.example."), now=1.0) is not None  # b is now the oldest
    cache.store(forward_for("c.example."), upstream_reply("c.example.", answer="300 192.0.2.1"), now=2.0)
    assert len(cache) == 2
    assert cache.get(forward_for("b.example."), now=3.0) is None
    assert cache.get(forward_for("a.example."), now=3.0) is not None
    assert cache.get(forward_for("c.example."), now=3.0) is not None


def test_a_large_reply_is_read_at_once_and_keeps_only_its_answer() -> None:
    cache = AnswerCache(size=10, max_ttl=3600)
    reply = dns.message.make_response(dns.message.make_query("big.example.", "A"))
    reply.answer.append(dns.rrset.from_text("big.example.", 300, "IN", "A", "192.0.2.1"))
    reply.additional.append(
        dns.rrset.from_text("pad.example.", 300, "IN", "TXT", *[f'"{i}{"x" * 200}"' for i in range(10)])
    )
    wire = reply.to_wire()
    assert len(wire) > 1232
    assert cache.store(forward_for("big.example."), wire, now=0.0)
    kept = cache._entries[cache_key(forward_for("big.example."))]
    assert not isinstance(kept, tuple), "a reply over the UDP payload size is not kept whole"
    truncated = bytearray(wire)
    truncated[3] = dns.rcode.NXDOMAIN  # negative and without an SOA: not cacheable, known at once
    assert not cache.store(forward_for("big.example."), bytes(truncated), now=0.0)


def test_entries_are_not_shared_across_upstream_scopes() -> None:
    cache = AnswerCache(size=10, max_ttl=3600)
    cache.store(
        forward_for("www.example.", scope=("up-a",)),
        upstream_reply("www.example.", answer="300 192.0.2.1"),
        now=0.0,
    )
    assert cache.get(forward_for("www.example.", scope=("up-b",)), now=1.0) is None
    assert cache.get(forward_for("WWW.Example.", scope=("up-a",)), now=1.0) is not None


def _sandbox_view() -> object:
    from resolver.registry import model as m
    from resolver.registry.registry import Registry
    from resolver.registry.view import build_view

    registry = Registry()
    registry.apply(m.CreateNetwork("net"))
    registry.apply(m.JoinEndpoint("net", "ns1", "e1", "client", ipv4=("10.0.0.2",)))
    return build_view(registry.state, "ns1", ("192.0.2.53",))


@pytest.mark.parametrize(
    ("name", "rcode", "answer", "soa"),
    [
        ("www.example.", dns.rcode.NOERROR, "300 192.0.2.1", None),
        ("gone.example.", dns.rcode.NXDOMAIN, None, "600 ns.example. host.example. 1 3600 600 86400 60"),
    ],
)
def test_cached_fast_path_answers_what_the_general_path_would(
    name: str, rcode: int, answer: str | None, soa: str | None
) -> None:
    from resolver.core import answer as core

    view = _sandbox_view()
    cache = AnswerCache(size=10, max_ttl=3600)
    first = dns.message.make_query(name, "A", use_edns=False).to_wire()
    action = core.respond(first, view, cache, 100.0)  # type: ignore[arg-type]
    assert isinstance(action, Forward)
    assert cache.store(action, upstream_reply(name, rcode, answer=answer, soa=soa), now=100.0)
    assert core.fast_cached_reply(first, view, 101.0) is None  # nothing served from the cache yet
    core.respond(first, view, cache, 101.0)  # type: ignore[arg-type]
    for query_id, spelling, rd, now in [(7, name.upper(), True, 101.2), (65000, name, False, 130.9)]:
        query = dns.message.make_query(spelling, "A", use_edns=False)
        query.id = query_id
        if not rd:
            query.flags &= ~dns.flags.RD
        wire = query.to_wire()
        fast = core.fast_cached_reply(wire, view, now)  # type: ignore[arg-type]
        general = core._general(wire, view, cache, now, "udp")  # type: ignore[arg-type]
        assert fast is not None and fast == general.wire  # type: ignore[union-attr]
        parsed = dns.message.from_wire(fast)
        assert parsed.id == query_id and parsed.question[0].name.to_text() == spelling
        assert parsed.rcode() == rcode and bool(parsed.flags & dns.flags.RD) == rd
    assert core.fast_cached_reply(first, view, 100.0 + 61 if soa else 100.0 + 301) is None  # type: ignore[arg-type]


def test_exact_cached_spelling_answers_what_the_general_path_would_until_the_ttls_change() -> None:
    from resolver.core import answer as core

    view = _sandbox_view()
    cache = AnswerCache(size=10, max_ttl=3600)
    name = "www.Example."
    first = dns.message.make_query(name, "A", use_edns=False).to_wire()
    action = core.respond(first, view, cache, 100.0)  # type: ignore[arg-type]
    assert isinstance(action, Forward)
    assert cache.store(action, upstream_reply(name, answer="300 192.0.2.1"), now=100.0)
    core.respond(first, view, cache, 100.5)  # type: ignore[arg-type]  # the general path serves it once
    assert core.exact_cached_reply(first, view, 100.6) is None, "nothing answered by exact spelling yet"
    assert core.fast_cached_reply(first, view, 100.6) is not None  # type: ignore[arg-type]
    other_id = b"\xbe\xef" + first[2:]
    for now in (100.6, 100.99):
        exact = core.exact_cached_reply(other_id, view, now)  # type: ignore[arg-type]
        general = core._general(other_id, view, cache, now, "udp")  # type: ignore[arg-type]
        assert exact is not None and exact == general.wire  # type: ignore[union-attr]
        assert dns.message.from_wire(exact).answer[0].ttl == 300
    assert core.exact_cached_reply(other_id, view, 101.0) is None, "the TTL counted down: not the same bytes"
    upper = first[:12] + first[12:].upper()
    assert core.exact_cached_reply(upper, view, 100.7) is None, "another spelling is another key"
    assert core.fast_cached_reply(first, view, 101.2) is not None  # type: ignore[arg-type]
    later = core.exact_cached_reply(other_id, view, 101.5)  # type: ignore[arg-type]
    assert later is not None and dns.message.from_wire(later).answer[0].ttl == 299
