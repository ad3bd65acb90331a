"""The answering core's entry point: `respond(wire, view, cache, now, transport) -> Action`.

Order of rules (RFC 8906 section 3, DESIGN section 4):
  1. shorter than a header, or QR set: drop;
  2. opcode other than QUERY: NOTIMP, header only;
  3. not exactly one question, any answer/authority record, a bad question or trailing bytes: FORMERR;
  4. EDNS version above 0: BADVERS; an OPT in the reply only when the query had one (payload 1232, DO
     echoed, no options);
  5. CH TXT version.bind / version.server: the version; any other class than IN: REFUSED; zone
     transfers NOTIMP; other meta types REFUSED;
  6. a local name or a name under a network domain: answered here, never forwarded;
  7. a sandbox on internal networks only: REFUSED with RA clear; a cached forwarded answer; no upstream:
     SERVFAIL; otherwise Forward.
UDP replies larger than the client's limit (512 without EDNS) are truncated with TC; TCP never is.
The fast paths answer plain A/AAAA/PTR queries (RD/AD only, no EDNS) from prepared bytes, exactly as
the general path would: local names and NXDOMAIN under a domain from the name table, forwarded answers
from the cache entries this view already served.
"""

from __future__ import annotations

import struct
from typing import Literal, Protocol

from resolver import __version__
from resolver.core import wire as w
from resolver.core.actions import Action, Drop, Forward, Reply
from resolver.core.cache import CachedAnswer, Entry
from resolver.core.local import PLAIN_UDP_LIMIT, LocalAnswer, Prepared, learn_exact, prepared
from resolver.registry.view import NameTable, View

Transport = Literal["udp", "tcp"]
TCP_LIMIT = 65535
PLAIN_HEADER_TAIL = b"\x00\x01\x00\x00\x00\x00\x00\x00"
QCLASS_IN = b"\x00\x01"
FAST_CACHE_LIMIT = 4096
VERSION_NAMES = frozenset({b"\x07version\x04bind\x00", b"\x07version\x06server\x00"})
"""CH TXT names answered with the version (RFC 4892 style); other CH questions are REFUSED."""


class ForwardCache(Protocol):
    """A cache of forwarded answers (see resolver.core.cache.AnswerCache)."""

    def lookup(self, key: tuple, now: float) -> Entry | None: ...


def _plain(wire: bytes) -> bool:
    """One IN question, no other records, only RD/AD set: the queries the fast paths may answer."""
    return (
        len(wire) >= 17
        and wire[4:12] == PLAIN_HEADER_TAIL
        and not wire[2] & 0xFE
        and not wire[3] & 0xDF
        and wire[-2:] == QCLASS_IN
    )


def fast_entry(wire: bytes, table: NameTable) -> Prepared | None:
    """The prepared local answer for a plain query, or None to take the general path."""
    return table.fast.get(wire[12:-2].lower()) if _plain(wire) else None


def fast_reply(wire: bytes, table: NameTable) -> bytes | None:
    """Answer a plain query for a prepared local name, or None to take the general path (what the UDP
    listener does inline: an exact spelling first, then the lower-cased name)."""
    exact = table.exact.get(wire[2:])
    if exact is not None:
        return wire[:2] + exact.tail
    entry = fast_entry(wire, table)
    if entry is None:
        return None
    learn_exact(wire, table, entry)
    return entry.fast_reply(wire)


def fast_cached_reply(wire: bytes, view: View, now: float) -> bytes | None:
    """Answer a plain query from a cache entry the general path already served to this view, and
    remember the reply for this exact spelling until its TTLs next change (see `exact_cached_reply`)."""
    if not _plain(wire):
        return None
    key = wire[12:-2].lower()
    entry = view.cached.get(key)
    if entry is None:
        return None
    if entry.expires <= now:
        del view.cached[key]
        return None
    reply = entry.plain_reply(wire, now)
    exact = view.cached_exact
    if len(exact) >= FAST_CACHE_LIMIT:
        exact.clear()
    exact[wire[2:]] = (min(entry.stored + int(now - entry.stored) + 1, entry.expires), reply[2:])
    return reply


def exact_cached_reply(wire: bytes, view: View, now: float) -> bytes | None:
    """The reply to a query spelt exactly like one `fast_cached_reply` answered (flags, counts and
    question, letter case included) while the TTLs it carries are still the ones to send: one slice,
    one lookup and one concatenation, as for a local exact spelling."""
    hit = view.cached_exact.get(wire[2:])
    if hit is None or now >= hit[0]:
        return None
    return wire[:2] + hit[1]


def _remember_cached(view: View, question: w.Question, entry: Entry) -> None:
    if len(view.cached) >= FAST_CACHE_LIMIT:
        view.cached.clear()
    view.cached[question.key + question.wire[-4:-2]] = entry


def respond(
    wire: bytes, view: View, cache: ForwardCache | None, now: float, transport: Transport = "udp"
) -> Action:
    """Decide what to do with one query datagram or TCP message from a sandbox."""
    exact = view.table.exact.get(wire[2:])
    if exact is not None:
        return Reply(wire[:2] + exact.tail, exact.rule)
    entry = fast_entry(wire, view.table)
    if entry is not None:
        return Reply(entry.fast_reply(wire), entry.answer.rule)
    return _general(wire, view, cache, now, transport)


def respond_general(
    wire: bytes, view: View, cache: ForwardCache | None, now: float, transport: Transport = "udp"
) -> Action:
    """`respond` for a query the fast paths already passed over (the UDP listener tries them inline)."""
    return _general(wire, view, cache, now, transport)


def _general(wire: bytes, view: View, cache: ForwardCache | None, now: float, transport: Transport) -> Action:
    if len(wire) < 12:
        return Drop("shorter than a DNS header")
    flags = w.query_flags(wire)
    if flags & w.QR:
        return Drop("a response, not a query")
    if flags & w.OPCODE_MASK:
        return Reply(w.header_only(wire, flags & w.OPCODE_MASK, w.NOTIMP), "notimp")
    qdcount, ancount, nscount, arcount = struct.unpack_from("!HHHH", wire, 4)
    if qdcount != 1 or ancount or nscount:
        return _formerr(wire, flags)
    try:
        question = w.read_question(wire)
        edns = _read_edns(wire, question, arcount)
    except w.WireError:
        return _formerr(wire, flags)
    return _answer(wire, flags, question, edns, view, cache, now, transport)


def _formerr(wire: bytes, flags: int) -> Reply:
    return Reply(w.header_only(wire, flags & w.RD, w.FORMERR), "formerr")


def _read_edns(wire: bytes, question: w.Question, arcount: int) -> w.Edns | int | None:
    """EDNS of the query: None without OPT, an Edns, or the EDNS version when it is not 0."""
    edns = w.read_additional(wire, question.end, arcount)
    if edns is not None and edns.version > 0:
        return edns.version
    return edns


def _answer(
    wire: bytes,
    flags: int,
    question: w.Question,
    edns: w.Edns | int | None,
    view: View,
    cache: ForwardCache | None,
    now: float,
    transport: Transport,
) -> Action:
    table = view.table
    reply = _Replier(wire, flags, question, edns, transport, table.may_forward)
    if isinstance(edns, int):
        return reply.badvers()
    if question.qclass == w.CLASS_CH and question.qtype in (w.TXT, w.ANY) and question.key in VERSION_NAMES:
        return reply.version()
    if question.qclass != w.CLASS_IN:
        return reply.error(w.REFUSED, "refused-class", recursion=False)
    if question.qtype in (w.AXFR, w.IXFR):
        return reply.error(w.NOTIMP, "notimp-transfer")
    if question.qtype in (w.OPT, w.MAILA, w.MAILB):
        return reply.error(w.REFUSED, "refused-type")
    local = prepared(table, question.key, question.qtype)
    if local is not None:
        return reply.local(local)
    if not table.may_forward:
        return reply.error(w.REFUSED, "refused-internal", recursion=False)
    do = reply.edns.do if reply.edns else False
    cached = cache.lookup((view.scope, question.key, question.qtype, do), now) if cache is not None else None
    if cached is not None:
        return _from_cache(wire, question, edns is None, view, cached, reply, now)
    if not view.upstreams:
        return reply.error(w.SERVFAIL, "no-upstream")
    return Forward(
        query=wire,
        question=question.wire,
        key=question.key,
        qtype=question.qtype,
        upstreams=view.upstreams,
        max_size=reply.max_size,
        edns=edns is not None,
        do=do,
        scope=view.scope,
    )


def _from_cache(
    wire: bytes,
    question: w.Question,
    no_edns: bool,
    view: View,
    cached: Entry,
    reply: _Replier,
    now: float,
) -> Reply:
    if no_edns and _plain(wire) and cached.plain_size(len(question.wire)) <= PLAIN_UDP_LIMIT:
        _remember_cached(view, question, cached)
    return reply.cached(cached.answer(now))


_NOT_FORWARDED_TYPES = frozenset({w.AXFR, w.IXFR, w.OPT, w.MAILA, w.MAILB})


def forward_plain(wire: bytes, view: View, cache: ForwardCache | None, now: float) -> Action | None:
    """What `respond` gives a plain query over UDP (see `_plain`) that the fast paths did not answer,
    when that is a Forward or a cached answer, by a shorter road: no general parse, no replier unless
    the cache answers. None: anything else (a local name, an error, an internal sandbox), which the
    general path then decides. A property test holds this to `respond`, action for action."""
    if not _plain(wire):
        return None
    try:
        end = w.read_name(wire, 12)
    except w.WireError:
        return None
    if end + 4 != len(wire):
        return None
    qtype = (wire[end] << 8) | wire[end + 1]
    table = view.table
    if qtype in _NOT_FORWARDED_TYPES or not table.may_forward or not view.upstreams:
        return None
    key = wire[12:end].lower()
    if prepared(table, key, qtype) is not None:
        return None
    cached = cache.lookup((view.scope, key, qtype, False), now) if cache is not None else None
    if cached is not None:
        question = w.Question(wire[12:], wire[12:end], key, qtype, w.CLASS_IN, end + 4)
        reply = _Replier(wire, w.query_flags(wire), question, None, "udp", True)
        return _from_cache(wire, question, True, view, cached, reply, now)
    return Forward(wire, wire[12:], key, qtype, view.upstreams, PLAIN_UDP_LIMIT, False, False, view.scope)


class _Replier:
    """Encodes the replies of one query: header flags, question echo, OPT and truncation."""

    __slots__ = ("edns", "flags", "max_size", "may_forward", "question", "wire")

    def __init__(
        self,
        wire: bytes,
        flags: int,
        question: w.Question,
        edns: w.Edns | int | None,
        transport: Transport,
        may_forward: bool,
    ) -> None:
        self.wire = wire
        self.flags = flags & (w.RD | w.CD)
        self.question = question
        self.edns = edns if isinstance(edns, w.Edns) else None
        self.may_forward = may_forward
        if transport == "tcp":
            self.max_size = TCP_LIMIT
        else:
            self.max_size = min(self.edns.payload, TCP_LIMIT) if self.edns else 512

    def _opt(self, ext_rcode: int = 0) -> bytes:
        if self.edns is None:
            return b""
        return w.encode_opt(ext_rcode=ext_rcode, do=self.edns.do)

    def _flags(self, extra: int, recursion: bool) -> int:
        return w.QR | self.flags | extra | (w.RA if recursion and self.may_forward else 0)

    def local(self, local: Prepared | LocalAnswer) -> Reply:
        if isinstance(local, Prepared):
            answer, turn = local.answer, local.next_turn()
        else:
            answer, turn = local, 0
        flags = self._flags(w.AA | answer.rcode, recursion=True)
        return Reply(self._assemble(flags, answer, turn), answer.rule)

    def cached(self, cached: CachedAnswer) -> Reply:
        groups = (cached.records,) if cached.records else ()
        answer = LocalAnswer(cached.rcode, groups, cached.authority, rule="cache")
        return Reply(self._assemble(self._flags(cached.rcode, recursion=True), answer, 0), "cache")

    def version(self) -> Reply:
        text = f"resolver {__version__}".encode()
        record = w.encode_rr(w.QUESTION_POINTER, w.TXT, 0, bytes([len(text)]) + text, rclass=w.CLASS_CH)
        answer = LocalAnswer(w.NOERROR, ((record,),), rule="chaos")
        return Reply(self._assemble(self._flags(w.AA, recursion=False), answer, 0), "chaos")

    def error(self, rcode: int, outcome: str, recursion: bool = True) -> Reply:
        return Reply(self._assemble(self._flags(rcode, recursion), LocalAnswer(rcode), 0), outcome)

    def badvers(self) -> Reply:
        opt = w.encode_opt(ext_rcode=w.BADVERS >> 4)
        header = struct.pack("!HHHHH", self._flags(0, True), 1, 0, 0, 1)
        return Reply(self.wire[:2] + header + self.question.wire + opt, "badvers")

    def _assemble(self, flags: int, answer: LocalAnswer, turn: int) -> bytes:
        records = answer.records(turn)
        opt = self._opt()
        message = self._message(flags, records, answer.authority, answer.additional, opt)
        if len(message) <= self.max_size:
            return message
        message = self._message(flags, records, answer.authority, (), opt)
        if len(message) <= self.max_size:
            return message
        return self._truncated(flags, records, opt)

    def _message(
        self,
        flags: int,
        records: list[bytes],
        authority: tuple[bytes, ...],
        additional: tuple[bytes, ...],
        opt: bytes,
    ) -> bytes:
        counts = struct.pack("!HHHHH", flags, 1, len(records), len(authority), len(additional) + bool(opt))
        return b"".join((self.wire[:2], counts, self.question.wire, *records, *authority, *additional, opt))

    def _truncated(self, flags: int, records: list[bytes], opt: bytes) -> bytes:
        room = self.max_size - 12 - len(self.question.wire) - len(opt)
        kept: list[bytes] = []
        for record in records:
            if len(record) > room:
                break
            kept.append(record)
            room -= len(record)
        return self._message(flags | w.TC, kept, (), (), opt)
