"""Table-driven tests of the core's wire rules: drops, NOTIMP, FORMERR, REFUSED, EDNS, truncation, forwarding.

Queries are built with dnspython where they are well formed and by hand (header + question bytes) where
they are not; replies are parsed with dnspython.
"""

from __future__ import annotations

import struct

import dns.edns
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdatatype
import pytest
from dnscases import (
    BIG_TASKS,
    CLIENT,
    LONELY,
    MIXED,
    SANDBOX_UPSTREAM,
    SEALED,
    ask,
    forward_of,
    header,
    name_wire,
    query,
    question_wire,
    records,
    reply_to,
    views,
)

from resolver.core.actions import Drop, Reply
from resolver.registry.model import Upstream

VIEWS = views()
CLIENT_VIEW = VIEWS[CLIENT]
ALL_FLAGS = 0x07B0  # AA TC RD RA Z AD CD: every header flag except QR and the opcode/rcode fields
A_RR = name_wire("web") + struct.pack("!HHIH", 1, 1, 60, 4) + bytes([10, 0, 0, 1])
OPT_RR = b"\x00" + struct.pack("!HHIH", 41, 1232, 0, 0)
Q = question_wire("web")


def _parse(wire: bytes) -> dns.message.Message:
    return dns.message.from_wire(wire)


# ---- drops --------------------------------------------------------------------------------------------

DROPS = {
    "empty": b"",
    "one-byte": b"\x12",
    "eleven-bytes": header()[:11],
    "response": query("web", qid=7, flags=dns.flags.QR),
    "response-to-external": query("example.org", qid=7, flags=dns.flags.QR),
    "response-header-only": header(flags=0x8000, qd=0),
    "response-garbage": b"\x00\x01\x80" + b"\xff" * 30,
}


@pytest.mark.parametrize("wire", DROPS.values(), ids=DROPS.keys())
@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_drop(wire: bytes, transport: str) -> None:
    assert isinstance(ask(CLIENT_VIEW, wire, transport), Drop)  # type: ignore[arg-type]


# ---- NOTIMP -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("opcode", [1, 2, 3, 4, 5, 6, 15])
@pytest.mark.parametrize(
    "body",
    [Q, b"", Q + Q, Q + A_RR],
    ids=["question", "no-question", "two-questions", "with-answer"],
)
def test_unknown_opcode_is_notimp_header_only(opcode: int, body: bytes) -> None:
    qd = body.count(Q)
    an = 1 if A_RR in body else 0
    wire = header(qid=0xABCD, flags=(opcode << 11) | ALL_FLAGS, qd=qd, an=an) + body
    action = ask(CLIENT_VIEW, wire)
    assert isinstance(action, Reply)
    qid, flags, *counts = struct.unpack("!HHHHHH", action.wire)
    assert len(action.wire) == 12
    assert qid == 0xABCD
    assert flags & 0x8000, "QR set"
    assert (flags >> 11) & 0xF == opcode, "opcode kept"
    assert flags & 0xF == dns.rcode.NOTIMP
    assert flags & ALL_FLAGS == 0, "every other flag clear"
    assert counts == [0, 0, 0, 0]


# ---- FORMERR ------------------------------------------------------------------------------------------

FORMERRS = {
    "qdcount-0": header(qd=0),
    "qdcount-0-with-question": header(qd=0) + Q,
    "qdcount-2": header(qd=2) + Q + Q,
    "qdcount-2-one-question": header(qd=2) + Q,
    "ancount-1": header(an=1) + Q + A_RR,
    "nscount-1": header(ns=1) + Q + A_RR,
    "ancount-1-missing": header(an=1) + Q,
    "pointer-at-start": header() + b"\xc0\x0c\x00\x01\x00\x01",
    "pointer-after-label": header() + b"\x03web\xc0\x0c\x00\x01\x00\x01",
    "pointer-forward": header() + b"\x03web\xc0\x20\x00\x01\x00\x01" + b"\x00" * 20,
    "label-64": header() + b"\x40" + b"a" * 64 + b"\x00\x00\x01\x00\x01",
    "label-type-0x80": header() + b"\x81" + b"a" + b"\x00\x00\x01\x00\x01",
    "name-over-255": header() + b"".join(b"\x3f" + b"a" * 63 for _ in range(5)) + b"\x00\x00\x01\x00\x01",
    "no-question": header(),
    "name-cut": header() + b"\x03we",
    "name-unterminated": header() + b"\x03web",
    "no-type-class": header() + name_wire("web"),
    "no-class": header() + name_wire("web") + b"\x00\x01",
    "half-class": header() + name_wire("web") + b"\x00\x01\x00",
    "trailing-zero": query("web") + b"\x00",
    "trailing-junk": query("example.org") + b"junk",
    "arcount-1-missing": header(ar=1) + Q,
    "arcount-1-junk": header(ar=1) + Q + b"\x00\x00",
    "two-opts": header(ar=2) + Q + OPT_RR + OPT_RR,
    "opt-then-junk": header(ar=1) + Q + OPT_RR + b"\x01",
    "opt-cut": header(ar=1) + Q + OPT_RR[:7],
    "opt-rdata-overrun": header(ar=1) + Q + b"\x00" + struct.pack("!HHIH", 41, 1232, 0, 8) + b"\x00\x0a",
    "opt-option-cut": header(ar=1) + Q + b"\x00" + struct.pack("!HHIH", 41, 1232, 0, 3) + b"\x00\x0a\x00",
    "opt-option-overrun": header(ar=1) + Q + b"\x00" + struct.pack("!HHIHHH", 41, 1232, 0, 4, 10, 8),
    "opt-and-opt-after-a": header(ar=3) + Q + OPT_RR + A_RR + OPT_RR,
}


@pytest.mark.parametrize("wire", FORMERRS.values(), ids=FORMERRS.keys())
@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_formerr(wire: bytes, transport: str) -> None:
    action = ask(CLIENT_VIEW, wire, transport)  # type: ignore[arg-type]
    assert isinstance(action, Reply)
    assert action.wire[:2] == wire[:2]
    flags = struct.unpack_from("!H", action.wire, 2)[0]
    assert flags & 0x8000
    assert flags & 0xF == dns.rcode.FORMERR
    assert not flags & 0x0200, "no TC on FORMERR"
    if len(action.wire) == 12:
        assert action.wire[4:] == bytes(8)
    else:
        assert _parse(action.wire).rcode() == dns.rcode.FORMERR


# ---- REFUSED for other classes ------------------------------------------------------------------------


@pytest.mark.parametrize("rdclass", ["CH", "HS", "ANY", 254, 2, 1000])
@pytest.mark.parametrize("name", ["web.", "example.org.", "site.example.com."])
@pytest.mark.parametrize("edns", [None, 0])
def test_other_classes_are_refused(rdclass: str | int, name: str, edns: int | None) -> None:
    reply = reply_to(CLIENT_VIEW, query(name, "A", rdclass=rdclass, edns=edns))
    assert reply.rcode() == dns.rcode.REFUSED
    assert reply.flags & dns.flags.QR
    assert [str(q.name) for q in reply.question] == [name]
    assert not reply.answer
    assert reply.edns == (-1 if edns is None else 0)


# ---- EDNS ---------------------------------------------------------------------------------------------

EDNS_SUBJECTS = {
    "local": (CLIENT, "web", "A", dns.rcode.NOERROR),
    "nodata": (CLIENT, "web", "MX", dns.rcode.NOERROR),
    "nxdomain": (CLIENT, "nope.example.com", "A", dns.rcode.NXDOMAIN),
    "refused-internal": (SEALED, "example.org", "A", dns.rcode.REFUSED),
    "servfail-no-upstream": (LONELY, "example.org", "A", dns.rcode.SERVFAIL),
    "refused-class": (CLIENT, "web", "A", dns.rcode.REFUSED),
}
UNKNOWN_OPTIONS = [
    dns.edns.GenericOption(10, b"\x01\x02\x03\x04\x05\x06\x07\x08"),  # client cookie
    dns.edns.GenericOption(3, b""),  # NSID request
    dns.edns.GenericOption(12, b"\x00" * 16),  # padding
    dns.edns.GenericOption(8, b"\x00\x01\x18\x00\xc0\x00\x02"),  # client subnet
    dns.edns.GenericOption(65001, b"private"),
]


def _edns_query(subject: str, **kwargs: object) -> tuple[str, bytes, int]:
    sandbox, name, qtype, rcode = EDNS_SUBJECTS[subject]
    rdclass = "CH" if subject == "refused-class" else "IN"
    return sandbox, query(name, qtype, rdclass=rdclass, **kwargs), rcode  # type: ignore[arg-type]


@pytest.mark.parametrize("subject", EDNS_SUBJECTS)
def test_no_opt_without_edns(subject: str) -> None:
    sandbox, wire, rcode = _edns_query(subject)
    reply = reply_to(VIEWS[sandbox], wire)
    assert reply.rcode() == rcode
    assert reply.edns == -1
    assert not reply.additional


@pytest.mark.parametrize("subject", EDNS_SUBJECTS)
@pytest.mark.parametrize("do", [False, True])
@pytest.mark.parametrize("payload", [512, 1232, 4096, 65535])
def test_opt_echoed_with_1232_and_do(subject: str, do: bool, payload: int) -> None:
    sandbox, wire, rcode = _edns_query(subject, edns=0, do=do, payload=payload)
    reply = reply_to(VIEWS[sandbox], wire)
    assert reply.rcode() == rcode
    assert reply.edns == 0
    assert reply.payload == 1232
    assert bool(reply.ednsflags & dns.flags.DO) == do
    assert len(reply.options) == 0


@pytest.mark.parametrize("subject", EDNS_SUBJECTS)
@pytest.mark.parametrize("option", UNKNOWN_OPTIONS, ids=lambda o: f"option-{o.otype}")
def test_unknown_options_never_echoed(subject: str, option: dns.edns.Option) -> None:
    sandbox, wire, rcode = _edns_query(subject, edns=0, options=[option])
    reply = reply_to(VIEWS[sandbox], wire)
    assert reply.rcode() == rcode
    assert reply.edns == 0
    assert len(reply.options) == 0


def test_unknown_edns_flags_never_echoed() -> None:
    message = dns.message.make_query("web", "A", use_edns=0, ednsflags=0xFFFF, payload=1232)
    reply = reply_to(CLIENT_VIEW, message.to_wire())
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.ednsflags & 0xFFFF == dns.flags.DO, "only DO is echoed"


@pytest.mark.parametrize("version", [1, 2, 255])
@pytest.mark.parametrize("name", ["web", "example.org", "nope.example.com"])
@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_badvers(version: int, name: str, transport: str) -> None:
    reply = reply_to(CLIENT_VIEW, query(name, "A", edns=version, qid=0x4242), transport)  # type: ignore[arg-type]
    assert reply.id == 0x4242
    assert reply.rcode() == dns.rcode.BADVERS == 16
    assert reply.edns == 0
    assert reply.payload == 1232
    assert not reply.answer
    assert reply.flags & dns.flags.QR


# ---- truncation ---------------------------------------------------------------------------------------

BIG = tuple(f"10.0.3.{i}" for i in range(1, BIG_TASKS + 1))


def _addresses(reply: dns.message.Message) -> list[str]:
    return [r.split()[-1] for r in records(reply.answer)]


@pytest.mark.parametrize("name", ["big", "tasks.big", "big.backend"])
def test_udp_without_edns_is_truncated(name: str) -> None:
    action = ask(CLIENT_VIEW, query(name, "A"))
    assert isinstance(action, Reply)
    assert len(action.wire) <= 512
    reply = _parse(action.wire)
    assert reply.flags & dns.flags.TC
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.edns == -1
    assert set(_addresses(reply)) <= set(BIG)
    assert len(_addresses(reply)) < BIG_TASKS


def test_udp_with_small_edns_payload_is_truncated() -> None:
    action = ask(CLIENT_VIEW, query("big", "A", edns=0, payload=512))
    assert isinstance(action, Reply)
    assert len(action.wire) <= 512
    reply = _parse(action.wire)
    assert reply.flags & dns.flags.TC
    assert reply.edns == 0, "the OPT survives truncation"


@pytest.mark.parametrize("payload", [1232, 4096])
def test_udp_with_edns_is_whole(payload: int) -> None:
    reply = reply_to(CLIENT_VIEW, query("big", "A", edns=0, payload=payload))
    assert not reply.flags & dns.flags.TC
    assert sorted(_addresses(reply)) == sorted(BIG)


@pytest.mark.parametrize("edns", [None, 0])
@pytest.mark.parametrize("name", ["big", "tasks.big"])
def test_tcp_is_never_truncated(edns: int | None, name: str) -> None:
    wire = query(name, "A", edns=edns, payload=512)
    reply = reply_to(CLIENT_VIEW, wire, "tcp")
    assert not reply.flags & dns.flags.TC
    assert sorted(_addresses(reply)) == sorted(BIG)


def test_small_answers_are_not_truncated() -> None:
    reply = reply_to(CLIENT_VIEW, query("web", "A"))
    assert not reply.flags & dns.flags.TC


# ---- forwarding decision ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "transport", "max_size", "edns"),
    [
        ({}, "udp", 512, False),
        ({"edns": 0, "payload": 4096}, "udp", 4096, True),
        ({"edns": 0, "payload": 1232}, "udp", 1232, True),
        ({"edns": 0, "payload": 100}, "udp", 512, True),
        ({}, "tcp", 65535, False),
        ({"edns": 0, "payload": 1232}, "tcp", 65535, True),
    ],
)
def test_forward_carries_upstreams_and_client_size(
    kwargs: dict[str, int], transport: str, max_size: int, edns: bool
) -> None:
    wire = query("Example.ORG", "AAAA", qid=0x5151, **kwargs)  # type: ignore[arg-type]
    action = forward_of(CLIENT_VIEW, wire, transport)  # type: ignore[arg-type]
    assert action.upstreams == CLIENT_VIEW.upstreams == (Upstream(SANDBOX_UPSTREAM, 53, False),)
    assert action.max_size == max_size
    assert action.edns is edns
    assert action.query == wire
    assert action.qtype == dns.rdatatype.AAAA
    assert action.question == name_wire("Example.ORG") + b"\x00\x1c\x00\x01"
    assert action.key == name_wire("example.org")


@pytest.mark.parametrize("name", ["example.org", "web", "secretdb.corp.internal", "1.0.0.127.in-addr.arpa"])
@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_internal_only_sandbox_is_refused_without_ra(name: str, transport: str) -> None:
    reply = reply_to(VIEWS[SEALED], query(name, "A"), transport)  # type: ignore[arg-type]
    assert reply.rcode() == dns.rcode.REFUSED
    assert not reply.flags & dns.flags.RA
    assert not reply.answer


def test_internal_only_sandbox_still_answers_its_names() -> None:
    reply = reply_to(VIEWS[SEALED], query("sealed", "A"))
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.flags & dns.flags.AA
    assert _addresses(reply) == ["10.0.5.2"]


@pytest.mark.parametrize("edns", [None, 0])
def test_no_upstream_is_servfail(edns: int | None) -> None:
    reply = reply_to(VIEWS[LONELY], query("example.org", "A", edns=edns))
    assert reply.rcode() == dns.rcode.SERVFAIL
    assert [str(q.name) for q in reply.question] == ["example.org."]


def test_no_upstream_still_answers_local_names() -> None:
    reply = reply_to(VIEWS[LONELY], query("lonely", "A"))
    assert _addresses(reply) == ["10.0.7.2"]


def test_internal_plus_normal_network_forwards() -> None:
    view = VIEWS[MIXED]
    action = forward_of(view, query("example.org", "A"))
    assert action.upstreams == view.upstreams
    assert action.upstreams
    assert _addresses(reply_to(view, query("sealed", "A"))) == ["10.0.5.2"]
    assert _addresses(reply_to(view, query("web", "A"))) == ["10.0.1.2"]
