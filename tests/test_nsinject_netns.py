"""Tests for resolver.nsinject.netns: path rules, the namespace worker, lo, and listeners in a real netns.

Namespace tests make their own `rtst-XXXXXXXX` namespaces and always delete them. All traffic stays on the
loopback of those namespaces.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from echoserver import EchoServer

from resolver.nsinject import netns as nsmod
from resolver.nsinject.netns import (
    Listeners,
    NamespaceError,
    NamespaceWorker,
    WorkerBrokenError,
    aopen_listeners_in,
    current_netns_identity,
    ensure_loopback_up,
    netns_identity,
    netns_path,
    open_listeners,
    open_listeners_in,
    socket_netns_identity,
)

HAVE_NETNS = os.geteuid() == 0 and shutil.which("ip") is not None

UDP_TCP_CLIENT = """
import socket, sys
port = int(sys.argv[1])
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(3)
u.sendto(b"ping-udp", ("127.0.0.11", port)); print(u.recvfrom(512)[0].decode())
t = socket.create_connection(("127.0.0.11", port), timeout=3); t.sendall(b"ping-tcp")
print(t.recv(512).decode())
"""


# ---------------------------------------------------------------------------------------------------------
# helpers and fixtures


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10, check=check)


def _unique_name() -> str:
    return f"rtst-{secrets.token_hex(4)}"


@pytest.fixture
def need_netns() -> None:
    if not HAVE_NETNS:
        pytest.skip("needs root and ip netns")


@pytest.fixture
def netns(need_netns: None) -> Iterator[str]:
    name = _unique_name()
    _ip("netns", "add", name)
    try:
        yield name
    finally:
        _ip("netns", "del", name, check=False)


@pytest.fixture
def worker() -> Iterator[NamespaceWorker]:
    w = NamespaceWorker()
    try:
        yield w
    finally:
        w.close()


def _lo_is_up(name: str) -> bool:
    link = json.loads(_ip("-n", name, "-j", "link", "show", "lo").stdout)[0]
    return "UP" in link["flags"]


def _run_client_in(name: str, port: int) -> list[str]:
    proc = subprocess.run(
        ["ip", "netns", "exec", name, sys.executable, "-c", UDP_TCP_CLIENT, str(port)],
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    )
    return proc.stdout.split()


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


# ---------------------------------------------------------------------------------------------------------
# pure: paths and identities


def test_netns_path_maps_names_and_keeps_absolute_paths() -> None:
    assert netns_path("web1") == "/run/netns/web1"
    assert netns_path("netns-1f2e.x_y") == "/run/netns/netns-1f2e.x_y"
    assert netns_path("/proc/1234/ns/net") == "/proc/1234/ns/net"
    assert netns_path("/var/run/netns/a") == "/var/run/netns/a"


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        ("", "non-empty"),
        ("a/b", "'/'"),
        ("..", "not allowed"),
        (".", "not allowed"),
        ("../etc", "'/'"),
        ("/run/netns/../../etc/passwd", "'..'"),
        ("a\0b", "NUL"),
        ("x" * 256, "longer"),
    ],
)
def test_netns_path_rejects_bad_names(bad: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        netns_path(bad)


def test_netns_identity_of_missing_path_is_none(tmp_path: os.PathLike[str]) -> None:
    assert netns_identity(os.path.join(tmp_path, "gone")) is None
    assert netns_identity("/proc/999999999/ns/net") is None


def test_current_identity_matches_thread_self() -> None:
    st = os.stat("/proc/thread-self/ns/net")
    assert current_netns_identity() == (st.st_dev, st.st_ino)


# ---------------------------------------------------------------------------------------------------------
# the worker


def test_worker_thread_is_born_home_and_stays_single(worker: NamespaceWorker) -> None:
    host = current_netns_identity()
    assert worker.home_identity == host
    assert worker.thread_netns_identity() == host
    names = [t.name for t in threading.enumerate() if t.name.startswith("netns-worker")]
    assert len(names) == 1


@pytest.mark.netns
def test_run_in_enters_target_and_returns_home(worker: NamespaceWorker, netns: str) -> None:
    host = current_netns_identity()
    target = netns_identity(netns_path(netns))
    assert target is not None and target != host
    assert worker.run_in(netns, current_netns_identity) == target
    assert worker.run_in(netns_path(netns), current_netns_identity) == target
    assert worker.thread_netns_identity() == host
    assert current_netns_identity() == host
    before = {t.ident for t in threading.enumerate()}
    for _ in range(5):
        worker.run_in(netns, current_netns_identity)
    assert {t.ident for t in threading.enumerate()} == before


@pytest.mark.netns
def test_run_in_returns_home_when_fn_raises(worker: NamespaceWorker, netns: str) -> None:
    def boom() -> None:
        raise KeyError("inside")

    with pytest.raises(KeyError, match="inside"):
        worker.run_in(netns, boom)
    assert worker.thread_netns_identity() == current_netns_identity()
    assert not worker.broken
    assert worker.run_in(netns, current_netns_identity) == netns_identity(netns_path(netns))


@pytest.mark.netns
def test_missing_namespace_raises_namespace_error(worker: NamespaceWorker, need_netns: None) -> None:
    name = _unique_name()
    with pytest.raises(NamespaceError, match=f"/run/netns/{name}.*does not exist"):
        worker.run_in(name, current_netns_identity)
    assert worker.thread_netns_identity() == current_netns_identity()


@pytest.mark.netns
def test_non_namespace_file_raises_namespace_error(
    worker: NamespaceWorker, need_netns: None, tmp_path: os.PathLike[str]
) -> None:
    path = os.path.join(tmp_path, "plain")
    with open(path, "w") as fh:
        fh.write("x")
    with pytest.raises(NamespaceError, match="not a network namespace"):
        worker.run_in(path, current_netns_identity)
    assert worker.thread_netns_identity() == current_netns_identity()


@pytest.mark.netns
def test_failed_switch_back_breaks_worker(
    worker: NamespaceWorker, netns: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_setns = nsmod._setns
    calls = []

    def flaky_setns(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 2:  # the switch back home
            raise OSError(1, "Operation not permitted")
        real_setns(fd)

    monkeypatch.setattr(nsmod, "_setns", flaky_setns)
    with pytest.raises(WorkerBrokenError, match=f"broken.*{netns}.*home namespace"):
        worker.run_in(netns, lambda: 42)
    assert worker.broken
    with pytest.raises(WorkerBrokenError):
        worker.run_in(netns, lambda: 42)
    monkeypatch.setattr(nsmod, "_setns", real_setns)
    with pytest.raises(WorkerBrokenError):
        worker.run_in(netns, lambda: 42)


def test_closed_worker_and_coroutines_are_refused() -> None:
    w = NamespaceWorker()

    async def coro() -> None:
        return None

    with pytest.raises(TypeError, match="coroutine"):
        w.run_in("/run/netns/x", coro)
    w.close()
    w.close()
    with pytest.raises(RuntimeError, match="closed"):
        w.run_in("/run/netns/x", current_netns_identity)


@pytest.mark.netns
def test_arun_in_keeps_loop_thread_home(worker: NamespaceWorker, netns: str) -> None:
    async def main() -> tuple[tuple[int, int], tuple[int, int]]:
        inside = await worker.arun_in(netns, current_netns_identity)
        return inside, current_netns_identity()

    host = current_netns_identity()
    inside, loop_side = asyncio.run(main())
    assert inside == netns_identity(netns_path(netns))
    assert loop_side == host
    assert worker.thread_netns_identity() == host


# ---------------------------------------------------------------------------------------------------------
# lo and listeners


@pytest.mark.netns
def test_loopback_comes_up_in_fresh_namespace(worker: NamespaceWorker, netns: str) -> None:
    assert not _lo_is_up(netns)
    assert worker.run_in(netns, ensure_loopback_up) is True
    assert _lo_is_up(netns)
    assert worker.run_in(netns, ensure_loopback_up) is False


@pytest.mark.netns
def test_listeners_live_in_target_namespace(worker: NamespaceWorker, netns: str) -> None:
    lst = open_listeners_in(worker, netns)
    try:
        target = netns_identity(netns_path(netns))
        assert socket_netns_identity(lst.udp) == target
        assert socket_netns_identity(lst.tcp) == target
        assert target != current_netns_identity()
        assert lst.port == 53
        assert lst.udp.getsockname() == ("127.0.0.11", 53)
        assert lst.tcp.getsockname() == ("127.0.0.11", 53)
        assert lst.tcp.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
        for sock in (lst.udp, lst.tcp):
            assert not sock.getblocking()
            assert not sock.get_inheritable()
        assert _lo_is_up(netns)
    finally:
        lst.close()


@pytest.mark.netns
def test_udp_and_tcp_echo_answer_client_inside_namespace(worker: NamespaceWorker, netns: str) -> None:
    lst = open_listeners_in(worker, netns)
    try:
        with EchoServer(lst):
            assert _run_client_in(netns, 53) == ["pong-udp", "pong-tcp"]
    finally:
        lst.close()


@pytest.mark.netns
def test_client_socket_made_through_worker_reaches_listener(worker: NamespaceWorker, netns: str) -> None:
    lst = open_listeners_in(worker, netns)
    client = worker.run_in(netns, socket.socket, socket.AF_INET, socket.SOCK_DGRAM)
    try:
        assert socket_netns_identity(client) == netns_identity(netns_path(netns))
        client.settimeout(3)
        with EchoServer(lst):
            client.sendto(b"ping-1", ("127.0.0.11", 53))
            assert client.recvfrom(512)[0] == b"pong-1"
    finally:
        client.close()
        lst.close()


@pytest.mark.netns
def test_port_zero_binds_udp_and_tcp_to_same_ephemeral_port(worker: NamespaceWorker, netns: str) -> None:
    lst = open_listeners_in(worker, netns, port=0)
    try:
        assert lst.port not in (0, 53)
        assert lst.udp.getsockname() == ("127.0.0.11", lst.port)
        assert lst.tcp.getsockname() == ("127.0.0.11", lst.port)
        with EchoServer(lst):
            assert _run_client_in(netns, lst.port) == ["pong-udp", "pong-tcp"]
    finally:
        lst.close()


@pytest.mark.netns
def test_port_zero_retries_when_tcp_port_is_taken(
    worker: NamespaceWorker, netns: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_tcp = nsmod._tcp_socket
    attempts = []

    def busy_once(family: socket.AddressFamily, address: str, port: int, backlog: int) -> socket.socket:
        attempts.append(port)
        if len(attempts) == 1:
            raise OSError(98, "Address already in use")
        return real_tcp(family, address, port, backlog)

    monkeypatch.setattr(nsmod, "_tcp_socket", busy_once)
    before = _fd_count()
    lst = open_listeners_in(worker, netns, port=0)
    try:
        assert len(attempts) == 2
        assert lst.tcp.getsockname()[1] == lst.udp.getsockname()[1] == lst.port
        assert _fd_count() == before + 2  # the first UDP socket was closed
    finally:
        lst.close()


@pytest.mark.netns
def test_failed_bind_closes_everything(worker: NamespaceWorker, netns: str) -> None:
    first = open_listeners_in(worker, netns)
    try:
        before = _fd_count()
        with pytest.raises(OSError) as info:
            open_listeners_in(worker, netns)
        assert info.value.errno == 98
        assert _fd_count() == before
    finally:
        first.close()


def test_open_listeners_rejects_bad_address() -> None:
    with pytest.raises(ValueError):
        open_listeners("not-an-ip")


@pytest.mark.netns
def test_async_open_listeners_in(worker: NamespaceWorker, netns: str) -> None:
    async def main() -> tuple[list[bytes], Listeners]:
        lst = await aopen_listeners_in(worker, netns, port=0)
        loop = asyncio.get_running_loop()
        replies: list[bytes] = []

        class Echo(asyncio.DatagramProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport = transport

            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                self.transport.sendto(data.replace(b"ping", b"pong"), addr)  # type: ignore[attr-defined]

        transport, _ = await loop.create_datagram_endpoint(Echo, sock=lst.udp)
        client = await worker.arun_in(netns, socket.socket, socket.AF_INET, socket.SOCK_DGRAM)
        client.setblocking(False)
        with client:
            await loop.sock_sendto(client, b"ping-async", ("127.0.0.11", lst.port))
            replies.append(await asyncio.wait_for(loop.sock_recv(client, 512), 3))
        transport.close()
        return replies, lst

    replies, lst = asyncio.run(main())
    lst.close()
    assert replies == [b"pong-async"]


@pytest.mark.netns
def test_closing_sockets_frees_deleted_namespace(worker: NamespaceWorker, need_netns: None) -> None:
    name = _unique_name()
    veth = name  # rtst- + 8 hex = 13 chars, fits IFNAMSIZ
    _ip("netns", "add", name)
    try:
        _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", name)
        lst = open_listeners_in(worker, name)
        try:
            _ip("netns", "del", name)
            time.sleep(0.2)
            assert _ip("link", "show", veth, check=False).returncode == 0, "sockets should pin the netns"
        finally:
            lst.close()
        deadline = time.monotonic() + 10
        while _ip("link", "show", veth, check=False).returncode == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _ip("link", "show", veth, check=False).returncode != 0, "netns not freed after close"
    finally:
        _ip("link", "del", veth, check=False)
        _ip("netns", "del", name, check=False)


@pytest.mark.netns
def test_identity_notices_replaced_namespace(worker: NamespaceWorker, need_netns: None) -> None:
    name = _unique_name()
    path = netns_path(name)
    _ip("netns", "add", name)
    try:
        old = netns_identity(path)
        lst = open_listeners_in(worker, name)  # pins the old namespace, so its inode cannot be reused
        try:
            _ip("netns", "del", name)
            assert netns_identity(path) is None
            _ip("netns", "add", name)
            new = netns_identity(path)
            assert new is not None and new != old
            assert socket_netns_identity(lst.udp) == old
        finally:
            lst.close()
    finally:
        _ip("netns", "del", name, check=False)
