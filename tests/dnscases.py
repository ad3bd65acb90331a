"""Shared helpers for the core and registry tests: a reference registry, query builders and reply readers.

Queries are written as DNS text and built with dnspython (`make_query(...).to_wire()`); replies are parsed
with `dns.message.from_wire` and compared as text records such as ``"web.backend. 5 IN A 10.0.1.2"``.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable, Sequence

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from resolver.core.actions import Action, Forward, Reply
from resolver.core.answer import Transport, respond
from resolver.registry.model import (
    CreateNetwork,
    CreateService,
    Event,
    JoinEndpoint,
    SetSandboxUpstreams,
)
from resolver.registry.registry import Registry
from resolver.registry.view import View, build_view

# ---- the reference registry ---------------------------------------------------------------------------

CLIENT = "/run/netns/client"  # on backend (ttl 5) and frontend (domain example.com, ttl 30)
SITE = "/run/netns/site"  # on frontend only
SEALED = "/run/netns/sealed"  # on the internal network only
MIXED = "/run/netns/mixed"  # on the internal network, then on backend
LONELY = "/run/netns/lonely"  # on a normal network, with no upstream server at all
SANDBOX_UPSTREAM = "192.0.2.53"
HOST_SERVERS = ("192.0.2.1",)
BIG_TASKS = 40


def cid(tag: str) -> str:
    """A 64-character container id whose 12-character short id is `tag` padded with zeros."""
    return (tag + "0" * 64)[:64]


def short(tag: str) -> str:
    return cid(tag)[:12]


WEB_ID = cid("aa01")
SITE_ID = cid("bb01")
CLIENT_ID = cid("cc01")


def world_events() -> list[Event]:
    """Every event of the reference registry, in order."""
    events: list[Event] = [
        CreateNetwork("backend"),
        CreateNetwork("frontend", domain="example.com", ttl=30),
        CreateNetwork("isolated", domain="corp.internal"),
        CreateNetwork("airgap", internal=True),
        CreateNetwork("lonelynet"),
        CreateService("backend", "api", vips=("10.0.1.100", "fd00:1::100"), mode="vip"),
        CreateService("backend", "workers", mode="dnsrr"),
        CreateService("backend", "big", mode="dnsrr"),
        CreateService("backend", "rr", mode="dnsrr"),
        JoinEndpoint(
            "backend",
            "/run/netns/web",
            WEB_ID,
            "web",
            aliases=("www",),
            hostname="webhost",
            ipv4=("10.0.1.2",),
            ipv6=("fd00:1::2",),
            ports=("http:tcp:80",),
        ),
        JoinEndpoint("backend", "/run/netns/db4", cid("aa02"), "db4", ipv4=("10.0.1.3",)),
        JoinEndpoint(
            "backend",
            "/run/netns/api1",
            cid("aa11"),
            "api1",
            ipv4=("10.0.1.11",),
            service="api",
            ports=("http:tcp:8080",),
        ),
        JoinEndpoint(
            "backend",
            "/run/netns/api2",
            cid("aa12"),
            "api2",
            ipv4=("10.0.1.12",),
            service="api",
            ports=("http:tcp:8080",),
        ),
        JoinEndpoint(
            "backend",
            "/run/netns/api3",
            cid("aa13"),
            "api3",
            ipv4=("10.0.1.13",),
            service="api",
            ports=("http:tcp:8080",),
        ),
        *(
            JoinEndpoint(
                "backend",
                f"/run/netns/w{i}",
                cid(f"aa2{i}"),
                f"w{i}",
                ipv4=(f"10.0.1.2{i}",),
                service="workers",
            )
            for i in (1, 2, 3)
        ),
        *(
            JoinEndpoint(
                "backend", f"/run/netns/rr{i}", cid(f"aa5{i}"), f"rr{i}", ipv4=(f"10.0.1.5{i}",), service="rr"
            )
            for i in (1, 2, 3, 4, 5)
        ),
        JoinEndpoint(
            "backend", "/run/netns/trio", cid("aa31"), "trio", ipv4=("10.0.1.31", "10.0.1.32", "10.0.1.33")
        ),
        JoinEndpoint(
            "backend",
            "/run/netns/quint",
            cid("aa41"),
            "quint",
            ipv4=tuple(f"10.0.1.4{i}" for i in range(1, 6)),
            ipv6=tuple(f"fd00:1::4{i}" for i in range(1, 6)),
        ),
        JoinEndpoint(
            "backend",
            "/run/netns/dual",
            cid("aa61"),
            "dual",
            ipv4=("10.0.1.61", "10.0.1.62"),
            ipv6=("fd00:1::61", "fd00:1::62", "fd00:1::63"),
        ),
        *(
            JoinEndpoint(
                "backend",
                f"/run/netns/big{i}",
                cid(f"ab{i:02d}"),
                f"big{i}",
                ipv4=(f"10.0.3.{i}",),
                service="big",
            )
            for i in range(1, BIG_TASKS + 1)
        ),
        JoinEndpoint("backend", CLIENT, CLIENT_ID, "client", ipv4=("10.0.1.250",)),
        JoinEndpoint(
            "frontend",
            SITE,
            SITE_ID,
            "site",
            aliases=("shop",),
            hostname="sitehost",
            ipv4=("10.0.2.2",),
            ipv6=("fd00:2::2",),
            ports=("https:tcp:443",),
        ),
        JoinEndpoint("frontend", CLIENT, CLIENT_ID, "client", ipv4=("10.0.2.250",)),
        JoinEndpoint(
            "isolated", "/run/netns/secret", cid("dd01"), "secretdb", ipv4=("10.0.9.2",), ipv6=("fd00:9::2",)
        ),
        JoinEndpoint("airgap", SEALED, cid("ee01"), "sealed", ipv4=("10.0.5.2",)),
        JoinEndpoint("airgap", MIXED, cid("ee02"), "mixed", ipv4=("10.0.5.3",)),
        JoinEndpoint("backend", MIXED, cid("ee02"), "mixed", ipv4=("10.0.1.240",)),
        JoinEndpoint("lonelynet", LONELY, cid("ff01"), "lonely", ipv4=("10.0.7.2",)),
        SetSandboxUpstreams(CLIENT, (SANDBOX_UPSTREAM,)),
        SetSandboxUpstreams(SEALED, (SANDBOX_UPSTREAM,)),
        SetSandboxUpstreams(MIXED, (SANDBOX_UPSTREAM,)),
    ]
    return events


def world() -> Registry:
    """A fresh reference registry."""
    registry = Registry()
    for event in world_events():
        registry.apply(event)
    return registry


def views(registry: Registry | None = None) -> dict[str, View]:
    """Fresh, independent views of the reference sandboxes (fresh tables, so fresh rotation counters)."""
    state = (registry or world()).state
    found = {netns: build_view(state, netns, HOST_SERVERS) for netns in (CLIENT, SITE, SEALED, MIXED)}
    found[LONELY] = build_view(state, LONELY, ())
    return found


# ---- queries ------------------------------------------------------------------------------------------


def query(
    name: str,
    rdtype: str | int = "A",
    *,
    rdclass: str | int = "IN",
    qid: int = 0x1234,
    rd: bool = True,
    flags: int = 0,
    edns: int | None = None,
    payload: int = 1232,
    do: bool = False,
    options: Sequence[dns.edns.Option] | None = None,
) -> bytes:
    """Wire form of a one-question query; `edns` None sends no OPT record (unless `do` asks for one)."""
    if do and edns is None:
        edns = 0
    message = dns.message.make_query(
        name,
        rdtype,
        rdclass,
        use_edns=edns if edns is not None else False,
        want_dnssec=do,
        payload=payload,
        options=list(options) if options else None,
        id=qid,
        flags=(dns.flags.RD if rd else 0) | flags,
    )
    return message.to_wire()


def header(
    qid: int = 0x1234, flags: int = 0x0100, qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0
) -> bytes:
    return struct.pack("!HHHHHH", qid, flags, qd, an, ns, ar)


def name_wire(name: str) -> bytes:
    """Uncompressed wire form of a dotted name."""
    return dns.name.from_text(name).to_wire()


def question_wire(name: str, qtype: int = 1, qclass: int = 1) -> bytes:
    return name_wire(name) + struct.pack("!HH", qtype, qclass)


# ---- replies ------------------------------------------------------------------------------------------


def ask(view: View, wire: bytes, transport: Transport = "udp") -> Action:
    return respond(wire, view, None, 0.0, transport)


def reply_to(view: View, wire: bytes, transport: Transport = "udp") -> dns.message.Message:
    """Ask and parse the Reply (fails the test if the action is not a Reply)."""
    action = ask(view, wire, transport)
    assert isinstance(action, Reply), f"expected a Reply, got {action!r}"
    return dns.message.from_wire(action.wire)


def forward_of(view: View, wire: bytes, transport: Transport = "udp") -> Forward:
    action = ask(view, wire, transport)
    assert isinstance(action, Forward), f"expected a Forward, got {action!r}"
    return action


def _rdata_text(rdtype: int, rdata: object) -> str:
    if rdtype == dns.rdatatype.SRV:
        # priority and weight are the implementation's choice; port and target are the spec's
        return f"{rdata.port} {rdata.target}"  # type: ignore[attr-defined]
    return rdata.to_text()  # type: ignore[attr-defined]


def records(section: Iterable[dns.rrset.RRset]) -> list[str]:
    """Every record of a section as `owner ttl class type rdata` (owner in the reply's spelling)."""
    out: list[str] = []
    for rrset in section:
        cls = dns.rdataclass.to_text(rrset.rdclass)
        typ = dns.rdatatype.to_text(rrset.rdtype)
        for rdata in rrset:
            out.append(f"{rrset.name} {rrset.ttl} {cls} {typ} {_rdata_text(rrset.rdtype, rdata)}")
    return out


def norm(text: str) -> str:
    """Normalise one expected record written as text (e.g. compressed IPv6 forms)."""
    owner, ttl, cls, typ, rdata = text.split(None, 4)
    rrset = dns.rrset.from_text(owner, int(ttl), cls, typ, rdata)
    return records([rrset])[0]


def norms(texts: Iterable[str]) -> list[str]:
    return sorted(norm(t) for t in texts)


def reverse_name(address: str) -> str:
    """The in-addr.arpa / ip6.arpa name of an address, as text with a trailing dot."""
    return ipaddress.ip_address(address).reverse_pointer + "."


def first_answer(reply: bytes | dns.message.Message) -> str:
    """The rdata text of the first answer record of a reply (wire or parsed)."""
    message = dns.message.from_wire(reply) if isinstance(reply, bytes) else reply
    rrset = message.answer[0]
    return _rdata_text(rrset.rdtype, rrset[0])
