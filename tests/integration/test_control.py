"""The control socket: root only (by file mode, and by the peer's uid when the file mode is opened up), and
bad requests (unknown network, bad name, bad address, an endpoint id already on the network...) exit 1
with a message that names the problem, and change nothing: listings, resolv.conf, listeners, answers.
"""

from __future__ import annotations

import shutil
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .nstools import (
    NETNS_ETC,
    NOBODY,
    VENV_PYTHON,
    Daemon,
    Namespaces,
    as_user,
    dig,
    netns_inode,
    require,
    run,
    sockets_by_netns,
)

pytestmark = pytest.mark.netns

RAW_CLIENT = r"""
import json, socket, sys
method, path, body = sys.argv[2], sys.argv[3], sys.argv[4] if len(sys.argv) > 4 else ""
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.connect(sys.argv[1])
head = f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
sock.sendall(head.encode() + body.encode())
data = b""
while chunk := sock.recv(65536):
    data += chunk
print(data.decode(errors="replace"))
"""


@dataclass(frozen=True)
class Setup:
    daemon: Daemon
    joined: str  # a sandbox with endpoint ep-alpha (alpha, 10.51.0.2) on n1
    fresh: str  # a namespace that never joined


@pytest.fixture(scope="module")
def setup(module_netns: Namespaces) -> Iterator[Setup]:
    """A daemon whose directory is under /tmp (so that a test can open it up to `nobody`)."""
    require()
    workdir = Path(tempfile.mkdtemp(prefix="rt3-ctl-", dir="/tmp"))
    d = Daemon(workdir)
    try:
        d.start()
        joined, fresh = module_netns.add(), module_netns.add()
        d.ok("network", "create", "n1", "--domain", "ctl.test")
        d.join("n1", joined, "ep-alpha", "alpha", "--alias", "first", "--ipv4", "10.51.0.2")
        yield Setup(d, joined, fresh)
    finally:
        status = d.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    assert status == 0, f"the daemon did not exit 0 on SIGTERM (status {status})"


def assert_nothing_changed(s: Setup, before: tuple[object, object]) -> None:
    assert s.daemon.snapshot() == before
    assert not (NETNS_ETC / s.fresh).exists(), "a refused join must not write resolv.conf"
    assert sockets_by_netns(s.daemon.pid)[netns_inode(s.fresh)] == 0, "a refused join left a listener"
    assert dig(s.fresh, "alpha", timeout=1).status == "NO-REPLY"
    alpha = dig(s.joined, "alpha")
    assert (alpha.status, alpha.addresses) == ("NOERROR", ["10.51.0.2"])


# ---- root only ---------------------------------------------------------------------------------------


def test_socket_file_is_root_only(setup: Setup) -> None:
    st = setup.daemon.socket.stat()
    assert stat.S_ISSOCK(st.st_mode)
    assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o600, 0)


def test_nobody_is_refused_by_the_file_mode(setup: Setup) -> None:
    require("setpriv")
    before = setup.daemon.snapshot()
    for args in (["status"], ["network", "create", "evil"]):
        rc, out, err = setup.daemon.cli(*args, user=NOBODY)
        assert (rc, out) == (1, ""), (args, rc, out, err)
        assert err.startswith("error: permission denied on ") and "root only" in err, err
    assert_nothing_changed(setup, before)


def test_nobody_is_refused_by_peer_uid_even_when_the_socket_is_reachable(setup: Setup) -> None:
    require("setpriv")
    if run(as_user(NOBODY, [VENV_PYTHON, "-c", "pass"])).returncode != 0:
        pytest.skip(f"user nobody cannot run {VENV_PYTHON}")
    d = setup.daemon
    before = d.snapshot()
    modes = {path: stat.S_IMODE(path.stat().st_mode) for path in (d.workdir, d.socket)}
    try:
        d.workdir.chmod(0o711)
        d.socket.chmod(0o666)
        for args in (["status"], ["network", "create", "evil"]):
            rc, out, err = d.cli(*args, user=NOBODY)
            assert (rc, out, err) == (1, "", "error: the control socket is for root only\n"), args
        raw = run(as_user(NOBODY, [VENV_PYTHON, "-I", "-c", RAW_CLIENT, d.socket, "POST", "/v1/networks",
                                   '{"name": "evil"}']))  # fmt: skip
        assert raw.returncode == 0, raw.stderr
        assert raw.stdout.startswith("HTTP/1.1 403 "), raw.stdout
        assert '"kind": "forbidden"' in raw.stdout
    finally:
        for path, mode in modes.items():
            path.chmod(mode)
    assert_nothing_changed(setup, before)


# ---- bad requests ------------------------------------------------------------------------------------

NEW = ["--endpoint", "ep-new", "--name", "newcomer", "--ipv4", "10.51.0.9"]
BAD_REQUESTS = {
    "unknown network": (
        ["join", "nosuchnet", "--netns", "{fresh}", *NEW],
        ["network 'nosuchnet' does not exist"],
    ),
    "bad name": (
        [
            "join",
            "n1",
            "--netns",
            "{fresh}",
            "--endpoint",
            "ep-new",
            "--name",
            "bad_name!",
            "--ipv4",
            "10.51.0.9",
        ],
        ["'bad_name!'", "not a valid DNS label"],
    ),
    "bad alias": (
        ["join", "n1", "--netns", "{fresh}", *NEW, "--alias", "a..b"],
        ["'a..b'", "not a valid DNS label"],
    ),
    "bad IPv4 address": (
        [
            "join",
            "n1",
            "--netns",
            "{fresh}",
            "--endpoint",
            "ep-new",
            "--name",
            "newcomer",
            "--ipv4",
            "10.51.0.300",
        ],
        ["'10.51.0.300' is not a valid IPv4 address"],
    ),
    "bad IPv6 address": (
        ["join", "n1", "--netns", "{fresh}", *NEW, "--ipv6", "fd00::zz"],
        ["'fd00::zz' is not a valid IPv6 address"],
    ),
    "endpoint id already on the network": (
        [
            "join",
            "n1",
            "--netns",
            "{fresh}",
            "--endpoint",
            "ep-alpha",
            "--name",
            "other",
            "--ipv4",
            "10.51.0.9",
        ],
        ["endpoint 'ep-alpha' is already joined to network 'n1'"],
    ),
    "namespace that does not exist": (
        ["join", "n1", "--netns", "rt3-doesnotexist", *NEW],
        ["/run/netns/rt3-doesnotexist", "does not exist"],
    ),
    "explicit resolv.conf that does not exist": (
        ["join", "n1", "--netns", "{fresh}", *NEW, "--resolv-conf", "/nonexistent-rt3/resolv.conf"],
        ["/nonexistent-rt3/resolv.conf", "does not exist"],
    ),
    "network that exists": (["network", "create", "n1"], ["network 'n1' already exists"]),
    "bad network name": (["network", "create", "Bad Net"], ["'Bad Net'", "not a valid DNS label"]),
    "bad domain": (["network", "create", "n9", "--domain", "bad..domain"], ["bad..domain"]),
    "service on unknown network": (
        ["service", "create", "nosuchnet", "s1"],
        ["network 'nosuchnet' does not exist"],
    ),
    "bad VIP": (["service", "create", "n1", "s1", "--vip", "10.51.0.999"], ["'10.51.0.999'"]),
    "leave of an unknown endpoint": (["leave", "ep-nobody"], ["'ep-nobody'"]),
    "removing an unknown network": (["network", "rm", "nosuchnet"], ["'nosuchnet'"]),
    "removing a network in use": (["network", "rm", "n1"], ["'n1'"]),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_request_exits_1_with_a_message_and_changes_nothing(setup: Setup, case: str) -> None:
    args, fragments = BAD_REQUESTS[case]
    args = [a.format(fresh=setup.fresh) for a in args]
    before = setup.daemon.snapshot()
    rc, out, err = setup.daemon.cli(*args)
    assert (rc, out) == (1, ""), f"{case}: rc {rc}, stdout {out!r}, stderr {err!r}"
    assert err.startswith("error: ") and err.count("\n") == 1, err
    missing = [f for f in fragments if f not in err]
    assert missing == [], f"{case}: message {err.strip()!r} lacks {missing}"
    assert_nothing_changed(setup, before)


def test_usage_error_exits_2(setup: Setup) -> None:
    before = setup.daemon.snapshot()
    rc, _out, err = setup.daemon.cli("join", "n1", "--endpoint", "ep-new", "--name", "x")
    assert rc == 2 and "--netns" in err, err
    assert_nothing_changed(setup, before)
