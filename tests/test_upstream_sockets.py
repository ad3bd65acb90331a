"""The bare upstream descriptors: `_new_sockets` makes non-blocking close-on-exec sockets of the asked
family and type and yields to the loop thread every few sockets, and `connect_fd` connects one to the
upstream's address (v4, v6, v6 with a scope) as socket.connect would, with the errno's OSError kind on
failure."""

from __future__ import annotations

import fcntl
import os
import socket

import pytest

from resolver.registry.model import Upstream
from resolver.server.upstream import _new_sockets, connect_fd, raw_socket


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.parametrize(
    ("family", "kind"),
    [
        (socket.AF_INET, socket.SOCK_DGRAM),
        (socket.AF_INET6, socket.SOCK_DGRAM),
        (socket.AF_INET, socket.SOCK_STREAM),
    ],
)
def test_new_sockets_are_nonblocking_cloexec_of_the_asked_kind(family: int, kind: int) -> None:
    fds = _new_sockets(socket.AddressFamily(family), kind, 70)  # more than one GIL yield
    try:
        assert len(set(fds)) == 70
        for fd in fds:
            assert os.get_blocking(fd) is False
            assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
            with socket.socket(fileno=os.dup(fd)) as view:
                assert view.family == family
                assert view.type == kind
    finally:
        for fd in fds:
            os.close(fd)


def _receiver(family: socket.AddressFamily, address: str) -> socket.socket:
    receiver = socket.socket(family, socket.SOCK_DGRAM)
    receiver.bind((address, 0))
    receiver.settimeout(2)
    return receiver


CASES = [
    pytest.param(socket.AF_INET, "127.0.0.1", "127.0.0.1", id="v4"),
    pytest.param(socket.AF_INET6, "::1", "::1", id="v6"),
    pytest.param(socket.AF_INET6, "::1", "::1%lo", id="v6-scope-name"),
    pytest.param(socket.AF_INET6, "::1", "::1%1", id="v6-scope-index"),
]


@pytest.mark.parametrize(("family", "bind", "address"), CASES)
def test_connect_fd_reaches_the_upstream_and_only_it(
    family: socket.AddressFamily, bind: str, address: str
) -> None:
    if family == socket.AF_INET6 and not _has_ipv6_loopback():
        pytest.skip("no IPv6 loopback address (::1) in this namespace")
    with _receiver(family, bind) as receiver:
        upstream = Upstream(address=address, port=receiver.getsockname()[1])
        fd = raw_socket(upstream, socket.SOCK_DGRAM)
        try:
            connect_fd(fd, upstream)
            os.write(fd, b"query")
            data, source = receiver.recvfrom(100)
            assert data == b"query"
            with socket.socket(fileno=os.dup(fd)) as view:
                assert view.getpeername()[:2] == (bind, receiver.getsockname()[1])
                assert source[1] == view.getsockname()[1]
            receiver.sendto(b"reply", source)
            with _receiver(family, bind) as stranger:
                stranger.sendto(b"spoof", source)  # a connected socket drops other senders
            os.set_blocking(fd, True)
            assert os.read(fd, 100) == b"reply"
        finally:
            os.close(fd)


def test_connect_fd_failure_is_an_oserror_of_the_errno_kind() -> None:
    fd = raw_socket(Upstream(address="127.0.0.1", port=53), socket.SOCK_DGRAM)
    try:
        with pytest.raises(OSError) as raised:
            connect_fd(fd, Upstream(address="::1", port=53))  # an IPv4 socket, an IPv6 address
        assert raised.value.errno is not None
        assert raised.value.strerror
    finally:
        os.close(fd)


def test_refused_port_reads_as_connection_refused() -> None:
    with _receiver(socket.AF_INET, "127.0.0.1") as closed:
        port = closed.getsockname()[1]
    upstream = Upstream(address="127.0.0.1", port=port)
    fd = raw_socket(upstream, socket.SOCK_DGRAM)
    try:
        connect_fd(fd, upstream)
        os.write(fd, b"query")
        os.set_blocking(fd, True)
        with pytest.raises(ConnectionRefusedError):
            os.read(fd, 100)
    finally:
        os.close(fd)


def test_a_refill_lets_the_loop_thread_in_every_few_sockets(monkeypatch: pytest.MonkeyPatch) -> None:
    """The namespace worker makes a batch holding the GIL; it must give the GIL and the CPU away every
    GIL_YIELD_EVERY sockets, or the loop thread stalls for the whole batch (milliseconds at 256)."""
    from resolver.server import upstream

    made_before_yield: list[int] = []
    made = 0
    real_socket = upstream._c_socket

    def counting_socket(*args: int) -> int:
        nonlocal made
        made += 1
        return real_socket(*args)

    monkeypatch.setattr(upstream, "_c_socket", counting_socket)
    monkeypatch.setattr(upstream.os, "sched_yield", lambda: made_before_yield.append(made))
    fds = upstream._new_sockets(socket.AF_INET, socket.SOCK_DGRAM, 3 * upstream.GIL_YIELD_EVERY + 5)
    for fd in fds:
        os.close(fd)
    every = upstream.GIL_YIELD_EVERY
    assert made_before_yield == [every, 2 * every, 3 * every]
