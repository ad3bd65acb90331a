"""Three sandboxes on two networks, one sandbox on both: every client inside each sandbox (dig, glibc
`getent ahosts` through the rewritten resolv.conf, busybox nslookup) resolves exactly the names of its own
networks, forward and reverse, over UDP, TCP and pipelined TCP, and nothing of the network it is not on.

Topology (real veth interfaces on two bridges, each in its own hub namespace):

    front (domain front.test, TTL 30)      back (no domain, TTL 5)
    A  web (alias www, hostname web-host)  10.31.0.2
    B  app (alias api)                     10.31.0.3   B  app   10.32.0.3
                                                       C  db (alias pg)   10.32.0.4

The daemon has no upstream servers, so a name that is not answered locally gets SERVFAIL.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .nstools import (
    LISTEN,
    NETNS_ETC,
    Daemon,
    DigResult,
    Namespaces,
    dig,
    getent_ahosts,
    in_netns,
    netns_python,
    nslookup,
    require,
    run,
)

pytestmark = pytest.mark.netns

EP_A = "a1f3c0de5eed0000000000000000000000000000000000000000000000000001"
EP_B = "b2e4d1cf6ffe0000000000000000000000000000000000000000000000000002"
EP_C = "c3d5e2b07aaf0000000000000000000000000000000000000000000000000003"
WEB, APP_FRONT, APP_BACK, DB = "10.31.0.2", "10.31.0.3", "10.32.0.3", "10.32.0.4"
TTL = {"10.31": 30, "10.32": 5}

# Names each sandbox resolves locally, with their exact addresses.
_A_FRONT = {
    "web": [WEB],
    "www": [WEB],
    "web-host": [WEB],
    EP_A[:12]: [WEB],
    "web.front": [WEB],
    "web.front.test": [WEB],
    "www.front.test": [WEB],
    "web-host.front.test": [WEB],
    "api": [APP_FRONT],
    "api.front": [APP_FRONT],
    "app.front": [APP_FRONT],
    "app.front.test": [APP_FRONT],
}
_C_BACK = {
    "db": [DB],
    "pg": [DB],
    EP_C[:12]: [DB],
    "db.back": [DB],
    "pg.back": [DB],
    "app.back": [APP_BACK],
}
VISIBLE: dict[str, dict[str, list[str]]] = {
    "A": {**_A_FRONT, "app": [APP_FRONT]},
    "B": {**_A_FRONT, **_C_BACK, "web": [WEB]},
    "C": {**_C_BACK, "app": [APP_BACK]},
}
# Names that are not answered locally (forwarded; no upstream, so SERVFAIL and no answer).
NOT_LOCAL = {
    "A": ["db", "pg", EP_C[:12], "db.back", "pg.back", "app.back"],
    "B": ["nothere", "nothere.back"],
    "C": ["web", "www", "web-host", "api", EP_A[:12], "web.front", "app.front", "web.front.test"],
}
# Names under a domain of the sandbox that nobody registered: NXDOMAIN, authoritative, with the SOA.
NXDOMAIN = {
    "A": ["db.front.test", "pg.front.test", "nothere.front.test"],
    "B": ["db.front.test", "nothere.front.test"],
    "C": [],
}
REVERSE = {
    "A": {WEB: "web.front.test.", APP_FRONT: "app.front.test."},
    "B": {WEB: "web.front.test.", APP_FRONT: "app.front.test.", APP_BACK: "app.back.", DB: "db.back."},
    "C": {APP_BACK: "app.back.", DB: "db.back."},
}
REVERSE_NOT_LOCAL = {"A": [APP_BACK, DB], "B": [], "C": [WEB, APP_FRONT]}
SANDBOXES = ["A", "B", "C"]


@dataclass(frozen=True)
class World:
    daemon: Daemon
    ns: dict[str, str]


@pytest.fixture(scope="module")
def world(module_daemon: Daemon, module_netns: Namespaces) -> Iterator[World]:
    require("busybox", "getent")
    a, b, c = module_netns.add(), module_netns.add(), module_netns.add()
    front, back = module_netns.lan(), module_netns.lan()
    front.attach(a, f"{WEB}/24")
    front.attach(b, f"{APP_FRONT}/24")
    back.attach(b, f"{APP_BACK}/24")
    back.attach(c, f"{DB}/24")
    d = module_daemon
    d.ok("network", "create", "front", "--domain", "front.test", "--ttl", "30")
    d.ok("network", "create", "back")
    d.join("front", a, EP_A, "web", "--alias", "www", "--hostname", "web-host", "--ipv4", WEB)
    d.join("front", b, EP_B, "app", "--alias", "api", "--ipv4", APP_FRONT)
    d.join("back", b, EP_B, "app", "--ipv4", APP_BACK)
    d.join("back", c, EP_C, "db", "--alias", "pg", "--ipv4", DB)
    yield World(d, {"A": a, "B": b, "C": c})


def _ttl(address: str) -> int:
    return TTL[".".join(address.split(".")[:2])]


def _check_local(result: DigResult, name: str, expected: list[str]) -> str | None:
    """None when `result` is the exact local answer for `name`, else what is wrong."""
    problems = []
    if result.status != "NOERROR" or not result.authoritative:
        problems.append(f"status {result.status} flags {sorted(result.flags)}")
    if sorted(result.addresses) != sorted(expected):
        problems.append(f"addresses {result.addresses} != {expected}")
    for record in result.answer:
        if record.name != f"{name}." or record.ttl != _ttl(record.data):
            problems.append(f"record {record} (expected owner {name}. ttl {_ttl(record.data)})")
    return f"{name}: {'; '.join(problems)}" if problems else None


def _check_not_local(result: DigResult, name: str) -> str | None:
    if result.status == "SERVFAIL" and not result.answer and not result.authoritative:
        return None
    return f"{name}: expected no local answer (SERVFAIL), got {result.status} {result.answer}"


def _check_nxdomain(result: DigResult, name: str) -> str | None:
    soa = [r.name for r in result.authority if r.rdtype == "SOA"]
    if result.status == "NXDOMAIN" and result.authoritative and not result.answer and soa == ["front.test."]:
        return None
    return f"{name}: expected authoritative NXDOMAIN with the front.test. SOA, got\n{result}"


# ---- UDP, dig ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("box", SANDBOXES)
def test_dig_resolves_exactly_the_names_of_its_networks(world: World, box: str) -> None:
    ns = world.ns[box]
    problems = [_check_local(dig(ns, name), name, want) for name, want in VISIBLE[box].items()]
    problems += [_check_not_local(dig(ns, name), name) for name in NOT_LOCAL[box]]
    problems += [_check_nxdomain(dig(ns, name), name) for name in NXDOMAIN[box]]
    assert [p for p in problems if p] == []


@pytest.mark.parametrize("box", SANDBOXES)
def test_dig_reverse_answers_name_dot_domain_or_network(world: World, box: str) -> None:
    ns = world.ns[box]
    problems = []
    for address, want in REVERSE[box].items():
        result = dig(ns, "-x", address)
        if result.status != "NOERROR" or not result.authoritative or result.ptr_names != [want]:
            problems.append(f"-x {address}: expected [{want}], got {result.status} {result.ptr_names}")
    for address in REVERSE_NOT_LOCAL[box]:
        problems.append(_check_not_local(dig(ns, "-x", address), f"-x {address}"))
    assert [p for p in problems if p] == []


def test_a_name_on_both_networks_answers_from_the_network_joined_first(world: World) -> None:
    """B is `app` on both networks; B joined front first, and the first network wins (as in Docker)."""
    result = dig(world.ns["B"], "app")
    assert (result.status, result.authoritative) == ("NOERROR", True), str(result)
    assert result.addresses == [APP_FRONT]


def test_answers_echo_the_spelling_of_the_question(world: World) -> None:
    result = dig(world.ns["A"], "WeB.FrOnT.TeSt")
    assert [(r.name, r.data) for r in result.answer] == [("WeB.FrOnT.TeSt.", WEB)]


def test_a_local_name_without_aaaa_answers_nodata_with_soa(world: World) -> None:
    result = dig(world.ns["A"], "web.front.test", "AAAA")
    assert (result.status, result.authoritative, result.answer) == ("NOERROR", True, [])
    assert [(r.name, r.rdtype) for r in result.authority] == [("front.test.", "SOA")]


# ---- glibc and busybox --------------------------------------------------------------------------------


@pytest.mark.parametrize("box", SANDBOXES)
def test_resolv_conf_points_at_the_resolver(world: World, box: str) -> None:
    text = (NETNS_ETC / world.ns[box] / "resolv.conf").read_text()
    nameservers = [line.split()[1] for line in text.splitlines() if line.startswith("nameserver")]
    assert nameservers == [LISTEN]
    assert "options ndots:0" in text.splitlines()
    shown = run(in_netns(world.ns[box], "cat", "/etc/resolv.conf"), check=True).stdout
    assert shown == text, "ip netns exec does not show the rewritten file"


@pytest.mark.parametrize("box", SANDBOXES)
def test_getent_ahosts_resolves_exactly_the_names_of_its_networks(world: World, box: str) -> None:
    ns = world.ns[box]
    problems = []
    for name, want in VISIBLE[box].items():
        rc, addresses = getent_ahosts(ns, name)
        if (rc, sorted(addresses)) != (0, sorted(want)):
            problems.append(f"{name}: expected (0, {want}), got ({rc}, {addresses})")
    for name in NOT_LOCAL[box] + NXDOMAIN[box]:
        rc, addresses = getent_ahosts(ns, name)
        if (rc, addresses) != (2, []):
            problems.append(f"{name}: expected not found (2, []), got ({rc}, {addresses})")
    assert problems == []


@pytest.mark.parametrize("box", SANDBOXES)
def test_busybox_nslookup_resolves_exactly_the_names_of_its_networks(world: World, box: str) -> None:
    ns = world.ns[box]
    problems = []
    for name, want in VISIBLE[box].items():
        result = nslookup(ns, name)
        if (result.rc, sorted(result.addresses)) != (0, sorted(want)):
            problems.append(f"{name}: expected (0, {want}), got ({result.rc}, {result.addresses})")
    for address, want in REVERSE[box].items():
        result = nslookup(ns, address)
        if (result.rc, result.names) != (0, [want.rstrip(".")]):
            problems.append(f"{address}: expected {want}, got ({result.rc}, {result.names})")
    for name, error in [(n, "SERVFAIL") for n in NOT_LOCAL[box]] + [(n, "NXDOMAIN") for n in NXDOMAIN[box]]:
        result = nslookup(ns, name)
        if (result.rc, result.addresses, result.error) != (1, [], error):
            problems.append(f"{name}: expected (1, [], {error}), got\n{result.output}")
    assert problems == []


def test_resolved_address_is_reachable_over_the_lan(world: World) -> None:
    """The names stand for real interfaces: A resolves `app` and pings it, C resolves `db.back`."""
    for box, name in (("A", "app"), ("C", "app"), ("B", "db")):
        addresses = dig(world.ns[box], name).addresses
        assert len(addresses) == 1, (box, name, addresses)
        ping = run(in_netns(world.ns[box], "busybox", "ping", "-c", "1", "-W", "2", addresses[0]))
        assert ping.returncode == 0, ping.stdout + ping.stderr


# ---- TCP ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("box", SANDBOXES)
def test_dig_over_tcp(world: World, box: str) -> None:
    ns = world.ns[box]
    name, want = next(iter(VISIBLE[box].items()))
    assert _check_local(dig(ns, name, tcp=True), name, want) is None
    address, ptr = next(iter(REVERSE[box].items()))
    assert dig(ns, "-x", address, tcp=True).ptr_names == [ptr]
    if NXDOMAIN[box]:
        assert _check_nxdomain(dig(ns, NXDOMAIN[box][0], tcp=True), NXDOMAIN[box][0]) is None


PIPELINE_CLIENT = r"""
import json, socket, struct, sys
import dns.message, dns.rcode, dns.rdatatype

names = sys.argv[1:]
sent = {}
payload = b""
for i, name in enumerate(names):
    query = dns.message.make_query(name, "A")
    query.id = 4242 + i
    sent[query.id] = name
    wire = query.to_wire()
    payload += struct.pack("!H", len(wire)) + wire
with socket.create_connection(("127.0.0.11", 53), timeout=5) as sock:
    sock.sendall(payload)  # every query back to back, before reading any answer
    stream = sock.makefile("rb")
    answers = {}
    while len(answers) < len(names):
        (length,) = struct.unpack("!H", stream.read(2))
        reply = dns.message.from_wire(stream.read(length))
        answers[reply.id] = {
            "qname": reply.question[0].name.to_text(),
            "rcode": dns.rcode.to_text(reply.rcode()),
            "addresses": sorted(r.address for rrset in reply.answer for r in rrset
                                if r.rdtype == dns.rdatatype.A),
        }
print(json.dumps({"sent": sent, "answers": answers}))
"""


def test_pipelined_queries_on_one_tcp_connection(world: World) -> None:
    names = ["web", "db", "app.front", "api.front.test", "nothere.front.test"]
    out = netns_python(world.ns["B"], PIPELINE_CLIENT, *names)
    answers = {int(k): v for k, v in out["answers"].items()}
    assert answers == {
        4242: {"qname": "web.", "rcode": "NOERROR", "addresses": [WEB]},
        4243: {"qname": "db.", "rcode": "NOERROR", "addresses": [DB]},
        4244: {"qname": "app.front.", "rcode": "NOERROR", "addresses": [APP_FRONT]},
        4245: {"qname": "api.front.test.", "rcode": "NOERROR", "addresses": [APP_FRONT]},
        4246: {"qname": "nothere.front.test.", "rcode": "NXDOMAIN", "addresses": []},
    }


def test_listing_shows_three_sandboxes_and_their_endpoints(world: World) -> None:
    listing = world.daemon.json("ls")
    seen = {
        Path(sb["netns"]).name: sorted(
            (ep["network"], ep["name"], tuple(ep["ipv4"])) for ep in sb["endpoints"]
        )
        for sb in listing
    }
    assert seen == {
        world.ns["A"]: [("front", "web", (WEB,))],
        world.ns["B"]: [("back", "app", (APP_BACK,)), ("front", "app", (APP_FRONT,))],
        world.ns["C"]: [("back", "db", (DB,))],
    }
    assert all(sb["listening"] for sb in listing)
