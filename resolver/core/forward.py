"""Pure rules for forwarded queries (RFC 5452, RFC 6891): building the upstream query, accepting a
reply, classifying it, and relaying it to the client.

Rules: the upstream query carries a fresh id chosen by the caller, RD set, the client's question as
spelt, and our own OPT (payload 1232, DO copied) - never the client's options. A reply is accepted only
if it is a response (QR, opcode QUERY) with that id and the same question (name case-insensitively,
type, class); anything else is ignored and the wait goes on. SERVFAIL, REFUSED, NOTIMP and FORMERR mean
"try the next server". The relayed reply gets the client's id and question spelling, an OPT only if the
client sent one, and is truncated with TC to the client's limit.
"""

from __future__ import annotations

import struct
from enum import Enum

import dns.flags
import dns.message
import dns.name

from resolver.core import wire as w
from resolver.core.actions import Forward

UPSTREAM_PAYLOAD = 1232
RETRY_RCODES = frozenset({w.SERVFAIL, w.REFUSED, w.NOTIMP, w.FORMERR})
_UPSTREAM_OPT = w.encode_opt(UPSTREAM_PAYLOAD)
_UPSTREAM_OPT_DO = w.encode_opt(UPSTREAM_PAYLOAD, do=True)
_CLIENT_OPT = w.encode_opt()
_CLIENT_OPT_DO = w.encode_opt(do=True)
_QUERY_HEADER = struct.Struct("!HHHHHH")
_ID_FLAGS_QDCOUNT = struct.Struct("!HHH")
_FLAGS_AND_COUNTS = struct.Struct("!HHHHH")
_TYPE_AND_RDLENGTH = struct.Struct("!H6xH")
_RESPONSE_MASK = w.QR | w.OPCODE_MASK
_RELAYED_FLAGS = w.AD | w.CD | 0x000F
"""What the client's reply keeps of the upstream's flags: AD, CD and the rcode (QR and RA are set)."""


class Verdict(Enum):
    ANSWER = "answer"
    TRY_NEXT = "try-next"
    TRUNCATED = "truncated"


def upstream_query(forward: Forward, query_id: int, do: bool) -> bytes:
    """The query sent upstream: our id, RD (and the client's CD), the client's question, our OPT."""
    flags = w.RD | (forward.query[3] & w.CD)  # CD is in the fourth octet
    header = _QUERY_HEADER.pack(query_id, flags, 1, 0, 0, 1)
    return header + forward.question + (_UPSTREAM_OPT_DO if do else _UPSTREAM_OPT)


def matches(reply: bytes, query_id: int, question: bytes) -> bool:
    """True if `reply` answers our query: a QUERY response with our id and the same question."""
    end = 12 + len(question)
    if len(reply) < end:
        return False
    reply_id, flags, qdcount = _ID_FLAGS_QDCOUNT.unpack_from(reply)
    if reply_id != query_id or flags & _RESPONSE_MASK != w.QR or qdcount != 1:
        return False
    asked = reply[12:end]
    if asked == question:  # the usual case: the server echoes the question as sent
        return True
    name_len = len(question) - 4
    return asked[:name_len].lower() == question[:name_len].lower() and asked[name_len:] == question[name_len:]


def verdict(reply: bytes) -> Verdict:
    flags = w.query_flags(reply)
    if flags & w.TC:
        return Verdict.TRUNCATED
    if flags & 0x000F in RETRY_RCODES:
        return Verdict.TRY_NEXT
    return Verdict.ANSWER


def relay(reply: bytes, forward: Forward) -> bytes | None:
    """The upstream reply made the client's: its id and spelling, its EDNS or none, its size limit.
    None when the reply cannot be relayed (malformed beyond what the byte-level splice needs)."""
    spliced = _splice(reply, forward)
    if spliced is not None:
        return spliced
    try:
        return _rebuild(reply, forward)
    except Exception:  # untrusted bytes: dnspython raises many kinds (FormError, ValueError, ...)
        return None


def _splice(reply: bytes, forward: Forward) -> bytes | None:
    """Byte-level relay for the common case: the question has the client's length (it is the one we
    sent), the upstream OPT is the last record and carries no extended rcode, the result fits. The
    records keep their offsets, so compression pointers stay valid. None means use `_rebuild`."""
    start = 12 + len(forward.question)
    if len(reply) < start:
        return None
    flags, qdcount, ancount, nscount, arcount = _FLAGS_AND_COUNTS.unpack_from(reply, 2)
    if qdcount != 1:
        return None
    try:
        end, opt_start = _walk_records(reply, start, ancount + nscount, arcount)
    except w.WireError:
        return None
    if opt_start is not None and struct.unpack_from("!I", reply, opt_start + 5)[0] >> 24:
        return None
    body = reply[start : end if opt_start is None else opt_start]
    opt = (_CLIENT_OPT_DO if forward.do else _CLIENT_OPT) if forward.edns else b""
    client_rd = (forward.query[2] & 0x01) << 8  # RD, in the query's third octet
    new_flags = (flags & _RELAYED_FLAGS) | w.QR | w.RA | client_rd
    additional = arcount - (opt_start is not None) + bool(opt)
    if not 0 <= additional <= 0xFFFF:
        return None
    header = _FLAGS_AND_COUNTS.pack(new_flags, 1, ancount, nscount, additional)
    message = b"".join((forward.query[:2], header, forward.question, body, opt))
    return message if len(message) <= forward.max_size else None


def _walk_records(reply: bytes, offset: int, before_additional: int, arcount: int) -> tuple[int, int | None]:
    """End of the last record and the start of the OPT record (None without one); WireError when an
    OPT is anywhere but last in the additional section (an OPT ending the authority section of a reply
    with no additional records once made the additional count -1)."""
    opt_start = None
    total = before_additional + arcount
    size = len(reply)
    for index in range(total):
        record = offset
        offset = w.skip_name(reply, offset)
        if offset + 10 > size:
            raise w.WireError("record cut short")
        rtype, rdlength = _TYPE_AND_RDLENGTH.unpack_from(reply, offset)
        offset += 10 + rdlength
        if offset > size:
            raise w.WireError("record data runs past the end")
        if rtype == w.OPT:
            if index != total - 1 or index < before_additional or reply[record] != 0:
                raise w.WireError("OPT outside the additional section, not last, or not owned by the root")
            opt_start = record
    return offset, opt_start


def _rebuild(reply: bytes, forward: Forward) -> bytes:
    message = dns.message.from_wire(reply, ignore_trailing=True)
    message.id = struct.unpack_from("!H", forward.query)[0]
    _set_question_spelling(message, forward)
    rcode = message.rcode()
    if forward.edns:
        message.use_edns(0, w.DO_FLAG if forward.do else 0, UPSTREAM_PAYLOAD)
    else:
        message.use_edns(False)
    message.set_rcode(rcode)
    message.flags &= ~(dns.flags.AA | dns.flags.RD)
    message.flags |= dns.flags.RA | (w.query_flags(forward.query) & w.RD)
    return message.to_wire(max_size=forward.max_size, prefer_truncation=True)


def _set_question_spelling(message: dns.message.Message, forward: Forward) -> None:
    name_wire = forward.question[:-4]
    name = dns.name.from_wire(name_wire, 0)[0] if name_wire else dns.name.root
    if message.question and message.question[0].name == name:
        message.question[0].name = name
        for rrset in message.answer:
            if rrset.name == name:
                rrset.name = name


def servfail(forward: Forward) -> bytes:
    """SERVFAIL for the client's query (question echoed, RA set, OPT only if the client had one)."""
    flags = w.QR | w.RA | (w.query_flags(forward.query) & (w.RD | w.CD)) | w.SERVFAIL
    opt = w.encode_opt() if forward.edns else b""
    header = struct.pack("!HHHHH", flags, 1, 0, 0, 1 if opt else 0)
    return forward.query[:2] + header + forward.question + opt
