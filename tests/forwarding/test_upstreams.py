"""Where upstreams come from: the host resolv.conf (queried from the daemon's namespace, so a host
loopback server works), per-endpoint `--dns` servers (queried from inside the sandbox), the servers of
a sandbox's own original resolv.conf, and a host resolv.conf edited while the daemon runs (the new
servers apply without a restart)."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import dns.rcode
import pytest

from .conftest import Addresses, Daemon, Dnsmasq
from .helpers import Client, ScriptedUpstream, answer_with

pytestmark = pytest.mark.netns


def dig_short(netns: str, name: str) -> str:
    """`dig +short @127.0.0.11 NAME A` run inside `netns`."""
    result = subprocess.run(
        ["ip", "netns", "exec", netns, "dig", "+short", "+tries=1", "+time=3", "@127.0.0.11", name, "A"],
        capture_output=True,
        text=True,
        timeout=15,
        check=True,
    )
    return result.stdout


def wait_for_log(server: Dnsmasq, needle: str, timeout: float = 3.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = server.log()
        if needle in text:
            return text
        time.sleep(0.05)
    return server.log()


def test_host_loopback_and_in_sandbox_upstreams_answer(
    addresses: Addresses,
    make_netns: Callable[[], str],
    start_daemon: Callable[..., Daemon],
    dnsmasq: Callable[..., Dnsmasq],
) -> None:
    host_address = addresses.take()
    host = dnsmasq(host_address, ["--local-ttl=300", "--address=/host-upstream.test/10.41.0.1"])
    daemon = start_daemon([host_address])
    plain, with_dns = make_netns(), make_netns()
    inside = dnsmasq(
        "127.0.0.53", ["--local-ttl=300", "--address=/in-sandbox.test/10.53.0.1"], netns=with_dns
    )
    daemon.join(plain)
    daemon.join(with_dns, dns=("127.0.0.53",))

    # the host-loopback server (from --host-resolv-conf) answers a sandbox without servers of its own
    assert dig_short(plain, "host-upstream.test") == "10.41.0.1\n"
    # the per-endpoint server, reachable only inside the sandbox, answers that sandbox
    assert dig_short(with_dns, "in-sandbox.test") == "10.53.0.1\n"

    with Client(plain) as client:
        answer = client.ask("host-upstream.test")
        assert (answer.rcode, answer.addresses(), answer.ttls()) == (dns.rcode.NOERROR, ["10.41.0.1"], [300])
    with Client(with_dns) as client:
        answer = client.ask("in-sandbox.test")
        assert (answer.rcode, answer.addresses(), answer.ttls()) == (dns.rcode.NOERROR, ["10.53.0.1"], [300])
        # the in-sandbox server refuses a name it does not know: the host server is next in line
        answer = client.ask("host-upstream.test")
        assert (answer.rcode, answer.addresses()) == (dns.rcode.NOERROR, ["10.41.0.1"])

    assert "query[A] host-upstream.test from 127.0.0.1" in wait_for_log(host, "host-upstream.test")
    assert "query[A] in-sandbox.test from 127.0.0.1" in wait_for_log(inside, "in-sandbox.test")
    assert "in-sandbox.test" not in host.log()
    # the plain sandbox never reached the in-sandbox server
    assert wait_for_log(inside, "host-upstream.test").count("query[A] host-upstream.test") == 1


def test_editing_host_resolv_conf_switches_upstreams(
    addresses: Addresses,
    make_netns: Callable[[], str],
    start_daemon: Callable[..., Daemon],
    scripted: Callable[..., ScriptedUpstream],
) -> None:
    old = scripted(addresses.take(), answer_with(["10.1.1.1"]))
    new = scripted(addresses.take(), answer_with(["10.2.2.2"]))
    daemon = start_daemon([old.address])
    netns = make_netns()
    daemon.join(netns)
    inode = os.stat(daemon.host_resolv_conf).st_ino

    with Client(netns) as client:
        assert client.ask("before.test").addresses() == ["10.1.1.1"]
        daemon.set_host_servers("127.0.0.11", new.address)  # its own address is never an upstream
        assert os.stat(daemon.host_resolv_conf).st_ino == inode  # edited in place
        edited = time.monotonic()
        switched_after = None
        for i in range(100):
            if client.ask(f"poll{i}.test").addresses() == ["10.2.2.2"]:
                switched_after = time.monotonic() - edited
                break
            time.sleep(0.1)
        assert switched_after is not None and switched_after < 5.0, "the new upstream never answered"

        asked_old = old.count()
        for i in range(10):
            assert client.ask(f"after{i}.test").addresses() == ["10.2.2.2"]
    assert old.count() == asked_old
    assert daemon.status()["host_upstreams"] == [new.address]
    assert daemon.proc.poll() is None  # the same process: no restart


def test_original_resolv_conf_servers_come_before_the_host_ones(
    addresses: Addresses,
    make_netns: Callable[[], str],
    start_daemon: Callable[..., Daemon],
    scripted: Callable[..., ScriptedUpstream],
) -> None:
    host = scripted(addresses.take(), answer_with(["10.1.1.1"]))
    own = scripted(addresses.take(), answer_with(["10.3.3.3"]))
    daemon = start_daemon([host.address])
    netns = make_netns()
    resolv_conf = Path(f"/etc/netns/{netns}/resolv.conf")  # what `ip netns exec` shows the sandbox
    resolv_conf.parent.mkdir(parents=True)
    original = f"search corp.test\nnameserver {own.address}\n"
    resolv_conf.write_text(original)
    endpoint = daemon.join(netns)

    rewritten = resolv_conf.read_text()
    assert [line for line in rewritten.splitlines() if line.startswith("nameserver")] == [
        "nameserver 127.0.0.11"
    ]
    with Client(netns) as client:
        assert client.ask("own.test").addresses() == ["10.3.3.3"]
    assert (own.count(), host.count()) == (1, 0)
    daemon.leave(endpoint)
    assert resolv_conf.read_text() == original  # restored when the sandbox leaves
