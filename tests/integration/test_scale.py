"""Many sandboxes at once: every one answers, and leaving them all gives back every socket (so no deleted
namespace is kept alive by the daemon) and leaves the daemon's file descriptors where they started."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from resolver.control.client import call

from .nstools import DaemonFactory, Namespaces, dig, wait_until

pytestmark = pytest.mark.netns
SANDBOXES = 40


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_many_sandboxes_join_answer_and_leave_without_leaking(
    daemon: DaemonFactory, netns: Namespaces
) -> None:
    d = daemon()
    d.ok("network", "create", "bulk", "--domain", "bulk.test")
    names = [netns.add() for _ in range(SANDBOXES)]
    baseline = open_fds(d.pid)
    for i, ns in enumerate(names):
        body = {
            "network": "bulk",
            "netns": ns,
            "endpoint": f"ep{i:03d}",
            "name": f"h{i}",
            "ipv4": [f"10.90.0.{i + 1}"],
        }
        call("POST", "/v1/endpoints", body, str(d.socket))
    assert open_fds(d.pid) >= baseline + 2 * SANDBOXES  # a UDP and a TCP listener each
    for i in (0, SANDBOXES // 2, SANDBOXES - 1):
        peer = (i + 7) % SANDBOXES
        assert dig(names[i], f"h{peer}.bulk.test").addresses == [f"10.90.0.{peer + 1}"]
    status = d.json("status", "--json")
    assert (status["sandboxes"], status["endpoints"]) == (SANDBOXES, SANDBOXES)

    for i in range(SANDBOXES):
        d.ok("leave", f"ep{i:03d}")
    assert d.json("ls", "--json") == []
    settled = wait_until(lambda: open_fds(d.pid) <= baseline, timeout=5)
    assert settled, f"{open_fds(d.pid)} fds open after every leave, {baseline} before the joins"
    assert not [n for n in names if Path(f"/etc/netns/{n}").exists()]


def test_a_join_into_a_namespace_replaced_under_the_same_name_starts_afresh(
    daemon: DaemonFactory, netns: Namespaces
) -> None:
    """`ip netns del` + `ip netns add` with the same name before the watcher looked: the old sandbox
    and its endpoints are dropped, the new namespace is served."""
    import subprocess

    d = daemon()
    d.ok("network", "create", "re")
    name = netns.add()
    d.join("re", name, "old-ep", "old", "--ipv4", "10.91.0.2")
    subprocess.run(["ip", "netns", "del", name], check=True)
    subprocess.run(["ip", "netns", "add", name], check=True)
    d.join("re", name, "new-ep", "new", "--ipv4", "10.91.0.3")
    endpoints = [ep["id"] for sb in d.json("ls", "--json") for ep in sb["endpoints"]]
    assert endpoints == ["new-ep"]
    assert dig(name, "new").addresses == ["10.91.0.3"]
    assert dig(name, "old").status != "NOERROR"
