"""Table-driven tests of the names a sandbox sees (DESIGN section 4), answered by the pure core.

Every case is a query written as DNS text (name, type) asked from one sandbox of the reference registry in
`dnscases`, and the expected reply written as text records. `*` in an expected record stands for "any
owner" or "any rdata" where the spec leaves the value to the implementation (SOA/NS contents, the owner of
the SOA of a name outside any domain).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest
from dnscases import (
    CLIENT,
    SITE,
    cid,
    forward_of,
    norm,
    query,
    records,
    reply_to,
    reverse_name,
    short,
    views,
)

from resolver.core.actions import Reply
from resolver.core.answer import respond
from resolver.registry.errors import RegistryError
from resolver.registry.model import CreateNetwork, JoinEndpoint
from resolver.registry.registry import Registry
from resolver.registry.view import View, build_view

VIEWS = views()


@dataclass(frozen=True)
class Case:
    qname: str
    qtype: str
    answer: tuple[str, ...] = ()
    rcode: str = "NOERROR"
    authority: tuple[str, ...] = ()
    additional: tuple[str, ...] = ()
    sandbox: str = CLIENT
    forward: bool = False


def _addr(owner: str, ttl: int, *addresses: str) -> tuple[str, ...]:
    return tuple(f"{owner} {ttl} IN {'AAAA' if ':' in a else 'A'} {a}" for a in addresses)


def _soa(owner: str, ttl: int) -> tuple[str, ...]:
    return (f"{owner} {ttl} IN SOA *",)


def _endpoint_cases(names: Sequence[str], suffixes: Sequence[str], ttl: int, v4: str, v6: str) -> list[Case]:
    out: list[Case] = []
    for name in names:
        for suffix in suffixes:
            owner = f"{name}{suffix}."
            out.append(Case(owner, "A", _addr(owner, ttl, v4)))
            out.append(Case(owner, "AAAA", _addr(owner, ttl, v6)))
    return out


WEB_NAMES = ("web", "www", "webhost", short("aa01"))
SITE_NAMES = ("site", "shop", "sitehost", short("bb01"))
API_TASKS = ("10.0.1.11", "10.0.1.12", "10.0.1.13")
WORKERS = ("10.0.1.21", "10.0.1.22", "10.0.1.23")
WEB_GLUE = ("web.backend. 5 IN A 10.0.1.2", "web.backend. 5 IN AAAA fd00:1::2")
NEVER_FORWARDED_TYPES = (
    "MX",
    "TXT",
    "CNAME",
    "CAA",
    "HTTPS",
    "SVCB",
    "NAPTR",
    "DS",
    "DNSKEY",
    "SPF",
    "HINFO",
)

CASES: list[Case] = [
    # primary name, alias, hostname, short id: bare and network-qualified (backend: no domain, ttl 5)
    *_endpoint_cases(WEB_NAMES, ("", ".backend"), 5, "10.0.1.2", "fd00:1::2"),
    # ... and domain-qualified too (frontend: domain example.com, ttl 30)
    *_endpoint_cases(SITE_NAMES, ("", ".frontend", ".example.com"), 30, "10.0.2.2", "fd00:2::2"),
    # services: vip mode answers the VIPs, dnsrr mode the tasks, tasks.<svc> always the tasks
    Case("api.", "A", _addr("api.", 5, "10.0.1.100")),
    Case("api.", "AAAA", _addr("api.", 5, "fd00:1::100")),
    Case("api.backend.", "A", _addr("api.backend.", 5, "10.0.1.100")),
    Case("tasks.api.", "A", _addr("tasks.api.", 5, *API_TASKS)),
    Case("tasks.api.backend.", "A", _addr("tasks.api.backend.", 5, *API_TASKS)),
    Case("workers.", "A", _addr("workers.", 5, *WORKERS)),
    Case("workers.backend.", "A", _addr("workers.backend.", 5, *WORKERS)),
    Case("tasks.workers.", "A", _addr("tasks.workers.", 5, *WORKERS)),
    Case("tasks.workers.backend.", "A", _addr("tasks.workers.backend.", 5, *WORKERS)),
    # case-insensitive; the question's spelling is echoed in the question and the answer owners
    Case("WeB.", "A", _addr("WeB.", 5, "10.0.1.2")),
    Case("WWW.BACKEND.", "AAAA", _addr("WWW.BACKEND.", 5, "fd00:1::2")),
    Case("Site.Example.COM.", "A", _addr("Site.Example.COM.", 30, "10.0.2.2")),
    Case("TASKS.Api.", "A", _addr("TASKS.Api.", 5, *API_TASKS)),
    Case("AA0100000000.Backend.", "A", _addr("AA0100000000.Backend.", 5, "10.0.1.2")),
    # PTR: the primary name qualified with the domain, else with the network name
    Case(reverse_name("10.0.1.2"), "PTR", (f"{reverse_name('10.0.1.2')} 5 IN PTR web.backend.",)),
    Case(reverse_name("fd00:1::2"), "PTR", (f"{reverse_name('fd00:1::2')} 5 IN PTR web.backend.",)),
    Case(reverse_name("10.0.1.11"), "PTR", (f"{reverse_name('10.0.1.11')} 5 IN PTR api1.backend.",)),
    Case(reverse_name("10.0.2.2"), "PTR", (f"{reverse_name('10.0.2.2')} 30 IN PTR site.example.com.",)),
    Case(reverse_name("fd00:2::2"), "PTR", (f"{reverse_name('fd00:2::2')} 30 IN PTR site.example.com.",)),
    Case("2.1.0.10.IN-ADDR.Arpa.", "PTR", ("2.1.0.10.IN-ADDR.Arpa. 5 IN PTR web.backend.",)),
    # a service VIP answers the service name (so its reverse name is never forwarded)
    Case(reverse_name("10.0.1.100"), "PTR", (f"{reverse_name('10.0.1.100')} 5 IN PTR api.backend.",)),
    Case(reverse_name("fd00:1::100"), "PTR", (f"{reverse_name('fd00:1::100')} 5 IN PTR api.backend.",)),
    # SRV for named ports: one per endpoint or task, with A/AAAA glue
    Case("_http._tcp.web.", "SRV", ("_http._tcp.web. 5 IN SRV 0 0 80 web.backend.",), additional=WEB_GLUE),
    Case(
        "_http._tcp.web.backend.",
        "SRV",
        ("_http._tcp.web.backend. 5 IN SRV 0 0 80 web.backend.",),
        additional=WEB_GLUE,
    ),
    Case("_http._tcp.www.", "SRV", ("_http._tcp.www. 5 IN SRV 0 0 80 web.backend.",), additional=WEB_GLUE),
    Case(
        "_HTTP._tcp.Api.",
        "SRV",
        tuple(f"_HTTP._tcp.Api. 5 IN SRV 0 0 8080 api{i}.backend." for i in (1, 2, 3)),
        additional=tuple(f"api{i}.backend. 5 IN A 10.0.1.1{i}" for i in (1, 2, 3)),
    ),
    Case(
        "_https._tcp.site.example.com.",
        "SRV",
        ("_https._tcp.site.example.com. 30 IN SRV 0 0 443 site.example.com.",),
        additional=("site.example.com. 30 IN A 10.0.2.2", "site.example.com. 30 IN AAAA fd00:2::2"),
    ),
    # ANY from local data
    Case("web.", "ANY", (*_addr("web.", 5, "10.0.1.2", "fd00:1::2"),)),
    Case("tasks.workers.", "ANY", _addr("tasks.workers.", 5, *WORKERS)),
    Case(reverse_name("10.0.1.2"), "ANY", (f"{reverse_name('10.0.1.2')} 5 IN PTR web.backend.",)),
    Case("example.com.", "ANY", ("example.com. 30 IN SOA *", "example.com. 30 IN NS *")),
    # NODATA with an SOA for every other type of a local name (and AAAA of a v4-only name)
    Case("db4.", "AAAA", authority=_soa("*", 5)),
    Case("db4.backend.", "AAAA", authority=_soa("*", 5)),
    Case("workers.", "AAAA", authority=_soa("*", 5)),
    Case("site.example.com.", "MX", authority=_soa("example.com.", 30)),
    Case("Site.Example.Com.", "TXT", authority=_soa("example.com.", 30)),
    Case(reverse_name("10.0.1.2"), "A", authority=_soa("*", 5)),
    *(Case("web.", t, authority=_soa("*", 5)) for t in NEVER_FORWARDED_TYPES),
    *(Case("api.backend.", t, authority=_soa("*", 5)) for t in ("MX", "TXT", "CNAME")),
    *(Case("shop.example.com.", t, authority=_soa("example.com.", 30)) for t in ("MX", "TXT", "CAA")),
    # under a network domain but not registered: NXDOMAIN, AA, SOA
    Case("nope.example.com.", "A", rcode="NXDOMAIN", authority=_soa("example.com.", 30)),
    Case("NoPe.Example.COM.", "MX", rcode="NXDOMAIN", authority=_soa("example.com.", 30)),
    Case("a.b.example.com.", "AAAA", rcode="NXDOMAIN", authority=_soa("example.com.", 30)),
    Case("web.example.com.", "A", rcode="NXDOMAIN", authority=_soa("example.com.", 30)),
    Case("secretdb.example.com.", "A", rcode="NXDOMAIN", authority=_soa("example.com.", 30)),
    Case("_http._tcp.site.example.com.", "SRV", rcode="NXDOMAIN", authority=_soa("example.com.", 30)),
    # the domain apex answers SOA and NS authoritatively
    Case("example.com.", "SOA", ("example.com. 30 IN SOA *",)),
    Case("example.com.", "NS", ("example.com. 30 IN NS *",)),
    Case("Example.COM.", "SOA", ("Example.COM. 30 IN SOA *",)),
    Case("example.com.", "A", authority=_soa("example.com.", 30)),
    # isolation: names and reverse names of networks the sandbox is not on are forwarded, never answered
    *(
        Case(name, qtype, forward=True)
        for name, qtype in (
            ("secretdb.", "A"),
            ("secretdb.isolated.", "A"),
            ("secretdb.corp.internal.", "A"),
            ("secretdb.corp.internal.", "AAAA"),
            ("anything.corp.internal.", "A"),
            ("corp.internal.", "SOA"),
            (short("dd01") + ".", "A"),
            (reverse_name("10.0.9.2"), "PTR"),
            (reverse_name("fd00:9::2"), "PTR"),
            ("sealed.", "A"),
            ("sealed.airgap.", "A"),
            (reverse_name("10.0.5.2"), "PTR"),
            ("lonely.", "A"),
            ("example.org.", "A"),
            ("web.frontend.", "A"),
        )
    ),
    *(
        Case(name, qtype, sandbox=SITE, forward=True)
        for name, qtype in (
            ("web.", "A"),
            ("web.backend.", "AAAA"),
            ("tasks.api.", "A"),
            ("_http._tcp.web.", "SRV"),
            (reverse_name("10.0.1.2"), "PTR"),
            (reverse_name("fd00:1::2"), "PTR"),
        )
    ),
]


def _expected(texts: Sequence[str]) -> list[str]:
    return sorted(" ".join(t.split()) if "*" in t.split() else norm(t) for t in texts)


def _shaped(actual: list[str], expected: Sequence[str]) -> list[str]:
    """Replace the owner or rdata of actual records by `*` where the expected record of that type has `*`."""
    wild_owner = {t.split()[3] for t in expected if t.split()[0] == "*"}
    wild_rdata = {t.split()[3] for t in expected if t.split()[4:] == ["*"]}
    out = []
    for record in actual:
        owner, ttl, cls, typ, rdata = record.split(None, 4)
        out.append(
            " ".join(
                (
                    "*" if typ in wild_owner else owner,
                    ttl,
                    cls,
                    typ,
                    "*" if typ in wild_rdata else rdata,
                )
            )
        )
    return sorted(out)


def _case_id(case: Case) -> str:
    where = "" if case.sandbox == CLIENT else f"@{case.sandbox.rsplit('/', 1)[-1]}"
    return f"{case.qname}{case.qtype}{where}"


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_names(case: Case) -> None:
    view = VIEWS[case.sandbox]
    wire = query(case.qname, case.qtype, qid=0xBEEF)
    if case.forward:
        action = forward_of(view, wire)
        assert action.upstreams == view.upstreams
        assert action.qtype == dns.rdatatype.from_text(case.qtype)
        assert action.query == wire
        return
    reply = reply_to(view, wire)
    assert reply.id == 0xBEEF
    assert reply.rcode() == dns.rcode.from_text(case.rcode)
    assert reply.flags & dns.flags.QR
    assert reply.flags & dns.flags.AA, "local answers are authoritative"
    assert reply.flags & dns.flags.RD, "RD is echoed"
    assert reply.flags & dns.flags.RA, "the sandbox can recurse through its upstreams"
    assert not reply.flags & dns.flags.TC
    assert [str(q.name) for q in reply.question] == [case.qname], "the question's spelling is echoed"
    assert reply.question[0].rdtype == dns.rdatatype.from_text(case.qtype)
    assert reply.edns == -1, "no OPT in the reply when the query had none"
    assert _shaped(records(reply.answer), case.answer) == _expected(case.answer)
    assert _shaped(records(reply.authority), case.authority) == _expected(case.authority)
    assert _shaped(records(reply.additional), case.additional) == _expected(case.additional)


def test_table_is_big_enough() -> None:
    assert len(CASES) >= 100


@pytest.mark.parametrize("qtype", ["A", "AAAA", "PTR", "SRV", "ANY", "MX", "TXT", "SOA", "NS", "TYPE65280"])
@pytest.mark.parametrize("name", ["web.", "WEB.backend.", "tasks.api.", "site.example.com.", "example.com."])
def test_local_names_are_never_forwarded(name: str, qtype: str) -> None:
    for transport in ("udp", "tcp"):
        action = respond(query(name, qtype), VIEWS[CLIENT], None, 0.0, transport)
        assert isinstance(action, Reply)
        reply = dns.message.from_wire(action.wire)
        assert reply.rcode() == dns.rcode.NOERROR
        assert reply.flags & dns.flags.AA


def test_first_network_wins_a_name_both_define() -> None:
    registry = Registry()
    for event in (
        CreateNetwork("one"),
        CreateNetwork("two"),
        JoinEndpoint("one", "/run/netns/a", cid("01"), "db", ipv4=("10.1.0.2",)),
        JoinEndpoint("two", "/run/netns/b", cid("02"), "db", ipv4=("10.2.0.2",)),
        JoinEndpoint("two", "/run/netns/c", cid("03"), "c2", ipv4=("10.2.0.3",)),
        JoinEndpoint("one", "/run/netns/c", cid("03"), "c1", ipv4=("10.1.0.3",)),
    ):
        registry.apply(event)
    view: View = build_view(registry.state, "/run/netns/c", ("192.0.2.1",))
    reply = reply_to(view, query("db", "A"))
    assert records(reply.answer) == [norm("db. 5 IN A 10.2.0.2")]
    assert records(reply_to(view, query("db.one", "A")).answer) == [norm("db.one. 5 IN A 10.1.0.2")]


def _longest_accepted_domain() -> str:
    """The longest all-'a' domain (labels of 49) the registry accepts, whatever its limit is."""
    for length in range(253, 0, -1):
        labels = ["a" * 49] * (length // 50) + (["a" * (length % 50)] if length % 50 else [])
        domain = ".".join(labels)
        if len(domain) != length or domain.endswith("."):
            continue
        try:
            Registry().apply(CreateNetwork("n", domain=domain))
        except RegistryError:
            continue
        return domain
    raise AssertionError("no domain accepted")


def _long_view(domain: str, name: str) -> View:
    registry = Registry()
    registry.apply(CreateNetwork("n", domain=domain))
    registry.apply(
        JoinEndpoint(
            "n",
            "/run/netns/s",
            cid("01"),
            name,
            ipv4=("10.0.0.2",),
            ipv6=("fd00::2",),
            ports=("http:tcp:80",),
        )
    )
    return build_view(registry.state, "/run/netns/s", ("192.0.2.1",))


def test_longest_names_the_registry_accepts_are_answered() -> None:
    """Whatever length limits the registry sets, everything it accepts can be answered without raising:
    the SOA contact, PTR and SRV targets of a 63-character name under the longest domain."""
    domain = _longest_accepted_domain()
    assert len(domain) >= 100
    name = "w" * 63
    view = _long_view(domain, name)
    asked = [
        (domain, "SOA"),
        (domain, "NS"),
        (domain, "A"),
        (name, "A"),
        (name, "MX"),
        (name, "ANY"),
        (reverse_name("10.0.0.2"), "PTR"),
        (reverse_name("fd00::2"), "PTR"),
        ("_http._tcp." + name, "SRV"),
    ]
    if len(domain) <= 251:
        asked.append(("x." + domain, "A"))
    if len(domain) + 64 <= 253:
        asked.append((f"{name}.{domain}", "AAAA"))
    for qname, qtype in asked:
        for transport in ("udp", "tcp"):
            action = respond(query(qname, qtype), view, None, 0.0, transport)
            assert isinstance(action, Reply), (qname, qtype)
            dns.message.from_wire(action.wire)
    ptr = reply_to(view, query(reverse_name("10.0.0.2"), "PTR"))
    assert records(ptr.answer) == [norm(f"{reverse_name('10.0.0.2')} 5 IN PTR {name}.{domain}.")]
