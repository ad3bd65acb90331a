"""Services with three tasks: `tasks.NAME` and a dnsrr service answer all three task addresses and spread
the first one evenly over 300 queries; a vip service answers its VIP (and `tasks.NAME` the tasks).

Three task sandboxes join two networks: `rrnet` (service `rr`, mode dnsrr) and `vipnet` (service `vs`,
mode vip, VIP 10.42.255.10). A fourth sandbox, a client on both networks, asks the questions.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from .nstools import Daemon, Namespaces, dig, getent_ahosts, netns_python, nslookup

pytestmark = pytest.mark.netns

RR_TASKS = ["10.41.0.11", "10.41.0.12", "10.41.0.13"]
VIP_TASKS = ["10.42.0.11", "10.42.0.12", "10.42.0.13"]
VIP = "10.42.255.10"
QUERIES = 300
AT_LEAST = 50  # of 300 first places each of three addresses gets (100 expected)

SPREAD_CLIENT = r"""
import collections, json, sys
import dns.message, dns.query, dns.rdatatype

count = int(sys.argv[1])
report = {}
for name in sys.argv[2:]:
    first = collections.Counter()
    sets = set()
    for _ in range(count):
        reply = dns.query.udp(dns.message.make_query(name, "A"), "127.0.0.11", timeout=2)
        addresses = [r.address for rrset in reply.answer for r in rrset if r.rdtype == dns.rdatatype.A]
        first[addresses[0] if addresses else "-"] += 1
        sets.add(tuple(sorted(addresses)))
    report[name] = {"first": dict(first), "sets": sorted(sets)}
print(json.dumps(report))
"""


@dataclass(frozen=True)
class Services:
    daemon: Daemon
    client: str


@pytest.fixture(scope="module")
def services(module_daemon: Daemon, module_netns: Namespaces) -> Iterator[Services]:
    d = module_daemon
    d.ok("network", "create", "rrnet")
    d.ok("network", "create", "vipnet", "--domain", "svc.test")
    d.ok("service", "create", "rrnet", "rr", "--mode", "dnsrr")
    d.ok("service", "create", "vipnet", "vs", "--mode", "vip", "--vip", VIP)
    for i, (rr_address, vip_address) in enumerate(zip(RR_TASKS, VIP_TASKS, strict=True), start=1):
        ns = module_netns.add()
        d.join("rrnet", ns, f"rrtask{i}", f"rr-{i}", "--service", "rr", "--ipv4", rr_address)
        d.join("vipnet", ns, f"vstask{i}", f"vs-{i}", "--service", "vs", "--ipv4", vip_address)
    client = module_netns.add()
    d.join("rrnet", client, "client-rr", "client", "--ipv4", "10.41.0.2")
    d.join("vipnet", client, "client-vs", "client", "--ipv4", "10.42.0.2")
    yield Services(d, client)


@pytest.mark.parametrize(
    ("name", "tasks"),
    [("tasks.rr", RR_TASKS), ("rr", RR_TASKS), ("tasks.vs", VIP_TASKS), ("tasks.vs.svc.test", VIP_TASKS)],
)
def test_task_addresses_answered_and_first_one_spread(
    services: Services, name: str, tasks: list[str]
) -> None:
    report = netns_python(services.client, SPREAD_CLIENT, str(QUERIES), name)[name]
    assert report["sets"] == [tasks], "every answer must hold exactly the three task addresses"
    assert sorted(report["first"]) == tasks
    assert sum(report["first"].values()) == QUERIES
    assert min(report["first"].values()) >= AT_LEAST, f"first answers not spread: {report['first']}"


@pytest.mark.parametrize("name", ["vs", "vs.vipnet", "vs.svc.test"])
def test_vip_service_answers_the_vip(services: Services, name: str) -> None:
    result = dig(services.client, name)
    assert (result.status, result.authoritative, result.addresses) == ("NOERROR", True, [VIP])
    assert getent_ahosts(services.client, name) == (0, [VIP])
    lookup = nslookup(services.client, name)
    assert (lookup.rc, lookup.addresses) == (0, [VIP])


def test_dnsrr_and_tasks_through_glibc_and_busybox(services: Services) -> None:
    for name in ("rr", "tasks.rr"):
        rc, addresses = getent_ahosts(services.client, name)
        assert (rc, sorted(addresses)) == (0, RR_TASKS), name
        lookup = nslookup(services.client, name)
        assert (lookup.rc, sorted(lookup.addresses)) == (0, RR_TASKS), name


def test_service_inspect_lists_the_three_tasks(services: Services) -> None:
    for network, name, tasks in (("rrnet", "rr", RR_TASKS), ("vipnet", "vs", VIP_TASKS)):
        info = services.daemon.json("inspect", "service", f"{network}/{name}")
        assert sorted(a for task in info["tasks"] for a in task["ipv4"]) == tasks
