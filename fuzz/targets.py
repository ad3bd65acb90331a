"""The properties the fuzz harnesses (fuzz/fuzz_*.py, atheris) and the property tests
(tests/test_hostile_property.py, hypothesis) check, one `check_*` function per input surface:

- `check_datagram`: a datagram through `UdpListener.datagram_received` exactly as the server runs it (fast
  paths inline, then the dispatcher, forwarded queries through a stub forwarder that relays a canned
  upstream answer with the real relay code), for four sandboxes (local names and a domain, an internal
  network, a warm forward cache, no upstream);
- `check_tcp_stream`: a byte stream cut in arbitrary chunks into `TcpConnection` through a real
  `asyncio.StreamReader` and a recording writer;
- `check_resolvconf`: parse, transform and render a resolv.conf and read our own file back;
- `check_control`: a control API request body decoded by `resolver.control.schema` and applied to a registry;
- `check_respond` and `check_relay`: the pure core alone (`respond` over UDP and TCP; an upstream's reply
  through `matches`, `verdict`, `relay` and the cache).

Each raises AssertionError (or whatever escaped the code under test) when a property fails. The rules:
no exception escapes the code under test; every reply parses (dnspython), carries the query's id, QR and
opcode, and echoes the query's question exactly or none (FORMERR, NOTIMP); a query gets exactly one reply
unless it is shorter than a header or is itself a response; UDP replies fit the client's limit and carry
an OPT only when the query had one (version 0, no options, no flag but DO); TCP replies are framed and
never truncated; bad resolv.conf text and bad request bodies give a value or a clear error, never a crash.
"""

from __future__ import annotations

import asyncio
import json
import random
import struct
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.rrset

from resolver.config import Settings
from resolver.control import schema
from resolver.core import forward as fw
from resolver.core import wire as w
from resolver.core.actions import Forward, Reply
from resolver.core.answer import respond
from resolver.core.cache import AnswerCache
from resolver.nsinject import resolvconf as rc
from resolver.registry import model as m
from resolver.registry.errors import RegistryError
from resolver.registry.registry import Registry
from resolver.registry.view import View, build_view
from resolver.server.dispatch import Dispatcher
from resolver.server.listeners import TcpConnection, UdpListener
from resolver.server.metrics import Metrics
from resolver.server.site import Site

CLIENT = ("127.0.0.1", 40000)
UPSTREAM_ADDRESS = "192.0.2.53"


# ---- the world the queries are asked in ---------------------------------------------------------------


def registry() -> Registry:
    """Two networks: `front` (domain corp.test, a service with a VIP and SRV ports, four endpoints with
    aliases and IPv4+IPv6) and the internal `vault`."""
    reg = Registry()
    reg.apply(m.CreateNetwork("front", domain="corp.test"))
    reg.apply(m.CreateNetwork("vault", internal=True))
    reg.apply(m.CreateService("front", "api", ("10.1.0.100",)))
    for i in range(4):
        reg.apply(
            m.JoinEndpoint(
                "front",
                f"ns{i}",
                f"{i:012x}ab",
                f"web{i}",
                aliases=("www",),
                ipv4=(f"10.1.0.{i + 2}",),
                ipv6=(f"fd00::{i + 2}",),
                service="api",
                ports=("http:tcp:80",),
            )
        )
    reg.apply(m.JoinEndpoint("vault", "nsv", "v1", "secret", ipv4=("10.9.0.2",)))
    return reg


def views() -> tuple[list[View], AnswerCache]:
    """A sandbox on `front` with an upstream, one on `vault` only, one on `front` without upstream; and
    a cache that already holds `cached.example A` for the first."""
    state = registry().state
    cache = AnswerCache(100, 3600)
    subjects = [
        build_view(state, "ns0", (UPSTREAM_ADDRESS,)),
        build_view(state, "nsv", ()),
        build_view(state, "ns1", ()),
    ]
    query = dns.message.make_query("cached.example", "A")
    action = respond(query.to_wire(), subjects[0], cache, 0.0)
    assert isinstance(action, Forward)
    reply = dns.message.make_response(query)
    reply.answer.append(dns.rrset.from_text("cached.example.", 300, "IN", "A", "192.0.2.7"))
    cache.store(action, reply.to_wire(), 0.0)
    return subjects, cache


def upstream_answer(forward: Forward, query_id: int) -> bytes:
    """What a well-behaved upstream answers to our upstream query: A 192.0.2.1 for A, NODATA otherwise,
    with its own OPT (so the relay must replace it)."""
    wire = fw.upstream_query(forward, query_id, forward.do)
    question_end = 12 + len(forward.question)
    records = b""
    if forward.qtype == w.A:
        records = w.encode_rr(w.QUESTION_POINTER, w.A, 60, bytes([192, 0, 2, 1]))
    opt = w.encode_opt(4096, do=forward.do)
    header = struct.pack("!HHHHHH", query_id, w.QR | w.RD | w.RA, 1, len(records) > 0, 0, 1)
    return header + wire[12:question_end] + records + opt


class StubForwarder:
    """Stands in for `resolver.server.forwarder.Forwarder`: yields once, then relays the canned upstream
    answer with the real relay code (SERVFAIL if it cannot be relayed), as the real one does."""

    def start_udp(self, forward: Forward, sandbox: str, deliver: Any) -> bool:
        return False  # the task path below is the one exercised

    async def resolve(self, forward: Forward, sandbox: str, tcp: bool) -> tuple[bytes, str]:
        await asyncio.sleep(0)
        relayed = fw.relay(upstream_answer(forward, 0x4242), forward)
        return (fw.servfail(forward), "servfail") if relayed is None else (relayed, "upstream")


class RecordingDatagrams:
    """A datagram transport that keeps what was sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, Any]] = []

    def sendto(self, data: bytes, addr: Any = None) -> None:
        self.sent.append((bytes(data), addr))

    def is_closing(self) -> bool:
        return False


class _Buffer:
    """The transport under RecordingWriter: it sends everything at once (nothing waits in a buffer)."""

    def get_write_buffer_size(self) -> int:
        return 0

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return 16384, 65536

    def abort(self) -> None:
        raise AssertionError("a connection whose replies were all taken was aborted")


class RecordingWriter:
    """The writer side of a TCP connection: keeps the bytes written and whether it was closed."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.closed = False
        self.transport = _Buffer()

    def write(self, data: bytes) -> None:
        assert not self.closed, "write after close"
        self.data += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    async def wait_closed(self) -> None:
        return None


def _sites() -> list[Site]:
    subjects, cache = views()
    dispatcher = Dispatcher(Metrics(), StubForwarder(), cache)  # type: ignore[arg-type]
    settings = Settings(tcp_idle_timeout=5.0)
    return [
        Site(view.sandbox, lambda _netns, view=view: view, None, dispatcher, settings)  # type: ignore[arg-type]
        for view in subjects
    ]


SITES = _sites()
LOOP = asyncio.new_event_loop()


# ---- what a reply must be -------------------------------------------------------------------------------


def reply_due(query: bytes) -> bool:
    """RFC 8906: everything gets an answer except what is shorter than a header or is a response."""
    return len(query) >= 12 and not query[2] & 0x80


def _query_edns(query: bytes) -> tuple[bool, int] | None:
    """(has OPT, payload) as dnspython reads the query; None when dnspython cannot read it."""
    try:
        message = dns.message.from_wire(query)
    except (dns.exception.DNSException, ValueError, TypeError):
        return None
    return message.edns >= 0, max(512, message.payload) if message.edns >= 0 else 512


def check_reply(
    query: bytes, reply: bytes, transport: str, edns: tuple[bool, int] | None = None
) -> dns.message.Message:
    """One reply to `query` over `transport` is what it must be (`edns`: what `_query_edns` says of the
    query, read once by the caller); returns it parsed."""
    message = dns.message.from_wire(reply)
    assert reply[:2] == query[:2], "reply id differs from the query's"
    flags = w.query_flags(reply)
    assert flags & w.QR, "reply without QR"
    assert flags & w.OPCODE_MASK == w.query_flags(query) & w.OPCODE_MASK, "opcode not echoed"
    qdcount = struct.unpack_from("!H", reply, 4)[0]
    if qdcount == 0:
        assert message.rcode() in (w.FORMERR, w.NOTIMP), f"no question in a {message.rcode()} reply"
    else:
        assert qdcount == 1
        asked = reply[12 : w.read_question(reply).end]
        assert query[12 : 12 + len(asked)] == asked, "question not echoed exactly"
    if flags & w.OPCODE_MASK:
        assert flags & 0x7FF0 == flags & w.OPCODE_MASK, "flags other than QR and opcode in NOTIMP"
    if message.edns >= 0:
        assert message.edns == 0 and not message.options, "OPT not version 0 or with options"
        assert not message.ednsflags & ~dns.flags.DO & 0xFFFF, "EDNS flags other than DO"
    if transport == "tcp":
        assert not flags & w.TC, "TC over TCP"
    elif edns is not None:
        has_opt, limit = edns
        assert has_opt or message.edns < 0, "OPT in the reply to a query without one"
        assert len(reply) <= limit, f"UDP reply of {len(reply)} bytes over the client's {limit}"
    return message


# ---- UDP ------------------------------------------------------------------------------------------------


async def _deliver(site: Site, listener: UdpListener, data: bytes) -> None:
    listener.datagram_received(data, CLIENT)
    while site.tasks:
        await asyncio.gather(*site.tasks)


def _one_datagram(site: Site, data: bytes) -> list[bytes]:
    """Run the listener on `data` inside the loop, as the server does, and await forwarded queries."""
    transport = RecordingDatagrams()
    listener = UdpListener(site, site.dispatcher.metrics.fast)
    listener.connection_made(transport)  # type: ignore[arg-type]
    LOOP.run_until_complete(_deliver(site, listener, data))
    assert all(addr == CLIENT for _, addr in transport.sent)
    return [wire for wire, _ in transport.sent]


def check_datagram(data: bytes) -> None:
    """`data` as a datagram to each sandbox: one valid reply when one is due, none otherwise."""
    edns = _query_edns(data)
    for site in SITES:
        replies = _one_datagram(site, data)
        assert len(replies) == reply_due(data), f"{len(replies)} replies, due: {reply_due(data)}"
        for reply in replies:
            check_reply(data, reply, "udp", edns)


# ---- TCP ------------------------------------------------------------------------------------------------


def frames(stream: bytes, max_message: int = 65535) -> list[bytes]:
    """The messages a client's byte stream holds, up to the first frame the server must close on
    (length under a header or over the limit) or that is cut short."""
    out: list[bytes] = []
    offset = 0
    while offset + 2 <= len(stream):
        size = struct.unpack_from("!H", stream, offset)[0]
        if size < 12 or size > max_message or offset + 2 + size > len(stream):
            break
        out.append(stream[offset + 2 : offset + 2 + size])
        offset += 2 + size
    return out


def split_stream(data: bytes) -> list[bytes]:
    """The reply stream as messages; every byte must belong to a complete frame."""
    out: list[bytes] = []
    offset = 0
    while offset < len(data):
        assert offset + 2 <= len(data), "reply stream ends inside a length prefix"
        size = struct.unpack_from("!H", data, offset)[0]
        assert offset + 2 + size <= len(data), "reply stream ends inside a message"
        out.append(bytes(data[offset + 2 : offset + 2 + size]))
        offset += 2 + size
    return out


def chunks(stream: bytes, seed: int) -> list[bytes]:
    """`stream` cut into pieces of 1 to 40 bytes, the cuts chosen by `seed`."""
    rng = random.Random(seed)
    out: list[bytes] = []
    offset = 0
    while offset < len(stream):
        size = rng.randint(1, 40)
        out.append(stream[offset : offset + size])
        offset += size
    return out


async def _one_connection(site: Site, pieces: list[bytes]) -> RecordingWriter:
    reader = asyncio.StreamReader()
    writer = RecordingWriter()
    connection = TcpConnection(site, reader, writer)  # type: ignore[arg-type]
    served = asyncio.ensure_future(connection.serve())
    for piece in pieces:
        reader.feed_data(piece)
        await asyncio.sleep(0)
    reader.feed_eof()
    await asyncio.wait_for(served, 10)
    return writer


def check_tcp_stream(stream: bytes, seed: int) -> None:
    """`stream`, cut in chunks by `seed`, on a TCP connection to each sandbox: one framed, valid reply per
    complete query before the first bad frame, nothing else, and the connection closed at the end."""
    for site in SITES:
        expected = [query for query in frames(stream) if reply_due(query)]
        writer = LOOP.run_until_complete(_one_connection(site, chunks(stream, seed)))
        assert writer.closed, "connection left open after EOF"
        replies = split_stream(writer.data)
        assert len(replies) == len(expected), f"{len(replies)} replies to {len(expected)} queries"
        # replies may come out of order: match each to a query with its id, those that echo a question
        # first (a header-only FORMERR or NOTIMP could otherwise take the query another reply answers)
        for reply in sorted(replies, key=lambda r: r[4:6] == b"\x00\x00"):
            matching = [q for q in expected if q[:2] == reply[:2]]
            assert matching, "reply to no query"
            errors = []
            for query in matching:
                try:
                    check_reply(query, reply, "tcp")
                    expected.remove(query)
                    break
                except AssertionError as exc:
                    errors.append(str(exc))
            else:
                raise AssertionError(f"reply matches no query: {errors}")


# ---- resolv.conf ----------------------------------------------------------------------------------------


def glibc_nameservers(text: str) -> list[str]:
    """The nameserver lines as glibc's res_init reads them (an independent reading: the keyword at the
    start of a line, then a space or a tab, then the address up to the next blank)."""
    out = []
    for line in text.split("\n"):
        if line.startswith("nameserver") and line[10:11] in (" ", "\t"):
            words = line[11:].split()
            out.append(words[0] if words else "")
    return out


def check_resolvconf(text: str) -> None:
    """Our file made from any text lists only us, keeps search, options and other lines, records the
    upstreams in a footer that reads back, and reading it back gives the original upstreams."""
    original = rc.parse(text)
    assert all(rc._is_address(s) for s in original.nameservers)
    rendered, servers = rc.sandbox_file(original)
    assert servers == rc.upstream_servers(original)
    assert rc.RESOLVER_ADDRESS not in servers
    again = rc.parse(rendered)
    assert again.nameservers == (rc.RESOLVER_ADDRESS,), again.nameservers
    assert glibc_nameservers(rendered) == [rc.RESOLVER_ADDRESS], "glibc would read another nameserver"
    assert again.search == original.search
    assert again.other_lines == original.other_lines
    assert rc.ndots_valid(again.options)
    assert rc.parse_footer(rendered) == servers
    recovered = rc.recover_original(rendered)
    assert recovered is not None
    assert recovered.nameservers == servers and recovered.search == original.search
    assert recovered.other_lines == original.other_lines
    rerendered, servers_again = rc.sandbox_file(recovered)
    assert servers_again == servers and rc.parse(rerendered) == again
    assert rc.parse(rc.render_plain(original)) == original


# ---- control API ----------------------------------------------------------------------------------------

DECODERS = {
    "create_network": (schema.create_network, m.CreateNetwork),
    "create_service": (lambda body: schema.create_service("front", body), m.CreateService),
    "join": (schema.join, m.JoinEndpoint),
    "query": (schema.query, tuple),
}


def check_control(raw: bytes) -> None:
    """A request body: decoded into a typed value or refused with InvalidValue; a decoded event applied
    to a registry changes it or is refused with a RegistryError, nothing else."""
    try:
        body = schema.decode_body(raw)
    except RegistryError as exc:
        assert exc.message
        return
    json.dumps(body)
    for decode, kind in DECODERS.values():
        try:
            value = decode(body)
        except RegistryError as exc:
            assert exc.kind == "invalid" and exc.message
            continue
        assert isinstance(value, kind)
        if isinstance(value, m.CreateNetwork | m.CreateService | m.JoinEndpoint):
            reg = registry()
            before = reg.state
            try:
                reg.apply(value)
            except RegistryError as exc:
                assert exc.message and reg.state is before


# ---- the pure core ----------------------------------------------------------------------------------------

CORE_VIEWS, CORE_CACHE = views()


def check_respond(data: bytes) -> None:
    """`respond` alone, over UDP and TCP: never raises; a Reply carries the query's id and QR."""
    for view in CORE_VIEWS:
        for transport in ("udp", "tcp"):
            action = respond(data, view, CORE_CACHE, 1.0, transport)  # type: ignore[arg-type]
            if isinstance(action, Reply):
                assert action.wire[:2] == data[:2] and action.wire[2] & 0x80, "reply without id or QR"


RELAY_QUERY = dns.message.make_query("WwW.Example.com", "A").to_wire()
RELAY_FORWARDS = [
    Forward(RELAY_QUERY, RELAY_QUERY[12:], RELAY_QUERY[12:-4].lower(), 1, (), size, edns, False, ("scope",))
    for size, edns in ((512, False), (1232, True), (65535, False))
]
RELAY_ID = 0x1234
RELAY_CACHE = AnswerCache(1000, 3600)


def check_relay(data: bytes) -> None:
    """Bytes an upstream sends back, made to carry our id and question: `relay` gives the client's id and
    fits its limit, or None; nothing raises."""
    question = RELAY_FORWARDS[0].question
    reply = struct.pack("!HH", RELAY_ID, 0x8180) + data[:8].ljust(8, b"\x00") + question + data[8:]
    reply = reply[:4] + b"\x00\x01" + reply[6:]
    if not fw.matches(reply, RELAY_ID, question):
        return
    fw.verdict(reply)
    for forward in RELAY_FORWARDS:
        relayed = fw.relay(reply, forward)
        if relayed is not None:
            assert relayed[:2] == RELAY_QUERY[:2] and len(relayed) <= forward.max_size
        RELAY_CACHE.store(forward, reply, 0.0)
        RELAY_CACHE.get(forward, 1.0)


# ---- atheris entry points: bytes in, one property checked ----------------------------------------------


def _tcp(data: bytes) -> None:
    check_tcp_stream(data[1:], data[0] if data else 0)


def _resolvconf(data: bytes) -> None:
    check_resolvconf(data.decode("utf-8", "surrogateescape"))


TARGETS = {
    "datagram": check_datagram,
    "tcp": _tcp,
    "resolvconf": _resolvconf,
    "control": check_control,
    "respond": check_respond,
    "relay": check_relay,
}
