"""Networks that span hosts: two daemons, each in a "host" namespace of its own with its own sandboxes,
share a global network through a real etcd.

- an endpoint joined on host B resolves in a sandbox of host A within one second of the join, and stops
  resolving within one second of the leave; local networks never reach etcd; etcd may require TLS
  with client certificates;
- host B's daemon killed with SIGKILL: its endpoints go from host A after the lease TTL; restarted from
  its state file, it registers them again;
- etcd stopped for 10 s: names keep resolving on both hosts, joins made meanwhile (also across a daemon
  restart) reach the other host once etcd is back, no registration is lost;
- a compaction past a daemon's watch revision: the daemon lists again and catches up.

"Within one second" is the issue's functional bound: the check polls with a deadline of 1.0 s after the
client command returned. Other waits poll with generous timeouts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from integration.nstools import dig, in_netns, run, wait_until

from .cluster import LEASE_TTL, Cluster, HostDaemon, Prober, netns_path

NETWORK = "gnet"
BOUND = 1.0


@dataclass
class Host:
    daemon: HostDaemon
    sandbox: str
    prober: Prober


def global_network(cluster: Cluster) -> tuple[Host, Host]:
    """The global network created on host A and seen by host B; `alpha` joined on A, `bravo` on B."""
    a, b = cluster.daemons
    a.ok("network", "create", NETWORK, "--scope", "global")
    assert wait_until(lambda: NETWORK in b.ok("network", "ls"), 10), "host B never saw the global network"
    hosts = []
    for daemon, name, address in ((a, "alpha", "10.1.0.2"), (b, "bravo", "10.1.0.3")):
        sandbox = cluster.sandbox()
        daemon.join(NETWORK, netns_path(sandbox), f"ep-{name}", name, "--ipv4", address)
        hosts.append(Host(daemon, sandbox, cluster.prober(sandbox)))
    return hosts[0], hosts[1]


def within_bound(check: Callable[[], bool]) -> bool:
    """Poll `check` until it is true, for at most BOUND seconds from now."""
    return wait_until(check, BOUND, interval=0.02) is not None


def test_an_endpoint_joined_on_one_host_resolves_on_the_other_within_a_second(cluster: Cluster) -> None:
    host_a, host_b = global_network(cluster)
    assert wait_until(lambda: host_b.prober.addresses("alpha") == ["10.1.0.2"], 5)

    sandbox = cluster.sandbox()
    host_b.daemon.join(NETWORK, netns_path(sandbox), "ep-charlie", "charlie", "--ipv4", "10.1.0.4")
    assert within_bound(lambda: host_a.prober.addresses("charlie") == ["10.1.0.4"])
    answer = dig(host_a.sandbox, "charlie")
    assert answer.status == "NOERROR" and answer.addresses == ["10.1.0.4"], answer

    host_b.daemon.ok("leave", "ep-charlie")
    assert within_bound(lambda: host_a.prober.unknown("charlie"))
    assert host_a.prober.addresses("bravo") == ["10.1.0.3"]

    # a local network stays on its host: nothing in etcd, unknown to the other host
    host_a.daemon.ok("network", "create", "lnet")
    sandbox = cluster.sandbox()
    host_a.daemon.join("lnet", netns_path(sandbox), "ep-local", "local-only", "--ipv4", "10.2.0.2")
    assert wait_until(lambda: host_b.prober.addresses("alpha") == ["10.1.0.2"], 5)
    assert cluster.etcd is not None
    keys = cluster.etcd.keys()
    assert not [k for k in keys if "lnet" in k], keys
    assert "lnet" not in host_b.daemon.ok("network", "ls")
    assert host_b.prober.unknown("local-only")


def services_of(daemon: HostDaemon, network: str) -> list[str] | None:
    listing = {n["name"]: n["services"] for n in daemon.json("network", "ls")}
    return listing.get(network)


def test_etcd_over_tls_and_the_life_of_a_global_network(tls_cluster: Cluster) -> None:
    host_a, host_b = global_network(tls_cluster)
    a, b = host_a.daemon, host_b.daemon
    assert wait_until(lambda: host_a.prober.addresses("bravo") == ["10.1.0.3"], 10)
    assert wait_until(lambda: host_b.prober.addresses("alpha") == ["10.1.0.2"], 10)

    a.ok("service", "create", NETWORK, "web", "--vip", "10.1.0.100")
    assert wait_until(lambda: services_of(b, NETWORK) == ["web"], 5)
    assert wait_until(lambda: host_b.prober.addresses("web") == ["10.1.0.100"], 5)
    clash = b.cli("service", "create", NETWORK, "web", "--vip", "10.1.0.101")
    assert clash.rc == 1 and "already exists" in clash.err, clash
    b.ok("service", "rm", NETWORK, "web")
    assert wait_until(lambda: services_of(a, NETWORK) == [], 5)

    in_use = a.cli("network", "rm", NETWORK)
    assert in_use.rc == 1 and "endpoints" in in_use.err, in_use
    b.ok("leave", "ep-bravo")
    a.ok("leave", "ep-alpha")
    assert wait_until(lambda: a.cli("network", "rm", NETWORK).rc == 0, 5)
    assert wait_until(lambda: services_of(b, NETWORK) is None, 5), "host B kept the removed network"
    assert tls_cluster.etcd is not None and tls_cluster.etcd.url.startswith("https://")
    etcd, tls = tls_cluster.etcd, tls_cluster.tls
    assert tls is not None
    without_certificate = ["etcdctl", f"--endpoints={etcd.url}", f"--cacert={tls / 'ca.pem'}", "get", "/"]
    refused = run(in_netns(netns_path(etcd.netns), *without_certificate), env=etcd.ctl_env)
    assert refused.returncode != 0, refused
    assert "certificate" in etcd.log.read_text().split("ready to serve client requests")[-1]


def test_a_killed_host_loses_its_endpoints_after_the_lease_and_gets_them_back(cluster: Cluster) -> None:
    assert cluster.etcd is not None
    host_a, host_b = global_network(cluster)
    assert wait_until(lambda: host_a.prober.addresses("bravo") == ["10.1.0.3"], 5)
    old_leases = {k: v for k, v in cluster.etcd.keys().items() if k.endswith("/ep-bravo")}
    assert len(old_leases) == 1 and 0 not in old_leases.values(), old_leases

    host_b.daemon.kill9()
    assert wait_until(lambda: host_a.prober.unknown("bravo"), LEASE_TTL + 15), "bravo outlived its lease"
    assert host_a.prober.addresses("alpha") == ["10.1.0.2"]

    host_b.daemon.start()
    assert wait_until(lambda: host_a.prober.addresses("bravo") == ["10.1.0.3"], 15)
    new_leases = {k: v for k, v in cluster.etcd.keys().items() if k.endswith("/ep-bravo")}
    assert new_leases.keys() == old_leases.keys() and new_leases != old_leases
    assert wait_until(lambda: host_b.prober.addresses("alpha") == ["10.1.0.2"], 10)


def test_a_lost_lease_is_replaced_and_the_endpoints_registered_again(cluster: Cluster) -> None:
    assert cluster.etcd is not None
    host_a, host_b = global_network(cluster)
    assert wait_until(lambda: host_b.prober.addresses("alpha") == ["10.1.0.2"], 5)
    lease = host_a.daemon.registry_status()["lease"]
    revoked = cluster.etcd.ctl("lease", "revoke", f"{lease:x}")
    assert revoked.returncode == 0, revoked.stderr

    def registered_again() -> bool:
        leases = [v for k, v in cluster.etcd.keys().items() if k.endswith("/ep-alpha")]
        return len(leases) == 1 and leases[0] not in (0, lease)

    assert wait_until(registered_again, 15), cluster.etcd.keys()
    assert host_a.daemon.registry_status()["lease"] != lease
    assert wait_until(lambda: host_b.prober.addresses("alpha") == ["10.1.0.2"], 5)


def test_an_etcd_outage_loses_nothing(cluster: Cluster) -> None:
    assert cluster.etcd is not None
    host_a, host_b = global_network(cluster)
    assert wait_until(lambda: host_a.prober.addresses("bravo") == ["10.1.0.3"], 5)
    assert wait_until(lambda: host_b.prober.addresses("alpha") == ["10.1.0.2"], 5)

    cluster.etcd.stop()
    stopped = time.monotonic()
    assert wait_until(lambda: not host_a.daemon.connected(), 10)
    joins = [(host_b, "charlie", "10.1.0.4"), (host_a, "delta", "10.1.0.5"), (host_b, "echo", "10.1.0.6")]
    for host, name, address in joins:
        sandbox = cluster.sandbox()
        host.daemon.join(NETWORK, netns_path(sandbox), f"ep-{name}", name, "--ipv4", address)
        if name == "charlie":
            host_b.daemon.kill9()  # its queued join must survive a restart during the outage
            host_b.daemon.start()
    refused = host_a.daemon.cli("network", "create", "late", "--scope", "global")
    assert refused.rc == 1 and "etcd" in refused.err, refused
    assert "late" not in host_a.daemon.ok("network", "ls")

    while time.monotonic() - stopped < 10:
        assert host_a.prober.addresses("alpha") == ["10.1.0.2"]
        assert host_a.prober.addresses("bravo") == ["10.1.0.3"]
        assert host_a.prober.addresses("delta") == ["10.1.0.5"]
        assert host_b.prober.addresses("alpha") == ["10.1.0.2"]
        time.sleep(0.5)
    cluster.etcd.start()

    assert wait_until(lambda: host_a.prober.addresses("charlie") == ["10.1.0.4"], 20)
    assert wait_until(lambda: host_a.prober.addresses("echo") == ["10.1.0.6"], 10)
    assert wait_until(lambda: host_b.prober.addresses("delta") == ["10.1.0.5"], 10)
    keys = cluster.etcd.keys()
    names = {key.rsplit("/", 1)[-1] for key in keys if "/endpoints/" in key}
    assert names == {"ep-alpha", "ep-bravo", "ep-charlie", "ep-delta", "ep-echo"}


def test_a_watch_behind_compaction_lists_again(cluster: Cluster) -> None:
    assert cluster.etcd is not None
    host_a, host_b = global_network(cluster)
    assert wait_until(lambda: host_a.prober.addresses("bravo") == ["10.1.0.3"], 5)
    lists = host_a.daemon.registry_status()["lists"]

    link = ["ip", "-n", host_a.daemon.host, "link", "set", "eth0"]
    run([*link, "down"], check=True)
    try:
        assert wait_until(lambda: not host_a.daemon.connected(), 15), "host A did not notice the cut"
        sandbox = cluster.sandbox()
        host_b.daemon.join(NETWORK, netns_path(sandbox), "ep-foxtrot", "foxtrot", "--ipv4", "10.1.0.7")
        host_b.daemon.ok("leave", "ep-bravo")
        compacted = cluster.etcd.ctl("compact", str(cluster.etcd.revision()))
        assert compacted.returncode == 0, compacted.stderr
    finally:
        run([*link, "up"], check=True)

    assert wait_until(lambda: host_a.prober.addresses("foxtrot") == ["10.1.0.7"], 20)
    assert wait_until(lambda: host_a.prober.unknown("bravo"), 5)
    assert host_a.daemon.registry_status()["lists"] > lists
    assert "fell behind compaction" in host_a.daemon.log_text()


def test_the_leader_dies_and_the_daemons_go_on_with_the_other_members(three_member_cluster: Cluster) -> None:
    etcd = three_member_cluster.etcd
    assert etcd is not None
    host_a, host_b = global_network(three_member_cluster)
    assert wait_until(lambda: host_a.prober.addresses("bravo") == ["10.1.0.3"], 10)
    leader = etcd.leader()
    if leader != 0:  # the daemons talk to the first endpoint: make it the leader, then stop it
        moved = etcd.ctl("move-leader", f"{etcd.member_id(0):x}", endpoints=[etcd.urls[leader]])
        assert moved.returncode == 0, moved.stderr
        assert wait_until(lambda: etcd.leader() == 0, 10)
    etcd.stop_member(0)
    assert wait_until(lambda: etcd.leader() != 0, 15)

    sandbox = three_member_cluster.sandbox()
    host_b.daemon.join(NETWORK, netns_path(sandbox), "ep-golf", "golf", "--ipv4", "10.1.0.8")
    assert wait_until(lambda: host_a.prober.addresses("golf") == ["10.1.0.8"], 20)
    host_b.daemon.ok("leave", "ep-bravo")
    assert wait_until(lambda: host_a.prober.unknown("bravo"), 10)
    assert all(d.registry_status()["sessions"] >= 2 for d in (host_a.daemon, host_b.daemon))
