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
stored with a pointer to the question, so every client gets its own spelling back.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import dns.exception
import dns.message
import dns.rdatatype
import dns.rrset
from cachetools import LRUCache

from resolver.core import wire as w
from resolver.core.actions import Forward

CacheKey = tuple[tuple, bytes, int, bool]


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


def _soa(message: dns.message.Message) -> dns.rrset.RRset | None:
    for rrset in message.authority:
        if rrset.rdtype == dns.rdatatype.SOA and len(rrset) == 1 and rrset.rdclass == w.CLASS_IN:
            return rrset
    return None


def _encode(rrsets: list[dns.rrset.RRset], qname: dns.name.Name, max_ttl: int) -> tuple[CachedRecord, ...]:
    records = []
    for rrset in rrsets:
        owner = w.QUESTION_POINTER if rrset.name == qname else bytes(rrset.name.to_wire() or b"")
        for rdata in rrset:
            data = rdata.to_wire()
            head = owner + struct.pack("!HH", rrset.rdtype, rrset.rdclass)
            records.append(CachedRecord(head, min(rrset.ttl, max_ttl), struct.pack("!H", len(data)) + data))
    return tuple(records)


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


class AnswerCache:
    def __init__(self, size: int, max_ttl: int, min_negative_ttl: int = 0) -> None:
        self.max_ttl = max_ttl
        self.min_negative_ttl = min_negative_ttl
        self._entries: LRUCache[CacheKey, Entry] = LRUCache(maxsize=max(1, size))
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, key: CacheKey, now: float) -> Entry | None:
        """The live entry for `key`, or None."""
        entry = self._entries.get(key)
        if entry is not None and entry.expires <= now:
            del self._entries[key]
            entry = None
        if entry is None:
            self.misses += 1
            return None
        self.hits += 1
        return entry

    def get(self, forward: Forward, now: float) -> CachedAnswer | None:
        """The answer for `forward` with its TTLs counted down to `now`, or None."""
        entry = self.lookup(cache_key(forward), now)
        return None if entry is None else entry.answer(now)

    def store(self, forward: Forward, reply: bytes, now: float) -> bool:
        """Cache the answer of an accepted upstream reply; False when it is not cacheable."""
        if not _may_cache(reply):
            return False
        try:
            message = dns.message.from_wire(reply, ignore_trailing=True)
        except (dns.exception.DNSException, ValueError):
            return False
        rcode = message.rcode()
        if message.flags & w.TC or rcode not in (w.NOERROR, w.NXDOMAIN) or not message.question:
            return False
        qname = message.question[0].name
        authority: list[dns.rrset.RRset] = []
        if rcode == w.NOERROR and message.answer:
            lifetime = min(rrset.ttl for rrset in message.answer)
        else:
            soa = _soa(message)
            if soa is None:
                return False
            authority = [soa]
            lifetime = max(min(soa.ttl, soa[0].minimum), self.min_negative_ttl)
        lifetime = min(lifetime, self.max_ttl)
        if lifetime <= 0:
            return False
        records = _encode(message.answer, qname, self.max_ttl)
        entry = Entry(rcode, records, _encode(authority, qname, int(lifetime)), now, lifetime)
        self._entries[cache_key(forward)] = entry
        return True
