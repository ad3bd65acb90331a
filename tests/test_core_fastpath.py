"""The fast path answers byte-for-byte what the general path would, and declines everything else.

Two independent views of the same registry keep their rotation counters in step: every query goes once to
`fast_reply` on view 1 and once to `_general` on view 2. Entries are prepared lazily by the general path, so
each (name, type) is first asked through `_general` on both views.
"""

from __future__ import annotations

import random

import dns.flags
import dns.message
import dns.rcode
import pytest
from dnscases import CLIENT, HOST_SERVERS, LONELY, MIXED, SEALED, SITE, header, query, question_wire, world
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resolver.core.actions import Reply
from resolver.core.answer import _general, fast_reply, respond
from resolver.registry.names import key_text
from resolver.registry.view import View, build_view

REGISTRY = world()
SANDBOXES = (CLIENT, SITE, SEALED, MIXED, LONELY)
FAST_TYPES = ("A", "AAAA", "PTR")
TYPE_CODES = {"A": 1, "AAAA": 28, "PTR": 12}


def _twins(sandboxes: tuple[str, ...] = SANDBOXES) -> dict[str, tuple[View, View]]:
    state = REGISTRY.state
    return {
        netns: (build_view(state, netns, HOST_SERVERS), build_view(state, netns, HOST_SERVERS))
        for netns in sandboxes
    }


def _general_wire(wire: bytes, view: View) -> bytes:
    action = _general(wire, view, None, 0.0, "udp")
    assert isinstance(action, Reply)
    return action.wire


def _prepare(twins: dict[str, tuple[View, View]]) -> list[tuple[str, str, str]]:
    """Ask every local name of every sandbox for A, AAAA and PTR through the general path of both views;
    return the (sandbox, name, type) entries that are now prepared for the fast path."""
    ready: list[tuple[str, str, str]] = []
    for netns, (one, two) in twins.items():
        assert one.table is not two.table
        for key in list(one.table.names):
            name = key_text(key)
            for qtype in FAST_TYPES:
                wire = query(name, qtype, qid=0)
                assert _general_wire(wire, one) == _general_wire(wire, two)
                fast_key = key + TYPE_CODES[qtype].to_bytes(2, "big")
                assert (fast_key in one.table.fast) == (fast_key in two.table.fast)
                if fast_key in one.table.fast:
                    ready.append((netns, name, qtype))
    return ready


TWINS = _twins()
READY = _prepare(TWINS)


def _spelled(rng: random.Random, name: str) -> str:
    return "".join(c.upper() if rng.random() < 0.5 else c for c in name)


def _plain_query(name: str, qtype: str, qid: int, rd: bool, ad: bool) -> bytes:
    return query(name, qtype, qid=qid, rd=rd, flags=dns.flags.AD if ad else 0)


def _compare(netns: str, wire: bytes) -> bytes:
    one, two = TWINS[netns]
    fast = fast_reply(wire, one.table)
    assert fast is not None, "a prepared entry is answered by the fast path"
    assert fast == _general_wire(wire, two)
    return fast


def test_most_local_names_are_prepared() -> None:
    prepared = {(n, name, t) for n, name, t in READY}
    for expected in (
        (CLIENT, "web.", "A"),
        (CLIENT, "web.backend.", "AAAA"),
        (CLIENT, "site.example.com.", "A"),
        (CLIENT, "2.1.0.10.in-addr.arpa.", "PTR"),
        (CLIENT, "tasks.api.", "A"),
        (CLIENT, "db4.", "AAAA"),  # NODATA is prepared too
        (SEALED, "sealed.", "A"),
        (LONELY, "lonely.", "A"),
    ):
        assert expected in prepared
    assert (CLIENT, "big.", "A") not in prepared, "an answer larger than 512 bytes is not a fast answer"
    assert len(READY) > 300


def test_fast_path_matches_general_path_seeded() -> None:
    rng = random.Random(0x5EED)
    for number in range(3000):
        netns, name, qtype = rng.choice(READY)
        wire = _plain_query(
            _spelled(rng, name), qtype, rng.randrange(65536), rng.random() < 0.7, rng.random() < 0.3
        )
        fast = _compare(netns, wire)
        if number % 10:
            continue
        reply = dns.message.from_wire(fast)
        assert reply.id == int.from_bytes(wire[:2], "big")
        assert str(reply.question[0].name) == str(dns.message.from_wire(wire).question[0].name)


@settings(
    max_examples=1000,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    entry=st.sampled_from(READY),
    case_mask=st.integers(min_value=0, max_value=2**80),
    qid=st.integers(min_value=0, max_value=65535),
    rd=st.booleans(),
    ad=st.booleans(),
)
def test_fast_path_matches_general_path_hypothesis(
    entry: tuple[str, str, str], case_mask: int, qid: int, rd: bool, ad: bool
) -> None:
    netns, name, qtype = entry
    spelled = "".join(c.upper() if case_mask >> i & 1 else c for i, c in enumerate(name))
    _compare(netns, _plain_query(spelled, qtype, qid, rd, ad))


def test_exact_spellings_are_answered_identically() -> None:
    """Lower-case queries of constant answers join the exact-spelling table on their first fast answer;
    asked again (any id, same header) they are answered from it with the general path's bytes. Mixed
    case and rotating answers never join it."""
    rng = random.Random(0xE8AC7)
    for _ in range(3000):
        netns, name, qtype = rng.choice(READY)
        spelled = name.lower() if rng.random() < 0.8 else _spelled(rng, name)
        _compare(
            netns, _plain_query(spelled, qtype, rng.randrange(65536), rng.random() < 0.7, rng.random() < 0.3)
        )
    learned = [exact for one, _ in TWINS.values() for exact in one.table.exact]
    assert len(learned) > 100
    for key in learned:
        question = key[10:]
        assert question == question.lower()
    one, two = TWINS[CLIENT]
    rotating = _plain_query("tasks.api.", "A", 1, True, False)
    for _ in range(3):
        assert fast_reply(rotating, one.table) == _general_wire(rotating, two)
    assert rotating[2:] not in one.table.exact


def test_respond_uses_the_fast_answer() -> None:
    one, two = TWINS[CLIENT]
    wire = _plain_query("WEB.backend.", "A", 0x7777, True, False)
    action = respond(wire, one, None, 0.0, "udp")
    assert isinstance(action, Reply)
    assert action.wire == _general_wire(wire, two)


DECLINED = {
    "edns": query("web", "A", edns=0),
    "edns-do": query("web", "A", edns=0, do=True),
    "cd": query("web", "A", flags=dns.flags.CD),
    "class-ch": query("web", "A", rdclass="CH"),
    "class-any": query("web", "A", rdclass="ANY"),
    "non-local": query("example.org", "A"),
    "other-network": query("secretdb", "A"),
    "type-mx": query("web", "MX"),
    "type-srv": query("_http._tcp.web", "SRV"),
    "type-any": query("web", "ANY"),
    "qr": query("web", "A", flags=dns.flags.QR),
    "tc": query("web", "A", flags=dns.flags.TC),
    "aa": query("web", "A", flags=dns.flags.AA),
    "ra": query("web", "A", flags=dns.flags.RA),
    "z": header(flags=0x0140) + question_wire("web"),
    "opcode-notify": header(flags=0x2100) + question_wire("web"),
    "rcode-bits": header(flags=0x0103) + question_wire("web"),
    "qdcount-2": header(qd=2) + question_wire("web") + question_wire("web"),
    "ancount-1": header(an=1) + question_wire("web"),
    "arcount-1": header(ar=1) + question_wire("web"),
    "trailing-byte": query("web", "A") + b"\x00",
    "cut": query("web", "A")[:-1],
    "big-answer": query("big", "A"),
}


@pytest.mark.parametrize("wire", DECLINED.values(), ids=DECLINED.keys())
def test_fast_path_declines(wire: bytes) -> None:
    one, two = _twins((CLIENT,))[CLIENT]
    for view in (one, two):
        for name, qtype in (("web", "A"), ("big", "A"), ("example.org", "A"), ("nope.example.com", "A")):
            respond(query(name, qtype), view, None, 0.0, "udp")
    assert fast_reply(query("web", "A"), one.table) is not None, "the entry itself is prepared"
    assert fast_reply(wire, one.table) is None


def test_fast_path_declines_on_unprepared_table() -> None:
    one, _ = _twins((CLIENT,))[CLIENT]
    assert fast_reply(query("web", "A"), one.table) is None


def test_nxdomain_under_a_domain_takes_the_fast_path_identically() -> None:
    """Unregistered names under a network domain share one prepared NXDOMAIN per zone; once a name
    got it from the general path, the fast path gives the same bytes."""
    from resolver.registry import model as m
    from resolver.registry.registry import Registry
    from resolver.registry.view import build_view

    registry = Registry()
    registry.apply(m.CreateNetwork("corpnet", domain="corp.test"))
    registry.apply(m.JoinEndpoint("corpnet", "ns", "e1", "web", ipv4=("10.0.0.1",)))
    fast_view = build_view(registry.state, "ns", ())
    general_view = build_view(registry.state, "ns", ())
    for i in range(40):
        message = dns.message.make_query(f"Miss{i % 5}.CORP.test", "A" if i % 2 else "AAAA", use_edns=False)
        message.id = 1000 + i
        wire = message.to_wire()
        fast = respond(wire, fast_view, None, 0.0)
        general = _general(wire, general_view, None, 0.0, "udp")
        assert isinstance(fast, Reply) and isinstance(general, Reply)
        assert fast.wire == general.wire and fast.outcome == general.outcome == "nxdomain"
        if i >= 10:
            assert fast_reply(wire, fast_view.table) is not None
    reply = dns.message.from_wire(fast.wire)
    assert reply.rcode() == dns.rcode.NXDOMAIN and reply.authority[0].name.to_text() == "corp.test."
