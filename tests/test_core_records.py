"""Reading upstream replies by offset (`resolver.core.records`): the same records dnspython reads, for
any reply dnspython builds, and the right refusal for the replies it must not take apart."""

from __future__ import annotations

import struct

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resolver.core import wire as w
from resolver.core.cache import read_with_dnspython
from resolver.core.records import RRset, Unsupported, read_name, read_reply

QNAME = "www.Example.test."
OWNERS = ["www.example.test.", "WWW.EXAMPLE.TEST.", "cdn.example.test.", "a.b.example.test.", "example.test."]
TARGETS = ["cdn.example.test.", "Mail.Example.Test.", "x.other.", "example.test.", "."]
RDATA_TEXT = {
    "A": ["192.0.2.1", "192.0.2.2", "198.51.100.7"],
    "AAAA": ["2001:db8::1", "2001:db8::2"],
    "CNAME": TARGETS,
    "NS": TARGETS,
    "PTR": TARGETS,
    "DNAME": TARGETS,
    "MX": [f"{p} {t}" for p in (0, 10, 65535) for t in TARGETS],
    "SRV": [f"1 2 {port} {t}" for port in (53, 443) for t in TARGETS],
    "SOA": [
        f"{m} {r} 7 3600 600 86400 {mini}" for m in TARGETS[:2] for r in TARGETS[2:] for mini in (30, 300)
    ],
    "TXT": ['"hello"', '"a" "b c"', '""'],
    "RP": [f"{a} {b}" for a in TARGETS[:2] for b in TARGETS[2:]],
    "AFSDB": [f"1 {t}" for t in TARGETS],
    "CAA": ['0 issue "ca.example"'],
    "HINFO": ['"cpu" "os"'],
    "TYPE4000": [r"\# 3 010203", r"\# 0"],
}


def reply_with(sections: list[list[tuple[str, str, int, str]]], rcode: int = 0, edns: bool = True) -> bytes:
    query = dns.message.make_query(QNAME, "A", use_edns=0 if edns else None)
    reply = dns.message.make_response(query)
    reply.set_rcode(rcode)
    for section, records in zip((reply.answer, reply.authority, reply.additional), sections, strict=False):
        for owner, rtype, ttl, text in records:
            section.append(dns.rrset.from_text(owner, ttl, "IN", rtype, text))
    return reply.to_wire()


record = st.sampled_from(sorted(RDATA_TEXT)).flatmap(
    lambda rtype: st.tuples(
        st.sampled_from(OWNERS), st.just(rtype), st.integers(0, 2**31 - 1), st.sampled_from(RDATA_TEXT[rtype])
    )
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sections=st.lists(st.lists(record, max_size=6), min_size=1, max_size=3),
    rcode=st.sampled_from([dns.rcode.NOERROR, dns.rcode.NXDOMAIN, dns.rcode.SERVFAIL]),
    edns=st.booleans(),
)
def test_reads_what_dnspython_reads(
    sections: list[list[tuple[str, str, int, str]]], rcode: int, edns: bool
) -> None:
    """Compressed owners and RDATA names, case variants of one owner, repeated records, differing TTLs
    within an RRset, additional records and OPT: the records, grouped, deduplicated and decompressed,
    equal those of dnspython's parse."""
    reply = reply_with(sections, rcode, edns)
    assert read_reply(reply) == read_with_dnspython(reply)


def test_groups_case_variants_and_keeps_the_smallest_ttl() -> None:
    reply = reply_with(
        [
            [
                ("www.example.test.", "A", 300, "192.0.2.1"),
                ("cdn.example.test.", "A", 60, "192.0.2.9"),
                ("WWW.example.test.", "A", 30, "192.0.2.2"),
                ("www.example.test.", "A", 600, "192.0.2.1"),
            ]
        ]
    )
    records = read_reply(reply)
    # dnspython compresses case-insensitively: every www owner is a pointer to the question's spelling
    assert [(r.owner, r.ttl, len(r.rdatas)) for r in records.answer] == [
        (b"\x03www\x07Example\x04test\x00", 30, 2),
        (b"\x03cdn\x07Example\x04test\x00", 60, 1),
    ]
    assert records.qname == b"\x03www\x07Example\x04test\x00"


def test_names_inside_rdata_come_out_uncompressed() -> None:
    reply = reply_with([[("www.example.test.", "MX", 60, "10 mail.example.test.")]])
    assert b"\xc0" in reply[reply.index(b"\x00\x0f\x00\x01") :], "dnspython compressed the exchange"
    (mx,) = read_reply(reply).answer
    assert mx.rdatas == (b"\x00\x0a\x04mail\x07Example\x04test\x00",)


def _answer_only(record: bytes, ancount: int = 1, tail: bytes = b"") -> bytes:
    question = w.encode_name("a.test") + b"\x00\x01\x00\x01"
    return struct.pack("!HHHHHH", 1, 0x8180, 1, ancount, 0, 0) + question + record + tail


A_HEAD = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c"

MALFORMED = {
    "pointer forwards": _answer_only(b"\xc0\x40" + A_HEAD[2:] + b"\x00\x04\x01\x02\x03\x04"),
    "pointer to itself": _answer_only(b"\xc0\x18" + A_HEAD[2:] + b"\x00\x04\x01\x02\x03\x04"),
    "A of 3 octets": _answer_only(A_HEAD + b"\x00\x03\x01\x02\x03"),
    "AAAA of 4 octets": _answer_only(b"\xc0\x0c\x00\x1c\x00\x01\x00\x00\x00\x3c\x00\x04\x01\x02\x03\x04"),
    "rdata past the end": _answer_only(A_HEAD + b"\x00\x08\x01\x02\x03\x04"),
    "record header cut short": _answer_only(A_HEAD[:6]),
    "missing record": _answer_only(A_HEAD + b"\x00\x04\x01\x02\x03\x04", ancount=2),
    "CNAME longer than its name": _answer_only(
        b"\xc0\x0c\x00\x05\x00\x01\x00\x00\x00\x3c\x00\x04\x01x\x00\x00"
    ),
    "MX cut inside its name": _answer_only(b"\xc0\x0c\x00\x0f\x00\x01\x00\x00\x00\x3c\x00\x04\x00\x0a\x05ab"),
    "reserved label type": _answer_only(b"\x80" + A_HEAD[2:] + b"\x00\x04\x01\x02\x03\x04"),
    "header cut short": b"\x00\x01\x81\x80\x00\x01",
}


@pytest.mark.parametrize("reply", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_replies_are_refused(reply: bytes) -> None:
    with pytest.raises(w.WireError):
        read_reply(reply)
    assert read_with_dnspython(reply) is None, "dnspython refuses it too"


def test_a_name_over_255_octets_is_refused() -> None:
    long_owner = b"".join(b"\x3f" + b"a" * 63 for _ in range(4)) + b"\x00"
    with pytest.raises(w.WireError):
        read_name(long_owner, 0)


def test_pointer_chain_is_followed_backwards() -> None:
    message = b"\x01a\x00" + b"\x01b\xc0\x00" + b"\x01c\xc0\x03"
    assert read_name(message, 7) == (b"\x01c\x01b\x01a\x00", 11)


UNSUPPORTED = {
    "NAPTR": reply_with(
        [[("www.example.test.", "NAPTR", 60, '1 1 "s" "SIP+D2U" "" _sip._udp.example.test.')]]
    ),
    "two questions": struct.pack("!HHHHHH", 1, 0x8180, 2, 0, 0, 0)
    + (w.encode_name("a.test") + b"\x00\x01\x00\x01") * 2,
    "OPT in the answer section": _answer_only(b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00"),
}


def test_extended_rcode_and_tsig_are_left_to_dnspython() -> None:
    base = reply_with([[("www.example.test.", "A", 60, "192.0.2.1")]], edns=False)
    header = bytearray(base[:12])
    header[11] = 1  # one additional record
    opt_bad_vers = b"\x00\x00\x29\x04\xd0\x01\x00\x00\x00\x00\x00"  # extended rcode 1 (BADVERS)
    with pytest.raises(Unsupported):
        read_reply(bytes(header) + base[12:] + opt_bad_vers)
    tsig = b"\x00\x00\xfa\x00\xff\x00\x00\x00\x00\x00\x00"
    with pytest.raises(Unsupported):
        read_reply(bytes(header) + base[12:] + tsig)


@pytest.mark.parametrize("reply", UNSUPPORTED.values(), ids=UNSUPPORTED.keys())
def test_what_is_not_read_by_offset_is_unsupported(reply: bytes) -> None:
    with pytest.raises(Unsupported):
        read_reply(reply)


def test_ttl_with_the_top_bit_counts_as_zero() -> None:
    reply = _answer_only(b"\xc0\x0c\x00\x01\x00\x01\x80\x00\x00\x01\x00\x04\x01\x02\x03\x04")
    (rrset,) = read_reply(reply).answer
    assert rrset == RRset(w.encode_name("a.test"), 1, 1, 0, (b"\x01\x02\x03\x04",))
    assert read_reply(reply) == read_with_dnspython(reply)
