"""Local answers: what a view's registered names say for a question, and their prepared wire forms.

Rules (DESIGN section 4): a registered name answers its records; a registered name without a record of
the asked type answers NODATA with the zone's SOA; a name under a network domain that is not registered
answers NXDOMAIN with the SOA; the domain apex answers SOA and NS. Every local answer is authoritative
and carries the network's TTL. Multi-record answers rotate: each query starts one position further.

`Prepared` entries are memoised per name table and hold the rotation counter, so the fast path and the
general path share one rotation and produce the same bytes.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from resolver.core import wire as w
from resolver.registry.names import IPAddress
from resolver.registry.view import NameData, NameTable, SrvTarget, Zone

SOA_TIMERS = (3600, 600, 86400)
MEMO_TYPES = frozenset({w.A, w.AAAA, w.PTR, w.SRV, w.ANY, w.SOA, w.NS})
FAST_TYPES = frozenset({w.A, w.AAAA, w.PTR})
PLAIN_UDP_LIMIT = 512
MAX_ROTATIONS = 10_000
MAX_FAST_NXDOMAIN = 10_000
FAST_COUNTERS = 32
"""Counter slots of the fast paths, one per (query type bytes, rule) pair; the last one takes overflow."""
COUNTER_LABELS: list[tuple[bytes, str]] = []
_counter_slots: dict[tuple[bytes, str], int] = {}


def counter_slot(qtype: bytes, rule: str) -> int:
    """The index of the fast-path counter for (raw qtype, rule): a list index costs less than a key."""
    slot = _counter_slots.get((qtype, rule))
    if slot is None:
        if len(COUNTER_LABELS) >= FAST_COUNTERS - 1:
            return FAST_COUNTERS - 1
        slot = _counter_slots[(qtype, rule)] = len(COUNTER_LABELS)
        COUNTER_LABELS.append((qtype, rule))
    return slot


for _rule in ("local", "nodata", "nxdomain", "cache"):
    for _qtype in (w.A, w.AAAA, w.PTR):
        counter_slot(_qtype.to_bytes(2, "big"), _rule)


@dataclass(frozen=True, slots=True)
class LocalAnswer:
    """An answer in wire pieces: answer groups (each rotated on its own), authority, additional."""

    rcode: int
    groups: tuple[tuple[bytes, ...], ...] = ()
    authority: tuple[bytes, ...] = ()
    additional: tuple[bytes, ...] = ()
    rule: str = "local"

    @property
    def rotations(self) -> int:
        """Turns before every group is back at its start (so each group's first record spreads evenly)."""
        return min(math.lcm(*(len(g) for g in self.groups if g)) if self.groups else 1, MAX_ROTATIONS)

    def records(self, turn: int) -> list[bytes]:
        out: list[bytes] = []
        for group in self.groups:
            start = turn % len(group)
            out += group[start:]
            out += group[:start]
        return out


def soa_record(zone: Zone, owner: bytes | None = None) -> bytes:
    apex = w.encode_name(zone.apex)
    rdata = apex + w.encode_name(f"hostmaster.{zone.apex}") + struct.pack("!IIIII", 1, *SOA_TIMERS, zone.ttl)
    return w.encode_rr(owner or apex, w.SOA, zone.ttl, rdata)


def nodata(zone: Zone, rule: str = "nodata") -> LocalAnswer:
    return LocalAnswer(w.NOERROR, authority=(soa_record(zone),), rule=rule)


def nxdomain(zone: Zone) -> LocalAnswer:
    return LocalAnswer(w.NXDOMAIN, authority=(soa_record(zone),), rule="nxdomain")


def _address_records(rtype: int, addresses: Sequence[IPAddress], ttl: int) -> tuple[bytes, ...]:
    return tuple(w.encode_rr(w.QUESTION_POINTER, rtype, ttl, a.packed) for a in addresses)


def _srv_parts(targets: list[SrvTarget], ttl: int) -> tuple[tuple[bytes, ...], tuple[bytes, ...]]:
    records: list[bytes] = []
    glue: dict[bytes, None] = {}
    for target in targets:
        name = w.encode_name(target.target)
        rdata = struct.pack("!HHH", 0, 0, target.port) + name
        records.append(w.encode_rr(w.QUESTION_POINTER, w.SRV, ttl, rdata))
        addresses: tuple[IPAddress, ...] = (*target.ipv4, *target.ipv6)
        for address in addresses:
            rtype = w.A if address.version == 4 else w.AAAA
            glue[w.encode_rr(name, rtype, ttl, address.packed)] = None
    return tuple(records), tuple(glue)


def _apex_groups(data: NameData, qtype: int) -> list[tuple[bytes, ...]]:
    if not data.apex:
        return []
    groups: list[tuple[bytes, ...]] = []
    if qtype in (w.SOA, w.ANY):
        groups.append((soa_record(data.zone, w.QUESTION_POINTER),))
    if qtype in (w.NS, w.ANY):
        ns = w.encode_name(data.zone.apex)
        groups.append((w.encode_rr(w.QUESTION_POINTER, w.NS, data.zone.ttl, ns),))
    return groups


def answer_for(data: NameData, qtype: int) -> LocalAnswer:
    """The answer a registered name gives to `qtype` (NODATA with SOA when it has no such record)."""
    ttl = data.zone.ttl
    groups: list[tuple[bytes, ...]] = []
    additional: tuple[bytes, ...] = ()
    if qtype in (w.A, w.ANY) and data.ipv4:
        groups.append(_address_records(w.A, data.ipv4, ttl))
    if qtype in (w.AAAA, w.ANY) and data.ipv6:
        groups.append(_address_records(w.AAAA, data.ipv6, ttl))
    if qtype in (w.PTR, w.ANY) and data.ptr:
        groups.append((w.encode_rr(w.QUESTION_POINTER, w.PTR, ttl, w.encode_name(data.ptr)),))
    if qtype in (w.SRV, w.ANY) and data.srv:
        srv, additional = _srv_parts(data.srv, ttl)
        groups.append(srv)
    groups += _apex_groups(data, qtype)
    if not groups:
        return nodata(data.zone)
    return LocalAnswer(w.NOERROR, tuple(groups), additional=additional, rule="local")


def lookup(table: NameTable, key: bytes, qtype: int) -> LocalAnswer | None:
    """The local answer for (key, qtype), or None when the name is not local (forward it)."""
    data = table.names.get(key)
    if data is not None:
        return answer_for(data, qtype)
    zone = table.authority_for(key)
    return None if zone is None else nxdomain(zone)


class Prepared:
    """A memoised local answer with its rotation counter and, when it fits a plain UDP reply, the
    pre-encoded pieces the fast path splices around the client's id and question."""

    __slots__ = ("answer", "base_flags", "counts", "plain_bodies", "prefixes", "rotations", "turn")

    def __init__(self, answer: LocalAnswer, recursion_available: bool) -> None:
        self.answer = answer
        self.turn = 0
        self.rotations = answer.rotations
        self.base_flags = w.QR | w.AA | (w.RA if recursion_available else 0) | answer.rcode
        self.counts = (len(answer.records(0)), len(answer.authority), len(answer.additional))
        self.plain_bodies: list[bytes | None] = [None] * self.rotations
        an, ns, ar = self.counts
        self.prefixes = tuple(struct.pack("!HHHHH", self.base_flags | rd, 1, an, ns, ar) for rd in (0, w.RD))

    def next_turn(self) -> int:
        turn = self.turn
        self.turn = turn + 1 if turn + 1 < self.rotations else 0
        return turn

    def plain_body(self, turn: int) -> bytes:
        body = self.plain_bodies[turn]
        if body is None:
            parts = (*self.answer.records(turn), *self.answer.authority, *self.answer.additional)
            body = self.plain_bodies[turn] = b"".join(parts)
        return body

    def plain_size(self, question_size: int) -> int:
        return 12 + question_size + len(self.plain_body(0))

    def fast_reply(self, query: bytes) -> bytes:
        """The reply to a plain query (RD/AD only, one question, no EDNS) for this name and type."""
        turn = self.turn
        self.turn = turn + 1 if turn + 1 < self.rotations else 0
        body = self.plain_bodies[turn] or self.plain_body(turn)
        return query[:2] + self.prefixes[query[2] & 1] + query[12:] + body


class Exact:
    """The constant reply to one exact query spelling (header after the id, question as asked): the
    fast path sends the client's id followed by `tail`, one concatenation per query."""

    __slots__ = ("rule", "slot", "tail")

    def __init__(self, tail: bytes, slot: int, rule: str) -> None:
        self.tail = tail
        self.slot = slot
        self.rule = rule


def learn_exact(query: bytes, table: NameTable, entry: Prepared) -> int:
    """The counter slot of a plain query answered by `entry`. When its reply never changes (no
    rotation) and the question is in lower case (as most resolvers send it), the query's exact
    spelling joins `table.exact`; that bounds it to four header variants per fast entry."""
    slot = counter_slot(query[-4:-2], entry.answer.rule)
    if entry.rotations == 1:
        question = query[12:]
        if question == question.lower():
            tail = entry.prefixes[query[2] & 1] + question + entry.plain_body(0)
            table.exact[query[2:]] = Exact(tail, slot, entry.answer.rule)
    return slot


def prepared(table: NameTable, key: bytes, qtype: int) -> Prepared | LocalAnswer | None:
    """The memoised answer for (key, qtype). Unusual types are built fresh, unmemoised. NXDOMAIN is
    one entry per zone (it does not depend on the name); names that got it join the fast table only
    while it has room, so random names cannot grow it without bound."""
    entry = table.memo.get((key, qtype))
    if entry is not None:
        return entry
    answer = lookup(table, key, qtype)
    if answer is None or qtype not in MEMO_TYPES:
        return answer
    if answer.rcode == w.NXDOMAIN:
        return _nxdomain_entry(table, key, qtype, answer)
    entry = table.memo[(key, qtype)] = Prepared(answer, table.may_forward)
    if qtype in FAST_TYPES and entry.plain_size(len(key) + 4) <= PLAIN_UDP_LIMIT:
        table.fast[key + qtype.to_bytes(2, "big")] = entry
    return entry


def _nxdomain_entry(table: NameTable, key: bytes, qtype: int, answer: LocalAnswer) -> Prepared:
    zone_key = ("nxdomain", answer.authority)
    entry = table.memo.get(zone_key)
    if entry is None:
        entry = table.memo[zone_key] = Prepared(answer, table.may_forward)
    if qtype in FAST_TYPES and len(table.fast) < MAX_FAST_NXDOMAIN + len(table.names) * len(FAST_TYPES):
        table.fast[key + qtype.to_bytes(2, "big")] = entry
    return entry
