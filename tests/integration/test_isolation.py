"""Isolation grid: 4 networks (one with a domain, one internal, one more with a domain), 6 sandboxes on
one or two of them, every endpoint with a name, an alias, a hostname, a short id and a service (vip or
dnsrr). Every name in every form (bare, .network, .domain; A and AAAA), every tasks.<service> and
<service>, and the reverse name of every endpoint address and VIP is asked from every sandbox by a
dnspython client inside it (one process per sandbox, all queries in one batch).

The expected answers come from this file's own table and the rules of DESIGN.md section 4, never from
the code under test: a sandbox resolves exactly the names of its networks (a bare name both of its
networks define answers from the network it joined first); anything else is NXDOMAIN under one of its
domains (answered locally), forwarded otherwise (the recording upstream answers NXDOMAIN), or REFUSED
when all its networks are internal. A recording upstream proves that no name local to the asking
sandbox -- its names, any name under its domains, the reverse name of any address it can resolve --
ever reaches it, that a sandbox only on internal networks forwards nothing, and that everything else
was forwarded. (Names of networks a sandbox is not on are not local to it: they are forwarded like any
unknown name, as Docker and aardvark-dns do, so that a network's domain never hides the real zone from
sandboxes outside that network.)
"""

from __future__ import annotations

import ipaddress
import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass

import dns.message
import dns.rcode
import dns.reversename
import pytest
from forwarding.helpers import ScriptedUpstream, Send, response

from resolver.control.client import call

from .nstools import Daemon, DaemonFactory, Namespaces, netns_python

pytestmark = pytest.mark.netns

NETWORKS = {  # name: (domain, internal)
    "front": ("front.test", False),
    "back": (None, False),
    "intra": (None, True),
    "ops": ("ops.test", False),
}
# sandbox: its endpoints in join order (network, IPv4, IPv6 or None, service)
SANDBOXES = {
    "a": [("front", "10.71.1.2", "fd71:1::2", "web")],
    "b": [("front", "10.71.1.3", None, "web"), ("back", "10.71.2.3", "fd71:2::3", "api")],
    "c": [("back", "10.71.2.4", None, "api")],
    "d": [("back", "10.71.2.5", "fd71:2::5", "db"), ("intra", "10.71.3.5", None, "jobs")],
    "e": [("intra", "10.71.3.6", "fd71:3::6", "jobs")],
    "f": [("ops", "10.71.4.7", None, "mon"), ("front", "10.71.1.7", None, "cache")],
}
SERVICES = {  # (network, name): (mode, VIPs)
    ("front", "web"): ("vip", ["10.71.1.100"]),
    ("front", "cache"): ("dnsrr", []),
    ("back", "api"): ("vip", ["10.71.2.100", "fd71:2::100"]),
    ("back", "db"): ("dnsrr", []),
    ("intra", "jobs"): ("dnsrr", []),
    ("ops", "mon"): ("vip", ["10.71.4.100"]),
}
GHOSTS = ["ghost.front.test", "ghost.ops.test"]  # unregistered names under the domains


def endpoint_id(box: str) -> str:
    return f"{box * 4}{ord(box):012d}"


def names_of(box: str, network: str) -> list[str]:
    """Primary name, alias, short id (the id's first 12 characters) and hostname."""
    return [f"box-{box}", f"{box}-on-{network}", endpoint_id(box)[:12], f"host-{box}"]


def forms(name: str, network: str) -> list[str]:
    domain = NETWORKS[network][0]
    return [name, f"{name}.{network}", *([f"{name}.{domain}"] if domain else [])]


def reverse(address: str) -> str:
    return dns.reversename.from_address(address).to_text().lower().rstrip(".")


@dataclass
class Table:
    """What one network (or a sandbox's merged view) answers: addresses by name, PTR targets."""

    addresses: dict[str, set[str]]
    pointers: dict[str, str]


def network_table(network: str) -> Table:
    members = [(box, ep) for box, eps in SANDBOXES.items() for ep in eps if ep[0] == network]
    addresses: dict[str, set[str]] = {}

    def add(name: str, values: list[str]) -> None:
        for form in forms(name, network):
            addresses.setdefault(form, set()).update(values)

    def addrs(ep: tuple[str, str, str | None, str]) -> list[str]:
        return [ep[1], *([ep[2]] if ep[2] else [])]

    suffix = NETWORKS[network][0] or network
    pointers: dict[str, str] = {}
    for box, ep in members:
        for name in names_of(box, network):
            add(name, addrs(ep))
        for address in addrs(ep):
            pointers[reverse(address)] = f"box-{box}.{suffix}."
    for (net, service), (mode, vips) in SERVICES.items():
        if net != network:
            continue
        tasks = [a for _box, ep in members if ep[3] == service for a in addrs(ep)]
        add(f"tasks.{service}", tasks)
        add(service, vips if mode == "vip" else tasks)
        for vip in vips:
            pointers[reverse(vip)] = f"{service}.{suffix}."
    return Table(addresses, pointers)


def view(box: str) -> Table:
    """The sandbox's networks merged in join order; the first network wins a name both define."""
    merged = Table({}, {})
    for network, *_rest in SANDBOXES[box]:
        table = network_table(network)
        for name, values in table.addresses.items():
            merged.addresses.setdefault(name, values)
        for name, target in table.pointers.items():
            merged.pointers.setdefault(name, target)
    return merged


def all_questions() -> list[tuple[str, str]]:
    names = sorted({n for network in NETWORKS for n in network_table(network).addresses} | set(GHOSTS))
    pointers = sorted({p for network in NETWORKS for p in network_table(network).pointers})
    return [(n, t) for n in names for t in ("A", "AAAA")] + [(p, "PTR") for p in pointers]


def expected(box: str, name: str, qtype: str) -> tuple[str, list[str], bool]:
    """(rcode, answers, forwarded) for `box` asking `name`/`qtype`."""
    seen = view(box)
    if qtype == "PTR" and name in seen.pointers:
        return "NOERROR", [seen.pointers[name]], False
    if qtype != "PTR" and name in seen.addresses:
        version = 4 if qtype == "A" else 6
        found = [a for a in seen.addresses[name] if ipaddress.ip_address(a).version == version]
        return "NOERROR", sorted(str(ipaddress.ip_address(a)) for a in found), False
    domains = [NETWORKS[net][0] for net, *_ in SANDBOXES[box] if NETWORKS[net][0]]
    if any(name == d or name.endswith(f".{d}") for d in domains):
        return "NXDOMAIN", [], False
    if all(NETWORKS[net][1] for net, *_ in SANDBOXES[box]):
        return "REFUSED", [], False
    return "NXDOMAIN", [], True


ASK_ALL = r"""
import json, select, socket, sys, time
import dns.message, dns.rcode, dns.rdatatype
questions = json.loads(sys.argv[1])
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.connect(("127.0.0.11", 53))
results = [None] * len(questions)
pending, tries, following = {}, {}, 0
def send(i):
    query = dns.message.make_query(questions[i][0], questions[i][1])
    query.id = i
    sock.send(query.to_wire())
    pending[i] = time.monotonic()
    tries[i] = tries.get(i, 0) + 1
while following < len(questions) or pending:
    while following < len(questions) and len(pending) < 32:
        send(following)
        following += 1
    if select.select([sock], [], [], 0.2)[0]:
        reply = dns.message.from_wire(sock.recv(65535))
        if reply.id in pending:
            del pending[reply.id]
            qtype = dns.rdatatype.from_text(questions[reply.id][1])
            answers = [r.to_text().lower() for rrset in reply.answer if rrset.rdtype == qtype for r in rrset]
            results[reply.id] = [dns.rcode.to_text(reply.rcode()), sorted(answers)]
    for i, when in list(pending.items()):
        if time.monotonic() - when > 2:
            if tries[i] >= 3:
                del pending[i]
                results[i] = ["NO-REPLY", []]
            else:
                send(i)
print(json.dumps(results))
"""


class Recorder:
    """A recording upstream on a random loopback address: every question, answered NXDOMAIN."""

    def __init__(self) -> None:
        address = (
            f"127.{secrets.choice(range(100, 200))}.{secrets.randbelow(256)}.{secrets.randbelow(200) + 20}"
        )
        self.server = ScriptedUpstream(address, self.handle)

    @staticmethod
    def handle(query: dns.message.Message, _transport: str) -> list[Send]:
        return [Send(response(query, dns.rcode.NXDOMAIN).to_wire())]

    def names(self) -> set[str]:
        return {r.qname.lower() for r in self.server.queries()}


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    recording = Recorder()
    try:
        yield recording
    finally:
        recording.server.close()
    assert not recording.server.errors, recording.server.errors


def build(d: Daemon, netns: Namespaces) -> dict[str, str]:
    for network, (domain, internal) in NETWORKS.items():
        body = {"name": network, "internal": internal, **({"domain": domain} if domain else {})}
        call("POST", "/v1/networks", body, str(d.socket))
    for (network, service), (mode, vips) in SERVICES.items():
        call(
            "POST",
            f"/v1/networks/{network}/services",
            {"name": service, "mode": mode, "vips": vips},
            str(d.socket),
        )
    namespaces = {}
    for box, endpoints in SANDBOXES.items():
        namespaces[box] = netns.add()
        for network, v4, v6, service in endpoints:
            body = {
                "network": network,
                "netns": namespaces[box],
                "endpoint": endpoint_id(box),
                "name": f"box-{box}",
                "aliases": [f"{box}-on-{network}"],
                "hostname": f"host-{box}",
                "ipv4": [v4],
                "ipv6": [v6] if v6 else [],
                "service": service,
            }
            call("POST", "/v1/endpoints", body, str(d.socket))
    return namespaces


def test_every_name_resolves_exactly_where_it_should_and_local_names_never_leave(
    daemon: DaemonFactory, netns: Namespaces, recorder: Recorder
) -> None:
    d = daemon(host_resolv_conf=f"nameserver {recorder.server.address}\n")
    namespaces = build(d, netns)
    questions = all_questions()
    forwarded_anywhere: set[str] = set()
    for box, ns in namespaces.items():
        recorder.server.reset()
        results = netns_python(ns, ASK_ALL, json.dumps(questions), timeout=120)
        wrong = []
        should_forward: set[str] = set()
        for (name, qtype), (rcode, answers) in zip(questions, results, strict=True):
            want_rcode, want_answers, forwarded = expected(box, name, qtype)
            if qtype in ("A", "AAAA"):
                answers = sorted(str(ipaddress.ip_address(a)) for a in answers)
            if (rcode, answers) != (want_rcode, want_answers):
                wrong.append(f"{name} {qtype}: got {rcode} {answers}, want {want_rcode} {want_answers}")
            if forwarded:
                should_forward.add(f"{name}.")
        assert not wrong, f"sandbox {box} ({len(wrong)} of {len(questions)} wrong):\n" + "\n".join(wrong[:40])
        reached = recorder.names()
        local = reached - should_forward
        assert not local, f"names local to sandbox {box} reached the upstream: {sorted(local)}"
        assert reached == should_forward, f"not forwarded from {box}: {sorted(should_forward - reached)[:20]}"
        forwarded_anywhere |= reached
    assert forwarded_anywhere, "nothing was forwarded at all: the upstream check proves nothing"
