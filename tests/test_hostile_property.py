"""Property tests (hypothesis) over the four input surfaces the fuzzers cover, with the same properties
(fuzz/targets.py): the datagram handler as the server runs it, TCP framing in arbitrary chunks, the
resolv.conf parse/transform/render round trip, and control API request decoding.

Inputs are built from the fuzz seed corpus (fuzz/seeds.py) by structured mutation, plus arbitrary bytes
or text; the structure (frames, resolv.conf lines, JSON bodies with the API's field names) reaches
deeper than blind bytes do.
"""

from __future__ import annotations

import json
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz import seeds, targets

PROPERTY = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
QUERIES = seeds.queries()


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[bytes]) -> bytes:
    """A seed with some bytes overwritten, some inserted, and maybe cut short or extended."""
    data = bytearray(draw(base))
    for _ in range(draw(st.integers(0, 4))):
        if data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        at = draw(st.integers(0, len(data)))
        data[at:at] = draw(st.binary(max_size=8))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


DATAGRAMS = st.one_of(st.binary(max_size=300), mutated(st.sampled_from(QUERIES)))


@PROPERTY
@given(DATAGRAMS)
def test_datagram_handler(data: bytes) -> None:
    targets.check_datagram(data)


def _frame(message: bytes) -> bytes:
    return struct.pack("!H", len(message)) + message


STREAMS = st.builds(
    lambda messages, tail: b"".join(map(_frame, messages)) + tail,
    st.lists(DATAGRAMS, max_size=20),
    st.sampled_from([b"", b"\x00", b"\x00\x00", b"\x00\x0b" + bytes(11), b"\x01\x00abc", b"\xff\xff"]),
)


@PROPERTY
@given(STREAMS, st.integers(0, 255))
def test_tcp_framing(stream: bytes, seed: int) -> None:
    targets.check_tcp_stream(stream, seed)


WORDS = st.one_of(
    st.sampled_from(
        ["192.0.2.1", "::1", "fe80::1%eth0", "127.0.0.11", "ndots:3", "ndots:x", "ndots:", "rotate", "#", ";"]
    ),
    st.text(st.characters(codec="utf-8", exclude_characters="\n"), max_size=12),
)
LINES = st.builds(
    lambda lead, keyword, words, sep: lead + keyword + "".join(sep + w for w in words),
    st.sampled_from(["", "", "", " ", "\t", "#", ";"]),
    st.sampled_from(["nameserver", "search", "domain", "options", "sortlist", "lookup", "x", ""]),
    st.lists(WORDS, max_size=4),
    st.sampled_from([" ", "\t", "  ", "\r"]),
)
RESOLV_CONFS = st.one_of(
    st.builds("\n".join, st.lists(LINES, max_size=12)),
    st.text(max_size=200),
    st.sampled_from([s.decode("utf-8", "surrogateescape") for s in seeds.resolv_confs()]),
)


@PROPERTY
@given(RESOLV_CONFS)
def test_resolvconf_round_trip(text: str) -> None:
    targets.check_resolvconf(text)


FIELDS = [
    "name",
    "internal",
    "domain",
    "dns",
    "ttl",
    "vips",
    "mode",
    "network",
    "netns",
    "endpoint",
    "aliases",
    "hostname",
    "ipv4",
    "ipv6",
    "service",
    "ports",
    "resolv_conf",
    "type",
]
STRINGS = st.one_of(
    st.text(max_size=20),
    st.sampled_from(["front", "web0", "10.1.0.9", "fd00::9", "http:tcp:80", "http:tcp:\u00b2", "corp.test"]),
)
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), STRINGS)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
)
BODIES = st.one_of(
    st.dictionaries(st.sampled_from(FIELDS), st.one_of(JSON, st.lists(SCALARS, max_size=3)), max_size=10),
    JSON,
)


@PROPERTY
@given(st.one_of(BODIES.map(lambda b: json.dumps(b).encode()), st.binary(max_size=100)))
def test_control_request_decoding(raw: bytes) -> None:
    targets.check_control(raw)


JOIN_OPTIONAL = {
    **{field: st.lists(STRINGS, max_size=3) for field in ("aliases", "ipv4", "ipv6", "ports", "dns")},
    **{field: st.one_of(st.none(), STRINGS) for field in ("hostname", "service", "resolv_conf")},
}


@PROPERTY
@given(
    st.fixed_dictionaries(
        {"network": st.just("front"), "netns": STRINGS, "endpoint": STRINGS, "name": STRINGS},
        optional=JOIN_OPTIONAL,
    )
)
def test_join_bodies_reach_the_registry(body: dict) -> None:
    targets.check_control(json.dumps(body).encode())
