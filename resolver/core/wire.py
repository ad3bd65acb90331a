"""DNS wire format for the core: strict query parsing and reply encoding, without a general parser.

Rules (RFC 1035, RFC 9267, RFC 6891): a query's question name starts at offset 12 and may not use
compression (nothing earlier can be pointed at); labels are at most 63 octets, names at most 255; every
length is checked against the buffer end. Replies are built uncompressed except for answer owners, which
point at the question (offset 12).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

HEADER = struct.Struct("!HHHHHH")
RR_FIXED = struct.Struct("!HHIH")

QR, AA, TC, RD, RA, AD, CD = 0x8000, 0x0400, 0x0200, 0x0100, 0x0080, 0x0020, 0x0010
OPCODE_MASK = 0x7800

NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
BADVERS = 16

CLASS_IN, CLASS_CH, CLASS_ANY = 1, 3, 255
A, NS, SOA, PTR, TXT, AAAA, SRV, OPT, ANY = 1, 2, 6, 12, 16, 28, 33, 41, 255
AXFR, IXFR, MAILB, MAILA = 252, 251, 253, 254

MAX_NAME = 255
QUESTION_POINTER = b"\xc0\x0c"
EDNS_PAYLOAD = 1232
DO_FLAG = 0x8000


class WireError(Exception):
    """The message cannot be parsed; answer FORMERR if the header was readable."""


@dataclass(frozen=True, slots=True)
class Question:
    """The question section as asked, and the lower-cased name used as the lookup key."""

    wire: bytes
    name: bytes
    key: bytes
    qtype: int
    qclass: int
    end: int


def read_name(wire: bytes, offset: int) -> int:
    """Return the offset just after the uncompressed name at `offset`; raise WireError if invalid."""
    size = len(wire)
    start = offset
    while True:
        if offset >= size:
            raise WireError("name runs past the end of the message")
        length = wire[offset]
        if length == 0:
            offset += 1
            break
        if length > 63:
            raise WireError("compressed or reserved label type in the question")
        offset += length + 1
    if offset - start > MAX_NAME:
        raise WireError("name longer than 255 octets")
    return offset


def read_question(wire: bytes) -> Question:
    """Parse the single question that starts at offset 12."""
    name_end = read_name(wire, 12)
    if name_end + 4 > len(wire):
        raise WireError("question is cut short")
    qtype, qclass = struct.unpack_from("!HH", wire, name_end)
    name = wire[12:name_end]
    return Question(wire[12 : name_end + 4], name, name.lower(), qtype, qclass, name_end + 4)


def encode_name(text: str) -> bytes:
    """Wire form of a dotted name (kept in its letter case); raise WireError if a label is too long."""
    out = bytearray()
    for label in text.rstrip(".").split("."):
        if label:
            raw = label.encode("ascii")
            if len(raw) > 63:
                raise WireError(f"label too long in {text!r}")
            out.append(len(raw))
            out += raw
    out.append(0)
    if len(out) > MAX_NAME:
        raise WireError(f"name too long: {text!r}")
    return bytes(out)


def encode_rr(owner: bytes, rtype: int, ttl: int, rdata: bytes, rclass: int = CLASS_IN) -> bytes:
    return owner + RR_FIXED.pack(rtype, rclass, ttl, len(rdata)) + rdata


def encode_opt(payload: int = EDNS_PAYLOAD, ext_rcode: int = 0, do: bool = False) -> bytes:
    """An OPT RR advertising `payload`, version 0, with only the DO flag (if asked) and no options."""
    ttl = (ext_rcode << 24) | (DO_FLAG if do else 0)
    return encode_rr(b"\x00", OPT, ttl, b"", rclass=payload)


def header_only(wire: bytes, flags: int, rcode: int) -> bytes:
    """A reply of just a header: the query's id, `flags` and `rcode`, all counts zero."""
    return wire[:2] + struct.pack("!HHHHH", QR | flags | rcode, 0, 0, 0, 0)


def query_flags(wire: bytes) -> int:
    return (wire[2] << 8) | wire[3]


@dataclass(frozen=True, slots=True)
class Edns:
    """The query's OPT record: the requestor's payload size (at least 512), version and DO bit."""

    payload: int
    version: int
    do: bool


def skip_name(wire: bytes, offset: int) -> int:
    """Offset after a possibly compressed name (pointers must point backwards); WireError if invalid."""
    size = len(wire)
    while True:
        if offset >= size:
            raise WireError("name runs past the end of the message")
        length = wire[offset]
        if length == 0:
            return offset + 1
        if length & 0xC0 == 0xC0:
            if offset + 2 > size or ((length & 0x3F) << 8 | wire[offset + 1]) >= offset:
                raise WireError("bad compression pointer")
            return offset + 2
        if length > 63:
            raise WireError("reserved label type")
        offset += length + 1


def read_additional(wire: bytes, offset: int, count: int) -> Edns | None:
    """Walk the additional section (the only one a query may carry): at most one OPT, owned by the
    root, with well-formed options; other records (TSIG, SIG(0)) are skipped. No trailing bytes."""
    edns: Edns | None = None
    for _ in range(count):
        owner = offset
        offset = skip_name(wire, offset)
        if offset + 10 > len(wire):
            raise WireError("record header cut short")
        rtype, rclass, ttl, rdlen = RR_FIXED.unpack_from(wire, offset)
        offset += 10
        end = offset + rdlen
        if end > len(wire):
            raise WireError("record data runs past the end of the message")
        if rtype == OPT:
            if edns is not None or wire[owner] != 0:
                raise WireError("more than one OPT record, or an OPT not owned by the root")
            _check_options(wire, offset, end)
            edns = Edns(max(512, rclass), (ttl >> 16) & 0xFF, bool(ttl & DO_FLAG))
        offset = end
    if offset != len(wire):
        raise WireError("trailing bytes after the last record")
    return edns


def _check_options(wire: bytes, offset: int, end: int) -> None:
    while offset < end:
        if offset + 4 > end:
            raise WireError("EDNS option header cut short")
        offset += 4 + ((wire[offset + 2] << 8) | wire[offset + 3])
    if offset != end:
        raise WireError("EDNS option runs past its record")
