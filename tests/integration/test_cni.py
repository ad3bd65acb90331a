"""`resolver-cni` in a real CNI chain: Debian's `bridge` + `host-local` plugins, then ours, driven the way
libcni drives a conflist (`cnidriver.Chain`), for namespaces on one network.

Each namespace resolves the others by container name (`K8S_POD_NAME`) and alias (`runtimeConfig.aliases`)
through 127.0.0.11 (busybox nslookup, and glibc getent through the resolv.conf the daemon wrote) and reaches
the address it got; CHECK passes; DEL removes the name and can be repeated, also after the netns or the
daemon is gone; a stopped daemon and a bad configuration give CNI errors that say so.

Everything made here is `rt5`-prefixed and removed at teardown (namespaces, the bridge, /etc/netns files,
the host-local store under tmp); `net.ipv4.ip_forward`, which the bridge plugin's isGateway turns on, is
put back.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .cnidriver import Chain, PluginFailed
from .nstools import NETNS_ETC, VENV_BIN, Daemon, DaemonFactory, getent_ahosts, nslookup, run

CNI_DIR = Path("/usr/lib/cni")
PREFIX = "rt5"
IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")


def free_subnet() -> ipaddress.IPv4Network:
    """A /24 in 10.150-199.x.0 that no route on the host covers (other tests may be using one)."""
    routes = run(["ip", "-4", "route", "show", "table", "all"]).stdout
    used = [ipaddress.ip_network(w, strict=False) for w in routes.split() if "/" in w and w[0].isdigit()]
    for _ in range(100):
        subnet = ipaddress.ip_network(f"10.{150 + secrets.randbelow(50)}.{secrets.randbelow(256)}.0/24")
        if not any(subnet.overlaps(u) for u in used):
            return subnet
    raise RuntimeError("no free /24 for the test network")


@dataclass
class CniNet:
    """A CNI network (bridge + host-local + resolver-cni) and the namespaces attached to it."""

    chain: Chain
    tmp: Path
    bridge: str
    members: dict[str, str] = field(default_factory=dict)  # container id -> netns path
    ids: dict[str, str] = field(default_factory=dict)  # netns name -> container id
    namespaces: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.chain.conflist["name"])

    def new_netns(self) -> str:
        name = f"{PREFIX}-{secrets.token_hex(5)}"
        self.namespaces.append(name)
        run(["ip", "netns", "add", name], check=True)
        return name

    def add(self, pod: str, aliases: list[str] | None = None, netns: str | None = None) -> tuple[str, str]:
        """ADD a new container (own netns unless given); returns (netns name, address it got)."""
        netns = netns or self.new_netns()
        container_id = f"{PREFIX}{secrets.token_hex(16)}"
        self.members[container_id] = f"/var/run/netns/{netns}"
        result = self.chain.add(
            container_id, f"/var/run/netns/{netns}", pod, aliases={self.name: aliases or []}
        )
        address = result["ips"][0]["address"].split("/")[0]
        self.ids[netns] = container_id
        return netns, address

    def id_of(self, netns: str) -> str:
        return self.ids[netns]

    def delete(self, netns: str) -> None:
        container_id = self.id_of(netns)
        self.chain.delete(container_id, f"/var/run/netns/{netns}")
        self.members.pop(container_id, None)

    def cleanup(self) -> None:
        for container_id, netns in list(self.members.items()):
            with contextlib.suppress(PluginFailed):
                self.chain.delete(container_id, netns)
        for name in self.namespaces:
            run(["ip", "netns", "del", name])
            shutil.rmtree(NETNS_ETC / name, ignore_errors=True)
        run(["ip", "link", "del", self.bridge])


def conflist(name: str, bridge: str, subnet: ipaddress.IPv4Network, tmp: Path, **ours: Any) -> dict[str, Any]:
    return {
        "cniVersion": "1.0.0",
        "name": name,
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": True,
                "ipMasq": False,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": str(subnet)}]],
                    "dataDir": str(tmp / "ipam"),
                },
            },
            {"type": "resolver-cni", "capabilities": {"aliases": True}, **ours},
        ],
    }


@pytest.fixture
def cni_bin(tmp_path: Path) -> Path:
    """A CNI_PATH directory holding the installed `resolver-cni` console script."""
    if not (CNI_DIR / "bridge").exists() or not (CNI_DIR / "host-local").exists():
        pytest.skip("needs the CNI reference plugins (containernetworking-plugins) in /usr/lib/cni")
    if shutil.which("busybox") is None:
        pytest.skip("needs busybox (busybox-static)")
    directory = tmp_path / "cni-bin"
    directory.mkdir()
    (directory / "resolver-cni").symlink_to(VENV_BIN / "resolver-cni")
    return directory


@pytest.fixture
def ip_forward_restored() -> Iterator[None]:
    saved = IP_FORWARD.read_text()
    try:
        yield
    finally:
        IP_FORWARD.write_text(saved)


@pytest.fixture
def make_net(cni_bin: Path, tmp_path: Path, ip_forward_restored: None) -> Iterator[Any]:
    made: list[CniNet] = []

    def make(daemon_socket: Path | str, version: str = "1.0.0", **ours: Any) -> CniNet:
        tag = secrets.token_hex(3)
        bridge = f"{PREFIX}br{tag}"
        doc = conflist(
            f"{PREFIX}net{tag}", bridge, free_subnet(), tmp_path, socket=str(daemon_socket), **ours
        )
        doc["cniVersion"] = version
        net = CniNet(Chain(doc, [cni_bin, CNI_DIR], tmp_path), tmp_path, bridge)
        made.append(net)
        return net

    try:
        yield make
    finally:
        for net in made:
            net.cleanup()


def resolved(netns: str, name: str) -> list[str]:
    return nslookup(netns, name).addresses


def gone(netns: str, name: str) -> bool:
    """`name` no longer resolves: not local any more, so forwarded to no upstream (SERVFAIL)."""
    result = nslookup(netns, name)
    return result.addresses == [] and result.error is not None


def pings(netns: str, address: str) -> bool:
    return run(["ip", "netns", "exec", netns, "busybox", "ping", "-c1", "-W2", address]).returncode == 0


def test_three_namespaces_resolve_each_other_by_name_and_alias(daemon: DaemonFactory, make_net: Any) -> None:
    d = daemon()
    net = make_net(d.socket)
    pods = {f"web{i}": net.add(f"web{i}", aliases=[f"alias{i}"]) for i in range(3)}
    for pod, (netns, _) in pods.items():
        for other, (_, address) in pods.items():
            if other == pod:
                continue
            assert resolved(netns, other) == [address], f"{pod} resolving {other}"
            assert resolved(netns, f"alias{other[-1]}") == [address], f"{pod} resolving alias of {other}"
            assert pings(netns, address), f"{pod} cannot reach {other} at {address}"
    # glibc, through the resolv.conf the daemon wrote for `ip netns exec`
    web0_ns = pods["web0"][0]
    written = (NETNS_ETC / web0_ns / "resolv.conf").read_text().splitlines()
    assert [line for line in written if line.startswith("nameserver")] == ["nameserver 127.0.0.11"]
    assert getent_ahosts(web0_ns, "web2") == (0, [pods["web2"][1]])
    for netns, _ in pods.values():
        net.chain.check(net.id_of(netns), f"/var/run/netns/{netns}")


def test_spec_0_4_0_and_resolv_conf_left_alone(daemon: DaemonFactory, make_net: Any) -> None:
    d = daemon()
    net = make_net(d.socket, "0.4.0", rewriteResolvConf=False)
    ns_a, address_a = net.add("zeta", aliases=["z"])
    ns_b, address_b = net.add("eta")
    assert resolved(ns_a, "eta") == [address_b]
    assert resolved(ns_b, "z") == [address_a]
    assert not (NETNS_ETC / ns_a / "resolv.conf").exists()  # served all the same, file untouched
    net.chain.check(net.id_of(ns_a), f"/var/run/netns/{ns_a}")
    d.stop()
    d.start()  # re-attaches from its saved state, and still leaves the file alone
    assert resolved(ns_a, "eta") == [address_b]
    assert not (NETNS_ETC / ns_a / "resolv.conf").exists()


def test_del_removes_the_name_and_is_idempotent(daemon: DaemonFactory, make_net: Any) -> None:
    d = daemon()
    net = make_net(d.socket)
    ns_a, _ = net.add("alpha", aliases=["first"])
    ns_b, address_b = net.add("beta", aliases=["second"])
    assert resolved(ns_a, "beta") == [address_b]
    container_a, container_b = net.id_of(ns_a), net.id_of(ns_b)
    net.delete(ns_b)
    assert gone(ns_a, "beta")
    assert gone(ns_a, "second")
    assert container_b not in json.dumps(d.json("ls"))
    net.chain.delete(container_b, f"/var/run/netns/{ns_b}")  # a second DEL succeeds (raises otherwise)
    # CHECK fails once the daemon no longer holds the endpoint
    d.ok("leave", container_a)
    with pytest.raises(PluginFailed) as info:
        net.chain.check(container_a, f"/var/run/netns/{ns_a}")
    assert (info.value.plugin, info.value.code) == ("resolver-cni", 100)
    assert "is not joined to network" in info.value.msg
    # the netns gone first (a crashed runtime), then DEL: still success
    run(["ip", "netns", "del", ns_a], check=True)
    net.delete(ns_a)
    assert d.json("ls") == []


def test_no_daemon_fails_add_but_not_del(make_net: Any, tmp_path: Path) -> None:
    net = make_net(tmp_path / "no-daemon.sock")
    netns = net.new_netns()
    with pytest.raises(PluginFailed) as info:
        net.chain.add(f"{PREFIX}dead", f"/var/run/netns/{netns}", "delta")
    assert info.value.plugin == "resolver-cni"
    assert info.value.code == 100
    assert "cannot reach the daemon" in info.value.msg and "no-daemon.sock" in info.value.msg
    net.chain.delete(f"{PREFIX}dead", f"/var/run/netns/{netns}", "delta")  # the runtime's clean-up DEL works


@pytest.mark.parametrize(
    ("ours", "code", "message"),
    [
        ({"sokcet": "/x"}, 2, "unknown key 'sokcet'"),
        ({"rewriteResolvConf": "yes"}, 7, "'rewriteResolvConf' must be true or false"),
    ],
)
def test_bad_configuration_is_a_cni_error(
    make_net: Any, tmp_path: Path, ours: dict[str, Any], code: int, message: str
) -> None:
    net = make_net(tmp_path / "unused.sock", **ours)
    netns = net.new_netns()
    with pytest.raises(PluginFailed) as info:
        net.chain.add(f"{PREFIX}bad", f"/var/run/netns/{netns}", "epsilon")
    assert (info.value.code, info.value.plugin) == (code, "resolver-cni")
    assert message in info.value.msg
    net.chain.delete(f"{PREFIX}bad", f"/var/run/netns/{netns}", "epsilon")  # DEL still cleans up


def test_restarted_daemon_still_serves_and_del_works(daemon: DaemonFactory, make_net: Any) -> None:
    d: Daemon = daemon()
    net = make_net(d.socket)
    ns_a, _ = net.add("theta")
    ns_b, address_b = net.add("iota")
    d.stop()
    net.delete(ns_b)  # DEL while the daemon is down succeeds; then the runtime removes the netns
    run(["ip", "netns", "del", ns_b], check=True)
    d.start()
    assert resolved(ns_a, "theta") != []
    assert gone(ns_a, "iota")  # the restarted daemon dropped the vanished sandbox
    assert address_b not in json.dumps(d.json("ls"))
