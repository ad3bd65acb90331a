"""Pure forwarding rules: matching an upstream reply to the outstanding query, classifying it, and
relaying it as the client's (byte-level splice, rebuild fallback, malformed replies refused)."""

from __future__ import annotations

import struct

import dns.flags
import dns.message
import dns.rcode
import dns.rrset
import pytest

from resolver.core import forward as fw
from resolver.core.actions import Forward

QUERY = dns.message.make_query("WwW.Example.com", "A", use_edns=False).to_wire()


def forward(max_size: int = 512, edns: bool = False) -> Forward:
    question = QUERY[12:]
    return Forward(QUERY, question, question[:-4].lower(), 1, (), max_size, edns, False, ())


def upstream_reply(query_id: int, count: int = 2, rcode: int = dns.rcode.NOERROR, edns: bool = True) -> bytes:
    query = dns.message.make_query("www.example.com", "A", use_edns=0 if edns else False)
    query.id = query_id
    reply = dns.message.make_response(query)
    reply.set_rcode(rcode)
    addresses = [f"192.0.2.{i + 1}" for i in range(count)]
    if addresses:
        reply.answer.append(dns.rrset.from_text("www.example.com.", 300, "IN", "A", *addresses))
    return reply.to_wire()


@pytest.mark.parametrize(
    ("mutate", "accepted"),
    [
        (lambda r: r, True),
        (lambda r: struct.pack("!H", 0x4321) + r[2:], False),  # another id
        (lambda r: r[:2] + bytes([r[2] & 0x7F]) + r[3:], False),  # not a response
        (lambda r: r[:2] + bytes([r[2] | 0x28]) + r[3:], False),  # opcode 5
        (lambda r: r[:12] + r[12:].replace(b"\x07example", b"\x07exampla", 1), False),  # another name
        (lambda r: r.replace(b"\x00\x00\x01\x00\x01", b"\x00\x00\x1c\x00\x01", 1), False),  # another type
        (lambda r: r[:12] + r[12:].upper(), True),  # the question in other letter case
        (lambda r: r[:11], False),  # cut short
    ],
)
def test_matches_only_the_outstanding_question(mutate, accepted: bool) -> None:  # type: ignore[no-untyped-def]
    assert fw.matches(mutate(upstream_reply(0x1234)), 0x1234, forward().question) is accepted


def test_verdicts() -> None:
    assert fw.verdict(upstream_reply(1)) is fw.Verdict.ANSWER
    assert fw.verdict(upstream_reply(1, 0, dns.rcode.NXDOMAIN)) is fw.Verdict.ANSWER
    for rcode in (dns.rcode.SERVFAIL, dns.rcode.REFUSED, dns.rcode.NOTIMP, dns.rcode.FORMERR):
        assert fw.verdict(upstream_reply(1, 0, rcode)) is fw.Verdict.TRY_NEXT
    truncated = bytearray(upstream_reply(1))
    truncated[2] |= 0x02
    assert fw.verdict(bytes(truncated)) is fw.Verdict.TRUNCATED


@pytest.mark.parametrize("edns", [False, True])
def test_relay_gives_the_client_its_id_spelling_and_edns(edns: bool) -> None:
    relayed = fw.relay(upstream_reply(0x1234), forward(edns=edns))
    assert relayed is not None
    message = dns.message.from_wire(relayed)
    assert message.id == dns.message.from_wire(QUERY).id
    assert message.question[0].name.to_text() == "WwW.Example.com."
    assert sorted(rr.address for rr in message.answer[0]) == ["192.0.2.1", "192.0.2.2"]
    assert (message.edns >= 0) is edns and message.flags & dns.flags.RA and not message.flags & dns.flags.AA


def test_splice_and_rebuild_agree() -> None:
    reply = upstream_reply(0x1234)
    spliced = fw._splice(reply, forward())
    assert spliced is not None
    rebuilt = fw._rebuild(reply, forward())

    def records(wire: bytes) -> list[str]:
        """Every line of the message but the id, in a fixed order (rdata order within a set is free)."""
        return sorted(dns.message.from_wire(wire).to_text().splitlines()[1:])

    assert records(spliced) == records(rebuilt)


def test_a_reply_too_big_for_the_client_is_truncated_with_tc() -> None:
    relayed = fw.relay(upstream_reply(0x1234, count=60), forward(max_size=512))
    assert relayed is not None and len(relayed) <= 512
    assert dns.message.from_wire(relayed).flags & dns.flags.TC


def test_a_malformed_reply_is_not_relayed() -> None:
    reply = bytearray(upstream_reply(0x1234, count=60, edns=False))
    reply[-6:-4] = b"\x00\x03"  # the last A record claims 3 bytes of data: not an address
    assert fw.matches(bytes(reply), 0x1234, forward().question)
    assert fw.relay(bytes(reply), forward(max_size=512)) is None
