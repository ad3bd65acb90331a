"""Failures of the daemon itself: killed (SIGKILL) at every step of a join and at seeded random moments,
and a state directory that is full or read-only. Afterwards every acknowledged registration resolves, and
a join that was cut short is either fully there (name, listener, our resolv.conf with the original
servers in its footer, restorable byte for byte by a leave) or fully absent (no name, no listener, the
original resolv.conf untouched). Upstream faults and a namespace deleted with queries in flight are in
tests/forwarding/test_faults.py; forged replies in tests/forwarding/test_safety.py.
"""

from __future__ import annotations

import errno
import os
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from resolver.app import STALL_ENV
from resolver.control.client import ControlError, call

from .nstools import (
    LISTEN,
    NETNS_ETC,
    VENV_PYTHON,
    Daemon,
    DaemonFactory,
    Namespaces,
    dig,
    netns_inode,
    run,
    sockets_by_netns,
    wait_until,
)

pytestmark = pytest.mark.netns

DOMAIN = "fault.test"
# Where a join stalls (RESOLVER_TEST_STALL_AT) and whether a kill there leaves the sandbox joined after a
# restart: nothing is on disk before the state is saved; once it is, the restart completes the join.
STEPS = [
    ("registered", False),
    ("listening", False),
    ("probed", False),
    ("saved", True),
    ("resolv-conf-written", True),
    ("joined", True),
]
ROUNDS = 10
SEED = 7


@dataclass
class Box:
    """A sandbox of these tests: its endpoint, name, address and the resolv.conf it had before."""

    netns: str
    endpoint: str
    name: str
    address: str
    original: bytes

    @property
    def resolv_conf(self) -> Path:
        return NETNS_ETC / self.netns / "resolv.conf"


def make_box(netns: Namespaces, index: int, comment_lines: int = 0) -> Box:
    """A sandbox with its own resolv.conf; `comment_lines` of 80 characters make the file (and so the
    record that can restore it) bigger."""
    name = netns.add()
    box = Box(name, f"ep{index}", f"host{index}", f"10.61.{index // 200}.{index % 200 + 2}", b"")
    comments = "".join(f"# {line:04d} {'c' * 72}\n" for line in range(comment_lines))
    box.original = (
        f"# the original file of {name}\n{comments}nameserver 127.0.0.1\nsearch corp.example\n".encode()
    )
    box.resolv_conf.parent.mkdir(parents=True)
    box.resolv_conf.write_bytes(box.original)
    return box


def join_body(box: Box) -> dict[str, Any]:
    return {
        "network": "n1",
        "netns": box.netns,
        "endpoint": box.endpoint,
        "name": box.name,
        "ipv4": [box.address],
    }


class BackgroundJoin(threading.Thread):
    """A join through the control API on its own thread: `acknowledged` once the daemon said yes."""

    def __init__(self, daemon: Daemon, box: Box) -> None:
        super().__init__(daemon=True)
        self.socket = str(daemon.socket)
        self.box = box
        self.acknowledged = False
        self.error: ControlError | None = None

    def run(self) -> None:
        try:
            call("POST", "/v1/endpoints", join_body(self.box), self.socket, timeout=30)
            self.acknowledged = True
        except ControlError as exc:
            self.error = exc


def listed(d: Daemon) -> set[str]:
    return {e["id"] for sb in d.json("ls") for e in sb["endpoints"]}


def joined_or_absent(d: Daemon, box: Box, peer: Box) -> bool:
    """Check that `box` is either fully joined (True) or fully absent (False), never in between."""
    present = box.endpoint in listed(d)
    from_peer = dig(peer.netns, f"{box.name}.{DOMAIN}")
    inside = dig(box.netns, f"{peer.name}.{DOMAIN}", timeout=1)
    sockets = sockets_by_netns(d.pid)[netns_inode(box.netns)]
    text = box.resolv_conf.read_bytes()
    state = f"{box.netns}: listed={present} peer sees {from_peer.addresses} sockets={sockets}\n{text!r}"
    if present:
        assert from_peer.addresses == [box.address], state
        assert inside.addresses == [peer.address], state
        assert sockets == 2, state
        lines = text.decode().splitlines()
        assert [line for line in lines if line.startswith("nameserver")] == [f"nameserver {LISTEN}"], state
        assert "# ExtServers: [127.0.0.1]" in lines and "search corp.example" in lines, state
    else:
        assert (from_peer.status, from_peer.answer) == ("NXDOMAIN", []), state
        assert inside.status == "NO-REPLY", state
        assert sockets == 0, state
        assert text == box.original, state
    return present


def all_answer(d: Daemon, boxes: list[Box], peer: Box) -> None:
    for box in boxes:
        assert dig(peer.netns, f"{box.name}.{DOMAIN}").addresses == [box.address], f"{box.name} is lost"


def leave_restores_originals(d: Daemon, boxes: list[Box]) -> None:
    for box in boxes:
        d.ok("leave", box.endpoint)
        assert box.resolv_conf.read_bytes() == box.original, f"{box.netns}: original not restored"


@pytest.fixture
def world(daemon: DaemonFactory, netns: Namespaces) -> tuple[Daemon, Box]:
    """A daemon with network n1 (domain fault.test) and one fully joined peer sandbox."""
    d = daemon()
    d.ok("network", "create", "n1", "--domain", DOMAIN)
    peer = make_box(netns, 0)
    call("POST", "/v1/endpoints", join_body(peer), str(d.socket))
    return d, peer


def test_killed_at_every_step_of_a_join(world: tuple[Daemon, Box], netns: Namespaces) -> None:
    d, peer = world
    completed: list[Box] = []
    cut: tuple[Box, str, bool] | None = None
    for index, (step, survives) in enumerate([*STEPS, ("", False)], start=1):
        d.kill9()
        d.env = {STALL_ENV: step} if step else {}
        d.start()  # a restart never stalls: only joins do
        if cut is not None:
            box, cut_step, expected = cut
            present = joined_or_absent(d, box, peer)
            assert present == expected, f"killed at {cut_step}: joined={present}, expected {expected}"
            all_answer(d, [peer, *completed], peer)
            if present:
                completed.append(box)
        if not step:
            break
        box = make_box(netns, index)
        join = BackgroundJoin(d, box)
        join.start()
        stalled = wait_until(lambda: f"stalled at {step}" in d.log_text(), timeout=30)  # noqa: B023
        assert stalled, f"the join never reached step {step}"
        cut = (box, step, survives)
        d.kill9()
        join.join(10)
        assert not join.acknowledged and join.error is not None, f"{step}: the join was acknowledged"
    assert len(completed) == sum(survives for _step, survives in STEPS)
    leave_restores_originals(d, completed)


def test_killed_at_random_moments_of_joins(world: tuple[Daemon, Box], netns: Namespaces) -> None:
    d, peer = world
    started = time.monotonic()
    timing = make_box(netns, 1)
    call("POST", "/v1/endpoints", join_body(timing), str(d.socket))
    duration = time.monotonic() - started
    rng = random.Random(SEED)
    completed, outcomes = [timing], []
    for index in range(2, 2 + ROUNDS):
        box = make_box(netns, index)
        join = BackgroundJoin(d, box)
        join.start()
        time.sleep(rng.uniform(0, 1.5 * duration))
        d.kill9()
        join.join(10)
        d.start()
        present = joined_or_absent(d, box, peer)
        outcomes.append((join.acknowledged, present))
        if join.acknowledged:
            assert present, f"round {index}: an acknowledged join is gone after the restart"
        all_answer(d, [peer, *completed], peer)
        if present:
            completed.append(box)
    print(f"join takes {duration * 1000:.0f} ms; (acknowledged, present) per round: {outcomes}")
    leave_restores_originals(d, completed)


SQUATTER = r"""
import socket, time
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind(("0.0.0.0", 53))
print("bound", flush=True)
time.sleep(600)
"""


def test_a_sandbox_that_cannot_be_served_after_a_restart_gets_its_resolv_conf_back(
    world: tuple[Daemon, Box], netns: Namespaces
) -> None:
    """While the daemon was down a process took port 53 in the sandbox: the restarted daemon cannot
    listen there, drops the sandbox and restores its original resolv.conf (it used to leave it
    pointing at a resolver that no longer answers)."""
    d, peer = world
    box = make_box(netns, 1)
    call("POST", "/v1/endpoints", join_body(box), str(d.socket))
    assert joined_or_absent(d, box, peer)
    d.kill9()
    squatter = netns.spawn(box.netns, [VENV_PYTHON, "-c", SQUATTER])
    assert squatter.stdout is not None and squatter.stdout.readline().strip() == "bound"
    d.start()
    assert box.endpoint not in listed(d)
    assert box.resolv_conf.read_bytes() == box.original
    assert dig(peer.netns, f"{box.name}.{DOMAIN}").status == "NXDOMAIN"
    all_answer(d, [peer], peer)


# ---- the state directory cannot be written --------------------------------------------------------------

PAGE = 4096


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs mounted on a directory under tmp_path (unmounted afterwards)."""
    mount = tmp_path / "statefs"
    mount.mkdir()
    run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "rt7b-state", str(mount)], check=True)
    try:
        yield mount
    finally:
        run(["umount", "-l", str(mount)])


def fill(directory: Path, leave_free: int) -> list[Path]:
    """Fill the file system of `directory` with page-sized files, then free `leave_free` of them."""
    fillers: list[Path] = []
    chunk = b"x" * PAGE
    while True:
        path = directory / f"filler{len(fillers)}"
        try:
            with open(path, "wb") as f:
                f.write(chunk)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
            path.unlink(missing_ok=True)
            break
        fillers.append(path)
    for path in fillers[-leave_free:] if leave_free else []:
        path.unlink()
    return fillers[: len(fillers) - leave_free]


@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_unwritable_state_dir_refuses_changes_and_loses_nothing(
    netns: Namespaces, small_fs: Path, tmp_path: Path, fault: str
) -> None:
    """`full`: one page is left and the join's record (its sandbox's resolv.conf, to restore it) needs
    two, so the save gets a short write and then ENOSPC, and so does the whole snapshot written after a
    failed save; smaller changes may still fit, and are then durable. `read-only`: every change is
    refused."""
    d = Daemon(tmp_path / "daemon")
    d.state_dir = small_fs / "state"
    try:
        d.start()
        _unwritable_state_dir(d, netns, small_fs, fault)
    finally:
        d.stop()


def _unwritable_state_dir(d: Daemon, netns: Namespaces, mount: Path, fault: str) -> None:
    d.ok("network", "create", "n1", "--domain", DOMAIN)
    keep = make_box(netns, 0)
    call("POST", "/v1/endpoints", join_body(keep), str(d.socket))
    for i in range(40):  # a state bigger than the page left: a whole snapshot cannot be written either
        body = {"name": f"service-with-a-long-name-{i:02d}", "vips": [f"10.61.9.{i + 10}"]}
        call("POST", "/v1/networks/n1/services", body, str(d.socket))
    before = d.snapshot()

    fillers: list[Path] = []
    if fault == "read-only":
        run(["mount", "-o", "remount,ro", str(mount)], check=True)
    else:
        fillers = fill(mount, leave_free=1)
        free = os.statvfs(mount)
        assert free.f_bavail * free.f_frsize == PAGE, "the file system should have one page free"

    fresh = make_box(netns, 1, comment_lines=100)
    refusals = {
        "join": d.cli("join", "n1", "--netns", fresh.netns, "--endpoint", "ep1", "--name", fresh.name)
    }
    if fault == "read-only":
        refusals["network create"] = d.cli("network", "create", "n2")
        refusals["service create"] = d.cli("service", "create", "n1", "web", "--mode", "dnsrr")
        refusals["leave"] = d.cli("leave", keep.endpoint)
    reason = "Read-only file system" if fault == "read-only" else "No space left on device"
    for what, result in refusals.items():
        assert result.rc == 1, f"{what} was not refused: {result}"
        assert f"cannot save the state in {d.state_dir}: {reason}" in result.err, result.err
    assert d.snapshot() == before, "a refused change left something behind"
    assert not list(d.state_dir.glob("*.tmp")), "a temporary file was left"
    assert sockets_by_netns(d.pid)[netns_inode(fresh.netns)] == 0
    assert fresh.resolv_conf.read_bytes() == fresh.original
    assert dig(fresh.netns, keep.name, timeout=1).status == "NO-REPLY"
    # the daemon keeps serving, and a refused leave left the sandbox as it was
    assert joined_or_absent(d, keep, keep)
    assert dig(keep.netns, f"{fresh.name}.{DOMAIN}").status == "NXDOMAIN"
    d.restart_after_kill9()
    assert d.snapshot() == before, "the saved state is not what was acknowledged"

    if fault == "read-only":
        run(["mount", "-o", "remount,rw", str(mount)], check=True)
    for path in fillers:
        path.unlink()
    call("POST", "/v1/endpoints", join_body(fresh), str(d.socket))
    d.ok("network", "create", "n2")
    acknowledged = d.snapshot()
    d.restart_after_kill9()
    assert d.snapshot() == acknowledged
    assert joined_or_absent(d, fresh, keep)
    assert joined_or_absent(d, keep, fresh)
    leave_restores_originals(d, [fresh, keep])
