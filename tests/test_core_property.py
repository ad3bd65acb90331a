"""Property tests: the core never raises and always returns a valid action, whatever bytes it is fed.

Inputs are arbitrary bytes, header-shaped bytes, mutated valid queries (flipped and overwritten bytes,
truncations, splices, rewritten counts and flags, inserted and deleted bytes) and structured queries of any
type, class and EDNS shape. They are fed over UDP and TCP to three views: a sandbox with local names and an
upstream, a sandbox on an internal network only, and a sandbox without any upstream. More than 20,000
examples run in total.
"""

from __future__ import annotations

import struct

import dns.edns
import dns.flags
import dns.message
from dnscases import CLIENT, LONELY, MIXED, SEALED, header, query, question_wire, reverse_name, views
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resolver.core.actions import Drop, Forward, Reply
from resolver.core.answer import Transport, respond
from resolver.registry.view import View

VIEWS = views()
SUBJECTS = (VIEWS[CLIENT], VIEWS[SEALED], VIEWS[LONELY], VIEWS[MIXED])
TRANSPORTS: tuple[Transport, ...] = ("udp", "tcp")
PROPERTY = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

NAMES = (
    "web",
    "WeB.BackEnd",
    "www",
    "site.example.com",
    "nope.example.com",
    "example.com",
    "tasks.api",
    "api",
    "big",
    "workers",
    "_http._tcp.web",
    "_http._tcp.api",
    "sealed",
    "lonely",
    "example.org",
    "secretdb.corp.internal",
    reverse_name("10.0.1.2"),
    reverse_name("fd00:1::2"),
    reverse_name("10.0.2.2"),
    ".",
)
TYPES = ("A", "AAAA", "PTR", "SRV", "ANY", "MX", "TXT", "SOA", "NS", "AXFR", "IXFR", "OPT", "CNAME", 65535)


def _seeds() -> list[bytes]:
    seeds: list[bytes] = []
    for i, name in enumerate(NAMES):
        for j, qtype in enumerate(TYPES):
            if (i + j) % 3 == 0:
                seeds.append(query(name, qtype, qid=i * 100 + j))
    seeds += [query(name, "A", edns=0, payload=4096, do=True) for name in NAMES[:8]]
    seeds += [
        query("web", "A", edns=1),
        query("web", "A", edns=0, options=[dns.edns.GenericOption(10, b"12345678")]),
        query("big", "A", edns=0, payload=512),
        query("web", "A", rdclass="CH"),
        query("version.bind", "TXT", rdclass="CH"),
        header(qd=0),
        header(flags=0x2800) + question_wire("web"),
    ]
    return seeds


SEEDS = _seeds()


def check(wire: bytes, view: View, transport: Transport) -> None:
    """The invariants every action satisfies."""
    action = respond(wire, view, None, 0.0, transport)
    if len(wire) < 12 or wire[2] & 0x80:
        assert isinstance(action, Drop), "shorter than a header, or a response: dropped"
        return
    assert isinstance(action, Reply | Forward), f"only short datagrams and responses are dropped: {action!r}"
    if isinstance(action, Forward):
        assert view.table.may_forward and view.upstreams
        assert action.query == wire
        assert action.upstreams == view.upstreams
        assert 512 <= action.max_size <= 65535
        return
    reply = action.wire
    assert len(reply) >= 12
    assert reply[:2] == wire[:2], "the query's id"
    assert reply[2] & 0x80, "QR set"
    assert (reply[2] >> 3) & 0xF == (wire[2] >> 3) & 0xF, "the query's opcode"
    if struct.unpack_from("!H", reply, 4)[0] == 0:
        assert len(reply) == 12, "a header-only reply is exactly a header"
        assert reply[4:12] == bytes(8), "a header-only reply has all counts 0"
        return
    message = dns.message.from_wire(reply)
    assert message.id == struct.unpack_from("!H", wire)[0]
    assert message.flags & dns.flags.QR
    assert len(message.question) == 1
    if transport == "udp" and message.edns < 0:
        assert len(reply) <= 512, "no EDNS: at most 512 bytes over UDP"
    assert len(reply) <= 65535


def _target(selector: int) -> tuple[View, Transport]:
    """One of the views and transports, picked by a byte of the example."""
    return SUBJECTS[selector % len(SUBJECTS)], TRANSPORTS[(selector >> 4) % 2]


# ---- arbitrary bytes ----------------------------------------------------------------------------------


@settings(PROPERTY, max_examples=5000)
@given(wire=st.binary(max_size=700), view=st.sampled_from(SUBJECTS), transport=st.sampled_from(TRANSPORTS))
def test_arbitrary_bytes(wire: bytes, view: View, transport: Transport) -> None:
    check(wire, view, transport)


@settings(PROPERTY, max_examples=4000)
@given(raw=st.binary(min_size=13, max_size=300))
def test_header_then_arbitrary_bytes(raw: bytes) -> None:
    """A query-shaped header (QR clear, counts mostly 0/1) followed by arbitrary bytes."""
    counts = [(0, 1, 1, 1, 2, 0xFFFF)[b % 6] for b in raw[1:5]]
    wire = raw[5:7] + bytes([raw[7] & 0x7F, raw[8]]) + struct.pack("!HHHH", *counts) + raw[13:]
    view, transport = _target(raw[0])
    check(wire, view, transport)


# ---- mutated valid queries ----------------------------------------------------------------------------

MUTATIONS = ("flip", "set", "truncate", "splice", "counts", "flags", "insert", "delete", "append")


def mutate(program: bytes) -> bytes:
    """Apply the mutations a byte program describes to one seed: byte 0 picks the seed, then every three
    bytes (kind, position, value) are one mutation."""
    wire = bytearray(SEEDS[program[0] % len(SEEDS)])
    for i in range(1, len(program) - 2, 3):
        kind, at, value = MUTATIONS[program[i] % len(MUTATIONS)], program[i + 1], program[i + 2]
        at = at % len(wire) if wire else 0
        if kind == "flip" and wire:
            wire[at] ^= 1 << (value % 8)
        elif kind == "set" and wire:
            wire[at] = (0, 1, 0x3F, 0x40, 0xC0, 0xFF, value, value)[value % 8]
        elif kind == "truncate":
            del wire[at:]
        elif kind == "splice":
            other = SEEDS[value % len(SEEDS)]
            wire[at:] = other[at % len(other) :]
        elif kind == "counts" and len(wire) >= 12:
            field = 4 + 2 * (value % 4)
            wire[field : field + 2] = struct.pack("!H", (0, 1, 2, 3, 0xFFFF)[(value >> 2) % 5])
        elif kind == "flags" and len(wire) >= 4:
            wire[2:4] = bytes([value & 0x7F, at])
        elif kind == "insert":
            wire[at:at] = bytes([value]) * (1 + value % 4)
        elif kind == "delete":
            del wire[at : at + 1 + value % 8]
        elif kind == "append":
            wire += bytes([value, at])
    return bytes(wire)


@settings(PROPERTY, max_examples=8000)
@given(program=st.binary(min_size=4, max_size=16))
def test_mutated_queries(program: bytes) -> None:
    wire = mutate(program)
    view, transport = _target(program[-1])
    check(wire, view, transport)
    check(wire, VIEWS[CLIENT], "udp")


# ---- structured queries -------------------------------------------------------------------------------

ALPHABET = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"
SUFFIXES = ("", ".backend", ".example.com", ".in-addr.arpa", ".corp.internal", ".BackEnd")
CLASSES = (*(1,) * 12, 3, 4, 254, 255)
PAYLOADS = (0, 100, 512, 1232, 4096, 65535)
FLAGS = (0, dns.flags.AD, dns.flags.CD, dns.flags.AD | dns.flags.CD)


def _random_name(raw: bytes, suffix: str) -> str:
    labels: list[str] = []
    label = bytearray()
    for byte in raw:
        if (byte < 24 and label) or len(label) == 63:
            labels.append(label.decode())
            label = bytearray()
        if byte >= 24:
            label.append(ALPHABET[byte % len(ALPHABET)])
    if label:
        labels.append(label.decode())
    return ".".join(labels or ["x"]) + suffix


def structured(raw: bytes) -> bytes:
    """A well-formed query of any name shape, type, class, flags and EDNS shape, described by `raw`."""
    name = NAMES[raw[1] % len(NAMES)] if raw[0] & 1 else _random_name(raw[16:], SUFFIXES[raw[1] % 6])
    qtype = int.from_bytes(raw[2:4], "big") if raw[4] & 1 else TYPES[raw[2] % len(TYPES)]
    rdclass = int.from_bytes(raw[5:7], "big") if raw[4] & 14 == 14 else CLASSES[raw[5] % len(CLASSES)]
    edns = (None, None, 0, 0, 1)[raw[10] % 5]
    options: list[dns.edns.Option] = []
    if edns is not None and raw[10] & 0x80:
        options = [dns.edns.GenericOption(int.from_bytes(raw[12:14], "big") or 1, raw[14:16] * (raw[11] % 5))]
    return query(
        name,
        qtype,
        rdclass=rdclass,
        qid=int.from_bytes(raw[7:9], "big"),
        rd=bool(raw[9] & 1),
        flags=FLAGS[(raw[9] >> 1) % 4],
        edns=edns,
        payload=PAYLOADS[raw[11] % len(PAYLOADS)],
        do=bool(raw[10] & 0x40) and edns is not None,
        options=options,
    )


@settings(PROPERTY, max_examples=3000)
@given(raw=st.binary(min_size=16, max_size=80))
def test_structured_queries(raw: bytes) -> None:
    check(structured(raw), *_target(raw[15]))
