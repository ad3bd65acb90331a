"""The forwarded-answer cache (pure): what is stored, for how long, and what comes back out."""

from __future__ import annotations

import dns.flags
import dns.message
import dns.rcode
import dns.rrset
import pytest

from resolver.core.actions import Forward
from resolver.core.cache import AnswerCache


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
    assert not cache.store(fwd, reply, now=0.0), why
    assert cache.get(fwd, now=0.0) is None


def test_entries_are_not_shared_across_upstream_scopes() -> None:
    cache = AnswerCache(size=10, max_ttl=3600)
    cache.store(
        forward_for("www.example.", scope=("up-a",)),
        upstream_reply("www.example.", answer="300 192.0.2.1"),
        now=0.0,
    )
    assert cache.get(forward_for("www.example.", scope=("up-b",)), now=1.0) is None
    assert cache.get(forward_for("WWW.Example.", scope=("up-a",)), now=1.0) is not None
