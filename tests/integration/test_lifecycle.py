"""Sandboxes come and go, and so does the daemon: leave removes a name at once and restores resolv.conf;
`ip netns del` of a joined sandbox is noticed and its sockets closed; in redirect mode a process in the
sandbox may own port 53 and a flushed ruleset is restored; after `kill -9` a restarted daemon has every
registration back and every sandbox answers again.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from .nstools import (
    LISTEN,
    NETNS_ETC,
    VENV_PYTHON,
    Daemon,
    DaemonFactory,
    Namespaces,
    dig,
    getent_ahosts,
    in_netns,
    netns_inode,
    require,
    run,
    sockets_by_netns,
    wait_until,
)

pytestmark = pytest.mark.netns

SQUATTER = r"""
import socket, sys, time
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind(("0.0.0.0", 53))
tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
tcp.bind(("0.0.0.0", 53))
tcp.listen()
print("bound", flush=True)
time.sleep(600)
"""


def _answers(netns: str, name: str, address: str, tcp: bool = False) -> bool:
    result = dig(netns, name, tcp=tcp, timeout=1)
    return result.status == "NOERROR" and result.addresses == [address]


def _sandboxes(daemon: Daemon) -> list[str]:
    return sorted(Path(sb["netns"]).name for sb in daemon.json("ls"))


# ---- leave ------------------------------------------------------------------------------------------


def test_leave_removes_the_name_at_once_and_removes_the_created_resolv_conf(
    daemon: DaemonFactory, netns: Namespaces
) -> None:
    d = daemon()
    a, b = netns.add(), netns.add()
    d.ok("network", "create", "n1", "--domain", "leave.test")
    d.join("n1", a, "ep-alpha", "alpha", "--ipv4", "10.33.0.2")
    d.join("n1", b, "ep-beta", "beta", "--ipv4", "10.33.0.3")
    created = NETNS_ETC / b / "resolv.conf"
    assert f"nameserver {LISTEN}" in created.read_text().splitlines()
    assert _answers(a, "beta", "10.33.0.3")
    assert dig(a, "-x", "10.33.0.3").ptr_names == ["beta.leave.test."]

    assert sockets_by_netns(d.pid)[netns_inode(b)] == 2

    d.ok("leave", "ep-beta")

    assert sockets_by_netns(d.pid)[netns_inode(b)] == 0, "the left sandbox's listeners must be closed"
    gone = dig(a, "beta.leave.test")
    assert (gone.status, gone.authoritative, gone.answer) == ("NXDOMAIN", True, [])
    short = dig(a, "beta")
    assert (short.status, short.answer) == ("SERVFAIL", [])
    assert dig(a, "-x", "10.33.0.3").ptr_names == []
    assert getent_ahosts(a, "beta.leave.test") == (2, [])
    assert not created.exists(), "the resolv.conf the daemon created must be removed on the last leave"
    assert not (NETNS_ETC / b).exists(), "the /etc/netns directory the daemon created must be removed"
    closed = dig(b, "alpha", timeout=1)
    assert closed.status == "NO-REPLY", f"the left sandbox still has a resolver:\n{closed}"
    assert _answers(a, "alpha", "10.33.0.2"), "the other sandbox must keep answering"
    assert _sandboxes(d) == [a]


def test_leave_restores_an_explicit_resolv_conf_byte_for_byte(
    daemon: DaemonFactory, netns: Namespaces, tmp_path: Path
) -> None:
    d = daemon()
    ns = netns.add()
    path = tmp_path / "sandbox-resolv.conf"
    # 127.0.0.1: if anything were forwarded it would stay on loopback (nothing is, below)
    original = (
        b"# the sandbox's own file\nnameserver 127.0.0.1\nsearch corp.example\noptions ndots:2 timeout:1\n"
    )
    path.write_bytes(original)
    inode = path.stat().st_ino
    d.ok("network", "create", "n1")
    d.join("n1", ns, "ep1", "one", "--ipv4", "10.34.0.2", "--resolv-conf", str(path))

    lines = path.read_text().splitlines()
    assert [line for line in lines if line.startswith("nameserver")] == [f"nameserver {LISTEN}"]
    assert "search corp.example" in lines
    assert "options ndots:2 timeout:1" in lines, "a valid ndots is kept (and ndots:0 not added)"
    assert any("127.0.0.1" in line for line in lines if line.startswith("#")), "original servers in footer"
    assert path.stat().st_ino == inode, "resolv.conf must be written in place"
    assert not (NETNS_ETC / ns).exists(), "an explicit path means /etc/netns is not touched"

    d.ok("leave", "ep1")
    assert path.read_bytes() == original
    assert path.stat().st_ino == inode


# ---- the namespace disappears ------------------------------------------------------------------------


def test_deleted_namespace_is_noticed_and_its_sockets_closed(
    daemon: DaemonFactory, netns: Namespaces
) -> None:
    d = daemon()
    keep, doomed = netns.add(), netns.add()
    d.ok("network", "create", "n1")
    d.join("n1", keep, "ep-keep", "keep", "--ipv4", "10.35.0.2")
    d.join("n1", doomed, "ep-doomed", "doomed", "--ipv4", "10.35.0.3")
    inode = netns_inode(doomed)
    assert sockets_by_netns(d.pid)[inode] == 2, "one UDP and one TCP listener inside the sandbox"
    assert _answers(keep, "doomed", "10.35.0.3")

    run(["ip", "netns", "del", doomed], check=True)

    assert wait_until(lambda: _sandboxes(d) == [keep], timeout=5), f"still listed: {_sandboxes(d)}"
    assert wait_until(lambda: sockets_by_netns(d.pid)[inode] == 0, timeout=5), "sockets left open"
    assert d.json("status")["sandboxes"] == 1
    assert [n["endpoints"] for n in d.json("network", "ls")] == [1]
    assert dig(keep, "doomed").answer == []
    assert _answers(keep, "keep", "10.35.0.2")
    assert d.cli("inspect", "endpoint", "ep-doomed").rc == 1


def test_pid_namespace_path_is_served_and_its_end_noticed(
    daemon: DaemonFactory, netns: Namespaces, tmp_path: Path
) -> None:
    """`--netns /proc/PID/ns/net` (with an explicit resolv.conf: the process shares our file system)."""
    require("unshare", "nsenter")
    d = daemon()
    named = netns.add()
    holder = netns.spawn(None, ["unshare", "--net", "sleep", "600"])
    path = f"/proc/{holder.pid}/ns/net"
    assert wait_until(lambda: os.stat(path).st_ino != os.stat("/proc/self/ns/net").st_ino, timeout=5)
    resolv_conf = tmp_path / "resolv.conf"
    resolv_conf.write_text("nameserver 127.0.0.1\n")
    d.ok("network", "create", "n1")
    d.join("n1", named, "ep-named", "named", "--ipv4", "10.46.0.2")
    d.join("n1", path, "ep-pid", "bypid", "--ipv4", "10.46.0.3", "--resolv-conf", str(resolv_conf))
    assert _answers(path, "named", "10.46.0.2")
    assert _answers(named, "bypid", "10.46.0.3")
    assert f"nameserver {LISTEN}" in resolv_conf.read_text().splitlines()

    holder.kill()
    holder.wait()

    assert wait_until(lambda: _sandboxes(d) == [named], timeout=5), f"still listed: {_sandboxes(d)}"
    assert dig(named, "bypid").answer == []
    assert resolv_conf.read_text() == "nameserver 127.0.0.1\n"


# ---- redirect mode ---------------------------------------------------------------------------------------


def test_redirect_mode_lets_the_sandbox_own_port_53_and_survives_a_flush(
    daemon: DaemonFactory, netns: Namespaces
) -> None:
    require("nft")
    d = daemon(listen_mode="redirect")
    ns, peer = netns.add(), netns.add()
    squatter = netns.spawn(ns, [VENV_PYTHON, "-c", SQUATTER])
    assert squatter.stdout is not None
    assert squatter.stdout.readline().strip() == "bound", "the sandbox process could not bind 0.0.0.0:53"
    d.ok("network", "create", "n1")
    d.join("n1", ns, "ep1", "squat", "--ipv4", "10.36.0.2")
    d.join("n1", peer, "ep2", "peer", "--ipv4", "10.36.0.3")
    (listing,) = [sb for sb in d.json("ls") if Path(sb["netns"]).name == ns]
    assert listing["port"] not in (None, 53)

    assert _answers(ns, "peer", "10.36.0.3")
    assert _answers(ns, "peer", "10.36.0.3", tcp=True)
    assert _answers(peer, "squat", "10.36.0.2")

    run(in_netns(ns, "nft", "flush", "ruleset"), check=True)
    assert run(in_netns(ns, "nft", "list", "ruleset"), check=True).stdout.strip() == ""

    assert wait_until(lambda: _answers(ns, "peer", "10.36.0.3"), timeout=10, interval=0.2), (
        "resolution did not recover within 10 s after `nft flush ruleset`"
    )
    assert _answers(ns, "peer", "10.36.0.3", tcp=True)
    assert squatter.poll() is None, "the process owning port 53 must be untouched"

    d.ok("leave", "ep1")
    assert run(in_netns(ns, "nft", "list", "ruleset"), check=True).stdout.strip() == "", "rules left behind"


# ---- kill -9 and restart ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "how"), [("direct", "kill -9"), ("redirect", "kill -9"), ("direct", "SIGTERM")]
)
def test_restart_brings_every_registration_back_and_every_sandbox_answers(
    daemon: DaemonFactory, netns: Namespaces, mode: str, how: str
) -> None:
    if mode == "redirect":
        require("nft")
    d = daemon(listen_mode=mode)
    a, b, c = netns.add(), netns.add(), netns.add()
    d.ok("network", "create", "n1", "--domain", "k9.test", "--ttl", "7")
    d.ok("network", "create", "n2", "--internal")
    d.ok("service", "create", "n2", "jobs", "--mode", "dnsrr")
    d.join("n1", a, "ep-a", "aa", "--alias", "a-alias", "--ipv4", "10.37.0.2")
    d.join("n1", b, "ep-b", "bb", "--ipv4", "10.37.0.3")
    d.join("n2", b, "ep-b", "bb", "--ipv4", "10.38.0.3", "--service", "jobs")
    d.join("n2", c, "ep-c", "cc", "--ipv4", "10.38.0.4", "--service", "jobs")
    expected = {
        a: [("aa", "10.37.0.2"), ("a-alias.k9.test", "10.37.0.2"), ("bb", "10.37.0.3")],
        b: [("aa", "10.37.0.2"), ("cc.n2", "10.38.0.4")],
        c: [("bb", "10.38.0.3"), ("cc", "10.38.0.4")],
    }

    def every_sandbox_answers() -> bool:
        return all(_answers(ns, name, address) for ns, pairs in expected.items() for name, address in pairs)

    def normalised(listing: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The listing without the listener port (a restart in redirect mode picks a new one)."""
        without_port = ({k: v for k, v in sb.items() if k != "port"} for sb in listing)
        return sorted(without_port, key=lambda sb: str(sb["netns"]))

    assert every_sandbox_answers()
    before_ls, before_networks = d.snapshot()
    before_services = d.json("inspect", "service", "n2/jobs")
    resolv_before = {ns: (NETNS_ETC / ns / "resolv.conf").read_text() for ns in expected}
    old_pid = d.pid

    if how == "kill -9":
        d.restart_after_kill9()
    else:
        assert d.stop() == 0, "SIGTERM must stop the daemon cleanly"
        d.start()

    assert d.pid != old_pid
    after_ls, after_networks = d.snapshot()
    assert normalised(after_ls) == normalised(before_ls)
    assert after_networks == before_networks
    assert d.json("inspect", "service", "n2/jobs") == before_services
    assert all(sb["listening"] for sb in after_ls)
    assert every_sandbox_answers(), "a sandbox does not answer after the restart"
    tasks = dig(c, "tasks.jobs")
    assert sorted(tasks.addresses) == ["10.38.0.3", "10.38.0.4"]
    assert {ns: (NETNS_ETC / ns / "resolv.conf").read_text() for ns in expected} == resolv_before
    assert getent_ahosts(a, "bb.k9.test") == (0, ["10.37.0.3"])

    # the restarted daemon still owns the rewrites: the last leave removes the created resolv.conf
    d.ok("leave", "ep-c")
    assert not (NETNS_ETC / c).exists()
    assert dig(b, "cc").answer == []
    assert _answers(b, "bb.n2", "10.38.0.3")


def test_restart_drops_namespaces_that_vanished_or_were_replaced_meanwhile(
    daemon: DaemonFactory, netns: Namespaces
) -> None:
    d = daemon()
    stays, vanishes, replaced = netns.add(), netns.add(), netns.add()
    d.ok("network", "create", "n1")
    d.join("n1", stays, "ep-stays", "stays", "--ipv4", "10.39.0.2")
    d.join("n1", vanishes, "ep-vanishes", "vanishes", "--ipv4", "10.39.0.3")
    d.join("n1", replaced, "ep-replaced", "replaced", "--ipv4", "10.39.0.4")

    d.kill9()
    run(["ip", "netns", "del", vanishes], check=True)
    run(["ip", "netns", "del", replaced], check=True)
    run(["ip", "netns", "add", replaced], check=True)  # same name, another namespace
    d.start()

    assert _sandboxes(d) == [stays]
    assert [n["endpoints"] for n in d.json("network", "ls")] == [1]
    assert _answers(stays, "stays", "10.39.0.2")
    for name in ("vanishes", "replaced"):
        assert dig(stays, name).answer == [], f"{name} is still answered"
    assert dig(replaced, "stays", timeout=1).status == "NO-REPLY", "the new namespace was never joined"
    assert not (NETNS_ETC / vanishes).exists(), "the resolv.conf made for a vanished sandbox is left"
    assert not (NETNS_ETC / replaced).exists(), "the resolv.conf made for a replaced sandbox is left"


# ---- more leaves -----------------------------------------------------------------------------------------


def test_leaving_one_of_two_networks_keeps_the_sandbox_and_drops_only_that_network(
    daemon: DaemonFactory, netns: Namespaces
) -> None:
    d = daemon()
    both, one, two = netns.add(), netns.add(), netns.add()
    d.ok("network", "create", "n1")
    d.ok("network", "create", "n2")
    d.join("n1", both, "ep-both", "both", "--ipv4", "10.43.1.2")
    d.join("n2", both, "ep-both", "both", "--ipv4", "10.43.2.2")
    d.join("n1", one, "ep-one", "one", "--ipv4", "10.43.1.3")
    d.join("n2", two, "ep-two", "two", "--ipv4", "10.43.2.3")
    resolv_conf = (NETNS_ETC / both / "resolv.conf").read_text()
    assert _answers(both, "two", "10.43.2.3")

    before = d.snapshot()
    rc, out, err = d.cli("leave", "ep-both")
    assert (rc, out) == (1, ""), err
    assert err == "error: endpoint 'ep-both' is on several networks (n1, n2); name the network\n"
    assert d.snapshot() == before, "an ambiguous leave must change nothing"

    d.ok("leave", "ep-both", "--network", "n2")
    assert dig(both, "two").answer == [], "n2 names must be gone at once"
    assert _answers(both, "one", "10.43.1.3")
    assert dig(two, "both").answer == [], "the sandbox must be gone from n2"
    assert _answers(one, "both", "10.43.1.2")
    assert (NETNS_ETC / both / "resolv.conf").read_text() == resolv_conf, "not the last leave"
    (listing,) = [sb for sb in d.json("ls") if Path(sb["netns"]).name == both]
    assert [(e["network"], e["ipv4"]) for e in listing["endpoints"]] == [("n1", ["10.43.1.2"])]


def test_leave_restores_a_resolv_conf_that_was_already_in_etc_netns(
    daemon: DaemonFactory, netns: Namespaces
) -> None:
    d = daemon()
    ns = netns.add()
    path = NETNS_ETC / ns / "resolv.conf"
    path.parent.mkdir(parents=True)
    original = b"nameserver 127.0.0.1\nsearch lan.example\n"
    path.write_bytes(original)
    inode = path.stat().st_ino
    d.ok("network", "create", "n1")
    d.join("n1", ns, "ep1", "one", "--ipv4", "10.44.0.2")
    text = path.read_text().splitlines()
    assert [line for line in text if line.startswith("nameserver")] == [f"nameserver {LISTEN}"]
    assert "search lan.example" in text and "options ndots:0" in text
    assert getent_ahosts(ns, "one") == (0, ["10.44.0.2"])

    d.ok("leave", "ep1")
    assert path.read_bytes() == original
    assert path.stat().st_ino == inode


def test_leave_keeps_a_resolv_conf_the_user_edited(daemon: DaemonFactory, netns: Namespaces) -> None:
    d = daemon()
    ns = netns.add()
    d.ok("network", "create", "n1")
    d.join("n1", ns, "ep1", "one", "--ipv4", "10.45.0.2")
    path = NETNS_ETC / ns / "resolv.conf"
    with open(path, "a") as f:
        f.write("# edited by hand\n")
    edited = path.read_text()

    d.ok("leave", "ep1")
    assert path.exists() and path.read_text() == edited, "a hand-edited resolv.conf must be left alone"
