"""Rotation: every multi-record answer spreads its first position evenly across queries.

Each case asks one name 300 times (on a fresh view) and counts which record comes first. A round robin
gives exactly 300/n per record; a shuffle gives about that, so the bound is four standard deviations.
"""

from __future__ import annotations

import math
from collections import Counter

import dns.flags
import dns.message
import pytest
from dnscases import CLIENT, HOST_SERVERS, first_answer, query, records, world

from resolver.core.actions import Reply
from resolver.core.answer import Transport, respond
from resolver.registry.names import wire_key
from resolver.registry.view import View, build_view

QUERIES = 300
REGISTRY = world()

TRIO = ("10.0.1.31", "10.0.1.32", "10.0.1.33")
QUINT_V4 = tuple(f"10.0.1.4{i}" for i in range(1, 6))
QUINT_V6 = tuple(f"fd00:1::4{i}" for i in range(1, 6))
RR = tuple(f"10.0.1.5{i}" for i in range(1, 6))
WORKERS = ("10.0.1.21", "10.0.1.22", "10.0.1.23")
API_TASKS = ("10.0.1.11", "10.0.1.12", "10.0.1.13")
API_SRV = tuple(f"8080 api{i}.backend." for i in (1, 2, 3))

SUBJECTS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "trio-A": ("trio", "A", TRIO),
    "quint-A": ("quint", "A", QUINT_V4),
    "quint-AAAA": ("quint.backend", "AAAA", QUINT_V6),
    "dnsrr-service-5": ("rr", "A", RR),
    "tasks-5": ("tasks.rr", "A", RR),
    "tasks-3": ("tasks.workers", "A", WORKERS),
    "tasks-of-vip-service": ("tasks.api", "A", API_TASKS),
    "srv-3": ("_http._tcp.api", "SRV", API_SRV),
}


def fresh_view() -> View:
    """A new view of the client (new table, so new rotation counters)."""
    return build_view(REGISTRY.state, CLIENT, HOST_SERVERS)


def assert_even(firsts: Counter[str], choices: tuple[str, ...], total: int = QUERIES) -> None:
    assert set(firsts) == set(choices), f"every record comes first sometimes: {firsts}"
    p = 1 / len(choices)
    bound = 4 * math.sqrt(total * p * (1 - p))
    for choice in choices:
        assert abs(firsts[choice] - total * p) <= bound, f"uneven first positions: {dict(firsts)}"


def ask_many(view: View, wire_of: object, transport: Transport = "udp") -> Counter[str]:
    firsts: Counter[str] = Counter()
    for i in range(QUERIES):
        wire = wire_of(i)  # type: ignore[operator]
        action = respond(wire, view, None, 0.0, transport)
        assert isinstance(action, Reply)
        reply = dns.message.from_wire(action.wire)
        assert not reply.flags & dns.flags.TC
        firsts[first_answer(reply)] += 1
    return firsts


@pytest.mark.parametrize("subject", SUBJECTS, ids=SUBJECTS.keys())
def test_fast_path_rotation(subject: str) -> None:
    name, qtype, choices = SUBJECTS[subject]
    view = fresh_view()
    firsts = ask_many(view, lambda i: query(name, qtype, qid=i))
    assert_even(firsts, choices)
    if qtype in ("A", "AAAA"):
        key = wire_key(name) + (1 if qtype == "A" else 28).to_bytes(2, "big")
        assert key in view.table.fast, "the plain queries were served by the fast path"


@pytest.mark.parametrize("subject", SUBJECTS, ids=SUBJECTS.keys())
def test_general_path_rotation(subject: str) -> None:
    name, qtype, choices = SUBJECTS[subject]
    assert_even(ask_many(fresh_view(), lambda i: query(name, qtype, qid=i, edns=0)), choices)


@pytest.mark.parametrize("subject", ["trio-A", "tasks-5", "srv-3"])
def test_tcp_rotation(subject: str) -> None:
    name, qtype, choices = SUBJECTS[subject]
    assert_even(ask_many(fresh_view(), lambda i: query(name, qtype, qid=i), "tcp"), choices)


@pytest.mark.parametrize("subject", ["trio-A", "quint-A", "tasks-5"])
def test_mixed_paths_rotation(subject: str) -> None:
    """Plain (fast) and EDNS (general) queries interleaved still spread evenly."""
    name, qtype, choices = SUBJECTS[subject]
    firsts = ask_many(fresh_view(), lambda i: query(name, qtype, qid=i, edns=0 if i % 3 == 0 else None))
    assert_even(firsts, choices)


@pytest.mark.parametrize("subject", SUBJECTS, ids=SUBJECTS.keys())
def test_rotation_keeps_every_record(subject: str) -> None:
    name, qtype, choices = SUBJECTS[subject]
    view = fresh_view()
    for i in range(len(choices) + 2):
        reply = dns.message.from_wire(respond(query(name, qtype, qid=i), view, None, 0.0, "udp").wire)  # type: ignore[union-attr]
        found = sorted(r.split(None, 4)[4] for r in records(reply.answer))
        assert found == sorted(choices)


def test_srv_glue_covers_every_target() -> None:
    view = fresh_view()
    reply = dns.message.from_wire(respond(query("_http._tcp.api", "SRV"), view, None, 0.0, "udp").wire)  # type: ignore[union-attr]
    glue = sorted(r.split()[-1] for r in records(reply.additional))
    assert glue == sorted(API_TASKS)


def test_any_rotation_spreads_every_type() -> None:
    """ANY of a name with 2 A and 3 AAAA records: each type's first record spreads evenly (groups of
    different sizes must not share one short cycle)."""
    view = fresh_view()
    first_a: Counter[str] = Counter()
    first_aaaa: Counter[str] = Counter()
    for i in range(QUERIES):
        action = respond(query("dual", "ANY", qid=i), view, None, 0.0, "udp")
        assert isinstance(action, Reply)
        reply = dns.message.from_wire(action.wire)
        for rrset in reply.answer:
            target = first_a if rrset.rdtype == 1 else first_aaaa
            target[rrset[0].to_text()] += 1
    assert_even(first_aaaa, ("fd00:1::61", "fd00:1::62", "fd00:1::63"))
    assert_even(first_a, ("10.0.1.61", "10.0.1.62"))
