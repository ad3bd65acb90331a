"""Relaying upstream replies: NXDOMAIN with its SOA reaches the client intact; a truncated UDP reply is
retried over TCP by the daemon so the client gets the whole answer; TCP clients are forwarded over TCP;
a reply larger than 512 bytes without EDNS is accepted and truncated only for the client's limit."""

from __future__ import annotations

from collections.abc import Callable

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from .conftest import Daemon
from .helpers import (
    Client,
    Handler,
    ScriptedUpstream,
    Send,
    a_reply,
    answer_with,
    nxdomain_reply,
    response,
    soa_rrset,
)

pytestmark = pytest.mark.netns

MANY = [f"10.20.{i // 250}.{i % 250 + 1}" for i in range(60)]
TWENTY = MANY[:20]


def test_nxdomain_with_soa_reaches_the_client_intact(
    behind_scripted: Callable[[Handler], tuple[ScriptedUpstream, Daemon, str]],
) -> None:
    def handle(query: dns.message.Message, _transport: str) -> list[Send]:
        return [Send(nxdomain_reply(query, "example.test.", ttl=600, minimum=60))]

    upstream, _daemon, netns = behind_scripted(handle)

    with Client(netns) as client:
        answer = client.ask("Missing.Example.test")
    message = answer.message
    assert message.rcode() == dns.rcode.NXDOMAIN
    assert message.answer == []
    assert message.authority == [soa_rrset("example.test.", 600, 60)]
    assert message.authority[0].ttl == 600
    assert str(message.question[0].name) == "Missing.Example.test."
    assert message.flags & dns.flags.QR and message.flags & dns.flags.RA
    assert upstream.count() == 1


def test_truncated_udp_reply_becomes_a_whole_answer(
    behind_scripted: Callable[[Handler], tuple[ScriptedUpstream, Daemon, str]],
) -> None:
    def handle(query: dns.message.Message, transport: str) -> list[Send]:
        if transport == "udp":
            truncated = response(query)
            truncated.flags |= dns.flags.TC
            return [Send(truncated.to_wire())]
        return [Send(a_reply(query, TWENTY))]

    upstream, _daemon, netns = behind_scripted(handle)

    with Client(netns) as client:
        answer = client.ask("big.test")  # UDP, no EDNS: 512 bytes is enough for 20 A records
    assert answer.rcode == dns.rcode.NOERROR
    assert not answer.message.flags & dns.flags.TC
    assert sorted(answer.addresses()) == sorted(TWENTY)
    assert len(answer.addresses()) == 20
    assert (upstream.count("udp"), upstream.count("tcp")) == (1, 1)


def test_tcp_client_is_forwarded_over_tcp(
    behind_scripted: Callable[[Handler], tuple[ScriptedUpstream, Daemon, str]],
) -> None:
    upstream, _daemon, netns = behind_scripted(answer_with(["1.2.3.4"]))

    with Client(netns) as client:
        answer = client.ask("tcp.test", tcp=True)
    assert (answer.rcode, answer.addresses()) == (dns.rcode.NOERROR, ["1.2.3.4"])
    assert (upstream.count("udp"), upstream.count("tcp")) == (0, 1)


def test_large_reply_without_edns_is_truncated_only_for_the_client(
    behind_scripted: Callable[[Handler], tuple[ScriptedUpstream, Daemon, str]],
) -> None:
    def handle(query: dns.message.Message, _transport: str) -> list[Send]:
        reply = response(query)
        reply.use_edns(False)  # a plain DNS server: no OPT, and a reply over 512 bytes anyway
        reply.answer.append(dns.rrset.from_text(query.question[0].name, 300, "IN", "A", *MANY))
        wire = reply.to_wire()
        assert len(wire) > 512
        return [Send(wire)]

    upstream, _daemon, netns = behind_scripted(handle)

    with Client(netns) as client:
        with_edns = client.ask("large-edns.test", edns=True)
        plain = client.ask("large-plain.test")
    assert with_edns.rcode == dns.rcode.NOERROR
    assert not with_edns.message.flags & dns.flags.TC
    assert sorted(with_edns.addresses()) == sorted(MANY)

    assert plain.message.flags & dns.flags.TC
    assert len(plain.wire) <= 512
    assert len(plain.addresses()) < len(MANY)
    assert set(plain.addresses()) <= set(MANY)
    assert (upstream.count("udp"), upstream.count("tcp")) == (2, 0)
