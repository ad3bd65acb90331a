"""Reading the records of an upstream reply by offset, for the answer cache (pure, no dnspython).

Rules: this reads what the cache keeps - the question name, the answer records grouped into RRsets, and
the authority section's SOA - with the meaning `dns.message.from_wire` gives them, at a fraction of its
cost. Records of one RRset (same owner case-insensitively, type, class, and covered type for RRSIG) are
grouped in order of first appearance, an identical record twice counts once (a CNAME, SOA, DNAME or
NSEC RRset keeps only the last), and the RRset's TTL is
the smallest of its records' (one with the top bit set counts as 0, RFC 2181). Additional records are
checked like the others and then dropped. Owner names and the domain names inside the RDATA of the
types that RFC 1035 and RFC 3597 section 4 allow to be compressed come out uncompressed, so a record
can be copied into any other message. A reply that this reader cannot take apart exactly - an RDATA
type whose compressed names it does not know the layout of (NAPTR, SIG, NXT), a TSIG, an OPT anywhere
but the additional section, more than one OPT, an extended rcode, not exactly one question - gives
`Unsupported`: the caller falls back to dnspython. A malformed reply (a pointer that does not point
backwards, a name over 255 octets, an RDATA that is not exactly the length its type needs, records
past the end) gives WireError.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from resolver.core import wire as w

TSIG, RRSIG = 250, 46
_COMPRESSED_UNKNOWN = frozenset({24, 30, 35})
"""SIG, NXT and NAPTR may carry compressed names (RFC 3597 section 4) in layouts not read here."""

_NAME = -1
_LAYOUTS: dict[int, tuple[int, ...]] = {
    **dict.fromkeys((2, 3, 4, 5, 7, 8, 9, 12, 39), (_NAME,)),  # NS MD MF CNAME MB MG MR PTR DNAME
    6: (_NAME, _NAME, 20),  # SOA
    14: (_NAME, _NAME),  # MINFO
    17: (_NAME, _NAME),  # RP
    15: (2, _NAME),  # MX
    18: (2, _NAME),  # AFSDB
    21: (2, _NAME),  # RT
    36: (2, _NAME),  # KX
    26: (2, _NAME, _NAME),  # PX
    33: (6, _NAME),  # SRV
}
"""RDATA made of domain names (`_NAME`) and fixed-size fields (octet counts), in order."""
_FIXED_SIZE = {w.A: 4, w.AAAA: 16}
_SINGLETONS = frozenset({5, 6, 30, 39, 47})
"""CNAME, SOA, NXT, DNAME, NSEC: an RRset holds one; a later record replaces the earlier."""


class Unsupported(Exception):
    """Valid, perhaps, but not something this reader takes apart; parse it with dnspython."""


@dataclass(frozen=True, slots=True)
class RRset:
    """One RRset: owner (uncompressed wire, as first spelt), type, class, TTL, and each RDATA once."""

    owner: bytes
    rtype: int
    rclass: int
    ttl: int
    rdatas: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class ReplyRecords:
    """What the cache keeps of a reply: its flags and rcode, question name, answer and authority."""

    flags: int
    rcode: int
    qname: bytes
    answer: tuple[RRset, ...]
    authority: tuple[RRset, ...]


def read_name(message: bytes, offset: int) -> tuple[bytes, int]:
    """The name at `offset` uncompressed, and the offset after it in the record. Every pointer must
    point before the one that follows it, so a loop cannot exist."""
    size = len(message)
    labels: list[bytes] = []
    length_total = 1
    end = -1
    limit = offset
    while True:
        if offset >= size:
            raise w.WireError("name runs past the end of the message")
        length = message[offset]
        if length == 0:
            offset += 1
            break
        if length & 0xC0 == 0xC0:
            if offset + 2 > size:
                raise w.WireError("compression pointer cut short")
            target = ((length & 0x3F) << 8) | message[offset + 1]
            if target >= limit:
                raise w.WireError("compression pointer does not point backwards")
            if end < 0:
                end = offset + 2
            offset = limit = target
            continue
        if length > 63:
            raise w.WireError("reserved label type")
        label = message[offset : offset + length + 1]
        if len(label) != length + 1:
            raise w.WireError("label runs past the end of the message")
        length_total += length + 1
        if length_total > w.MAX_NAME:
            raise w.WireError("name longer than 255 octets")
        labels.append(label)
        offset += length + 1
    return b"".join(labels) + b"\x00", offset if end < 0 else end


def _rdata(message: bytes, offset: int, rdlen: int, rtype: int) -> bytes:
    end = offset + rdlen
    layout = _LAYOUTS.get(rtype)
    if layout is None:
        if rtype in _COMPRESSED_UNKNOWN:
            raise Unsupported(f"RDATA of type {rtype} may hold compressed names")
        size = _FIXED_SIZE.get(rtype)
        if size is not None and rdlen != size:
            raise w.WireError(f"type {rtype} RDATA is {rdlen} octets, not {size}")
        return message[offset:end]
    parts: list[bytes] = []
    for part in layout:
        if part == _NAME:
            name, offset = read_name(message, offset)
            parts.append(name)
        else:
            parts.append(message[offset : offset + part])
            offset += part
        if offset > end:
            raise w.WireError(f"type {rtype} RDATA runs past its length")
    if offset != end:
        raise w.WireError(f"type {rtype} RDATA is longer than its fields")
    return b"".join(parts)


_RR = struct.Struct("!HHIH")


class _Section:
    """RRsets of one section in order of first appearance."""

    def __init__(self) -> None:
        self.order: list[tuple[bytes, int, int, int]] = []
        self.owner: dict[tuple[bytes, int, int, int], bytes] = {}
        self.ttl: dict[tuple[bytes, int, int, int], int] = {}
        self.rdatas: dict[tuple[bytes, int, int, int], dict[bytes, None]] = {}

    def add(self, owner: bytes, rtype: int, rclass: int, ttl: int, rdata: bytes) -> None:
        covers = (rdata[0] << 8 | rdata[1]) if rtype == RRSIG and len(rdata) >= 2 else 0
        key = (owner.lower(), rtype, rclass, covers)
        known = self.ttl.get(key)
        if known is None:
            self.order.append(key)
            self.owner[key] = owner
            self.ttl[key] = ttl
            self.rdatas[key] = {rdata: None}
            return
        self.ttl[key] = min(known, ttl)
        if rtype in _SINGLETONS:
            self.rdatas[key] = {rdata: None}
        else:
            self.rdatas[key][rdata] = None

    def rrsets(self) -> tuple[RRset, ...]:
        return tuple(RRset(self.owner[k], k[1], k[2], self.ttl[k], tuple(self.rdatas[k])) for k in self.order)


def read_reply(message: bytes) -> ReplyRecords:
    """The question name, answer and authority RRsets of a reply with exactly one question."""
    if len(message) < 12:
        raise w.WireError("header cut short")
    _id, flags, qdcount, ancount, nscount, arcount = w.HEADER.unpack_from(message)
    if qdcount != 1:
        raise Unsupported("not exactly one question")
    qname, offset = read_name(message, 12)
    offset += 4
    if offset > len(message):
        raise w.WireError("question cut short")
    sections = (_Section(), _Section())
    opt_seen = False
    for index in range(ancount + nscount + arcount):
        owner, offset = read_name(message, offset)
        if offset + 10 > len(message):
            raise w.WireError("record header cut short")
        rtype, rclass, ttl, rdlen = _RR.unpack_from(message, offset)
        offset += 10
        if offset + rdlen > len(message):
            raise w.WireError("record data runs past the end of the message")
        if rtype == TSIG:
            raise Unsupported("TSIG")
        if rtype == w.OPT:
            if index < ancount + nscount or opt_seen or owner != b"\x00":
                raise Unsupported("OPT outside the additional section, repeated, or not owned by the root")
            if ttl >> 24:
                raise Unsupported("extended rcode")
            opt_seen = True
        else:
            rdata = _rdata(message, offset, rdlen, rtype)
            if index < ancount + nscount:
                sections[index >= ancount].add(owner, rtype, rclass, 0 if ttl >> 31 else ttl, rdata)
        offset += rdlen
    return ReplyRecords(flags, flags & 0x000F, qname, sections[0].rrsets(), sections[1].rrsets())
