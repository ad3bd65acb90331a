"""Cache of forwarded answers (pure: the caller passes `now`).

Rules: only NOERROR and NXDOMAIN replies are cached, and only their answer section (RFC 5452 section 6:
no referral, glue or other additional data is ever served from here) - except that a negative answer
(NXDOMAIN, or NOERROR without answers) keeps the SOA it came with, which RFC 2308 section 6 requires a
cache to send along. Positive entries live for the smallest answer TTL; negative ones for
min(SOA TTL, SOA minimum), and not at all without an SOA. Every lifetime, and every TTL handed out, is
capped by `max_ttl` (the SOA of a negative entry by its lifetime); TTLs are counted down on the way out.
Entries are keyed by the upstream scope (the upstream set, plus the sandbox when servers are reached
from inside it), the lower-cased name, the type and the DO bit, so
sandboxes with different upstreams never share an entry. Records whose owner is the question name are
stored with a pointer to the question, so every client gets its own spelling back. Replies are read by
offset (`resolver.core.records`); dnspython only reads the few it cannot.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

import dns.exception
import dns.message
import dns.rrset

from resolver.core import wire as w
from resolver.core.actions import Forward
from resolver.core.records import ReplyRecords, RRset, Unsupported, read_reply
from resolver.core.wire import WireError

CacheKey = tuple[Hashable, bytes, int, bool]


@dataclass(frozen=True, slots=True)
class CachedRecord:
    head: bytes
    ttl: int
    tail: bytes


class Entry:
    """One cached answer. It remembers what it served last, which stays valid for that whole second,
    so repeated hits cost a dictionary lookup and a few slices."""

    __slots__ = ("authority", "expires", "last", "rcode", "records", "stored")

    def __init__(
        self,
        rcode: int,
        records: tuple[CachedRecord, ...],
        authority: tuple[CachedRecord, ...],
        stored: float,
        lifetime: float,
    ) -> None:
        self.rcode = rcode
        self.records = records
        self.authority = authority
        self.stored = stored
        self.expires = stored + lifetime
        self.last: tuple[int, CachedAnswer, bytes] | None = None

    def _at(self, now: float) -> tuple[int, CachedAnswer, bytes]:
        elapsed = int(now - self.stored)
        last = self.last
        if last is None or last[0] != elapsed:
            answer = CachedAnswer(
                self.rcode, _counted_down(self.records, elapsed), _counted_down(self.authority, elapsed)
            )
            last = self.last = (elapsed, answer, b"".join((*answer.records, *answer.authority)))
        return last

    def answer(self, now: float) -> CachedAnswer:
        return self._at(now)[1]

    def plain_reply(self, query: bytes, now: float) -> bytes:
        """The reply to a plain query (RD/AD only, no EDNS): what the general path builds, spliced."""
        flags = w.QR | w.RA | self.rcode | ((query[2] & 1) << 8)
        header = struct.pack("!HHHHH", flags, 1, len(self.records), len(self.authority), 0)
        return query[:2] + header + query[12:] + self._at(now)[2]

    def plain_size(self, question_size: int) -> int:
        return (
            12 + question_size + sum(len(r.head) + 4 + len(r.tail) for r in (*self.records, *self.authority))
        )


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    """What the core needs to build the reply: rcode and answer records with TTLs counted down."""

    rcode: int
    records: tuple[bytes, ...]
    authority: tuple[bytes, ...] = ()


def cache_key(forward: Forward) -> CacheKey:
    return (forward.scope, forward.key, forward.qtype, forward.do)


def _soa(authority: tuple[RRset, ...]) -> RRset | None:
    for rrset in authority:
        if rrset.rtype == w.SOA and len(rrset.rdatas) == 1 and rrset.rclass == w.CLASS_IN:
            return rrset
    return None


def _encode(rrsets: tuple[RRset, ...], qname: bytes, max_ttl: int) -> tuple[CachedRecord, ...]:
    records = []
    question = qname.lower()
    for rrset in rrsets:
        owner = w.QUESTION_POINTER if rrset.owner.lower() == question else rrset.owner
        head = owner + struct.pack("!HH", rrset.rtype, rrset.rclass)
        ttl = min(rrset.ttl, max_ttl)
        for data in rrset.rdatas:
            records.append(CachedRecord(head, ttl, struct.pack("!H", len(data)) + data))
    return tuple(records)


def _records(reply: bytes) -> ReplyRecords | None:
    """The reply's records, read by offset; dnspython reads what that cannot (None: malformed)."""
    try:
        return read_reply(reply)
    except WireError:
        return None
    except Unsupported:
        return read_with_dnspython(reply)


def read_with_dnspython(reply: bytes) -> ReplyRecords | None:
    """What `read_reply` gives, through dnspython's full parser (None: malformed or no question)."""
    try:
        message = dns.message.from_wire(reply, ignore_trailing=True)
    except (dns.exception.DNSException, ValueError):
        return None
    if not message.question:
        return None
    return ReplyRecords(
        int(message.flags),
        message.rcode(),
        message.question[0].name.to_wire() or b"",
        _rrsets(message.answer),
        _rrsets(message.authority),
    )


def _rrsets(section: list[dns.rrset.RRset]) -> tuple[RRset, ...]:
    return tuple(
        RRset(
            rrset.name.to_wire() or b"",
            rrset.rdtype,
            rrset.rdclass,
            rrset.ttl,
            tuple(r.to_wire() for r in rrset),
        )
        for rrset in section
    )


def _may_cache(reply: bytes) -> bool:
    """What the header alone rules out, before any parsing: truncation, an rcode other than NOERROR
    and NXDOMAIN, and a negative answer without an authority section (it cannot carry an SOA)."""
    if len(reply) < 12 or reply[2] & 0x02:
        return False
    rcode = reply[3] & 0x0F
    if rcode not in (w.NOERROR, w.NXDOMAIN):
        return False
    answers, authority = (reply[6] << 8) | reply[7], (reply[8] << 8) | reply[9]
    return authority > 0 or (rcode == w.NOERROR and answers > 0)


def _counted_down(records: tuple[CachedRecord, ...], elapsed: int) -> tuple[bytes, ...]:
    return tuple(r.head + struct.pack("!I", max(0, r.ttl - elapsed)) + r.tail for r in records)


LAZY_READ_LIMIT = 1232
"""Replies up to this size (our advertised UDP payload) are kept as received and read on first use."""


class AnswerCache:
    """Entries by key, least recently used dropped first. A reply is kept as received and read on
    first lookup (most forwarded answers are never asked for again, so most are never read); one
    larger than `LAZY_READ_LIMIT` is read at once, so only its answer stays in memory."""

    def __init__(self, size: int, max_ttl: int, min_negative_ttl: int = 0) -> None:
        self.max_ttl = max_ttl
        self.min_negative_ttl = min_negative_ttl
        self.size = max(1, size)
        self._entries: OrderedDict[CacheKey, Entry | tuple[bytes, float]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, key: CacheKey, now: float) -> Entry | None:
        """The live entry for `key`, or None."""
        kept = self._entries.get(key)
        entry = self._read(*kept) if isinstance(kept, tuple) else kept
        if entry is not None and entry.expires > now:
            if entry is not kept:
                self._entries[key] = entry
            self._entries.move_to_end(key)
            self.hits += 1
            return entry
        if kept is not None:
            del self._entries[key]
        self.misses += 1
        return None

    def get(self, forward: Forward, now: float) -> CachedAnswer | None:
        """The answer for `forward` with its TTLs counted down to `now`, or None."""
        entry = self.lookup(cache_key(forward), now)
        return None if entry is None else entry.answer(now)

    def store(self, forward: Forward, reply: bytes, now: float) -> bool:
        """Keep an accepted upstream reply; False when its header or, for a large one, its records show
        it cannot be cached (a small one that cannot is dropped on first lookup)."""
        if not _may_cache(reply):
            return False
        if len(reply) <= LAZY_READ_LIMIT:
            kept: Entry | tuple[bytes, float] = (reply, now)
        else:
            read = self._read(reply, now)
            if read is None:
                return False
            kept = read
        key = cache_key(forward)
        entries = self._entries
        entries[key] = kept
        entries.move_to_end(key)
        if len(entries) > self.size:
            entries.popitem(last=False)
        return True

    def _read(self, reply: bytes, stored: float) -> Entry | None:
        """The entry for a reply stored at `stored`, or None when it cannot be cached."""
        read = _records(reply)
        if read is None or read.flags & w.TC or read.rcode not in (w.NOERROR, w.NXDOMAIN):
            return None
        authority: tuple[RRset, ...] = ()
        if read.rcode == w.NOERROR and read.answer:
            lifetime = min(rrset.ttl for rrset in read.answer)
        else:
            soa = _soa(read.authority)
            if soa is None:
                return None
            authority = (soa,)
            minimum = struct.unpack_from("!I", soa.rdatas[0], len(soa.rdatas[0]) - 4)[0]
            lifetime = max(min(soa.ttl, minimum), self.min_negative_ttl)
        lifetime = min(lifetime, self.max_ttl)
        if lifetime <= 0:
            return None
        records = _encode(read.answer, read.qname, self.max_ttl)
        return Entry(read.rcode, records, _encode(authority, read.qname, int(lifetime)), stored, lifetime)
