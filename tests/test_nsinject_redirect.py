"""Tests for resolver.nsinject.redirect: the rendered nft script and the DNAT redirect in a real netns.

Namespace tests make their own `rtst-XXXXXXXX` namespaces and always delete them; nothing is added to the
host ruleset and all traffic stays on the namespaces' loopback.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator

import pytest
from echoserver import EchoServer

from resolver.nsinject import redirect as rdmod
from resolver.nsinject.netns import Listeners, NamespaceWorker, open_listeners_in
from resolver.nsinject.redirect import (
    RedirectError,
    install_redirect,
    redirect_present,
    remove_redirect,
    render_ruleset,
)

HAVE_NETNS = os.geteuid() == 0 and shutil.which("ip") is not None
HAVE_NFT = shutil.which("nft") is not None and shutil.which("nsenter") is not None

# Holds 0.0.0.0:53 (UDP and TCP) like an application in the container would, then queries 127.0.0.11:53.
CLIENT = """
import socket
app_u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); app_u.bind(("0.0.0.0", 53))
app_t = socket.socket(); app_t.bind(("0.0.0.0", 53)); app_t.listen()
print("app-bound-53")
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(3)
u.sendto(b"ping-udp", ("127.0.0.11", 53)); data, peer = u.recvfrom(512)
print(data.decode(), peer[1])
t = socket.create_connection(("127.0.0.11", 53), timeout=3); t.sendall(b"ping-tcp")
print(t.recv(512).decode())
"""


# ---------------------------------------------------------------------------------------------------------
# helpers and fixtures


@pytest.fixture
def netns() -> Iterator[str]:
    if not HAVE_NETNS:
        pytest.skip("needs root and ip netns")
    if not HAVE_NFT:
        pytest.skip("needs the nft and nsenter binaries")
    name = f"rtst-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, timeout=10)


@pytest.fixture
def listeners(netns: str) -> Iterator[Listeners]:
    with NamespaceWorker() as worker:
        lst = open_listeners_in(worker, netns, port=0)
    try:
        yield lst
    finally:
        lst.close()


def _in_ns(name: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", name, *cmd], capture_output=True, text=True, timeout=20, check=check
    )


def _host_ruleset() -> str:
    return subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True, check=True).stdout


# ---------------------------------------------------------------------------------------------------------
# pure


def test_render_ruleset_shape() -> None:
    script = render_ruleset("127.0.0.11", 40189)
    lines = [line.strip() for line in script.splitlines()]
    assert lines[:3] == [
        "table ip resolver_dns",
        "delete table ip resolver_dns",
        "table ip resolver_dns {",
    ]
    assert "type nat hook output priority -100; policy accept;" in lines
    assert "ip daddr 127.0.0.11 udp dport 53 dnat to 127.0.0.11:40189" in lines
    assert "ip daddr 127.0.0.11 tcp dport 53 dnat to 127.0.0.11:40189" in lines
    assert script.count("{") == script.count("}") == 2


@pytest.mark.parametrize(
    ("address", "port"),
    [("127.0.0.11", 0), ("127.0.0.11", 70000), ("127.0.0.11", True), ("::1", 5353), ("x; flush ruleset", 1)],
)
def test_render_ruleset_rejects_bad_input(address: str, port: int) -> None:
    with pytest.raises(ValueError):
        render_ruleset(address, port)


def test_missing_nft_binary_is_reported(monkeypatch: pytest.MonkeyPatch, tmp_path: os.PathLike[str]) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    for call in (
        lambda: install_redirect("rtst-none", "127.0.0.11", 40000),
        lambda: redirect_present("rtst-none", "127.0.0.11", 40000),
        lambda: remove_redirect("rtst-none"),
    ):
        with pytest.raises(RedirectError, match="nft binary is missing"):
            call()


def test_parse_ignores_foreign_rules() -> None:
    other = [
        {
            "match": {
                "op": "==",
                "left": {"payload": {"protocol": "ip", "field": "daddr"}},
                "right": "1.2.3.4",
            }
        },
        {"counter": {"packets": 0, "bytes": 0}},
        {"accept": None},
    ]
    assert rdmod._parse_rule(other) is None


# ---------------------------------------------------------------------------------------------------------
# real namespace


@pytest.mark.netns
def test_missing_namespace_raises(netns: str) -> None:
    with pytest.raises(RedirectError, match="does not exist"):
        install_redirect(f"{netns}-gone", "127.0.0.11", 40000)


@pytest.mark.netns
def test_nft_error_carries_stderr(netns: str) -> None:
    with pytest.raises(RedirectError, match="syntax error"):
        rdmod._nft_checked(netns, ["-f", "-"], "this is not nft\n")


@pytest.mark.netns
def test_redirect_reaches_random_port_and_frees_port_53(netns: str, listeners: Listeners) -> None:
    assert "resolver_dns" not in _host_ruleset()
    assert not redirect_present(netns, "127.0.0.11", listeners.port)
    install_redirect(netns, "127.0.0.11", listeners.port)
    assert redirect_present(netns, "127.0.0.11", listeners.port)
    assert not redirect_present(netns, "127.0.0.11", listeners.port + 1)

    with EchoServer(listeners):
        out = _in_ns(netns, sys.executable, "-c", CLIENT).stdout.split("\n")
    assert out[0] == "app-bound-53"
    assert out[1] == "pong-udp 53"  # conntrack rewrote the reply's source port back to 53
    assert out[2] == "pong-tcp"

    assert "resolver_dns" not in _host_ruleset()  # the rule lives only in the sandbox's namespace


@pytest.mark.netns
def test_install_is_idempotent_and_restores_after_flush(netns: str, listeners: Listeners) -> None:
    install_redirect(netns, "127.0.0.11", listeners.port)
    install_redirect(netns, "127.0.0.11", listeners.port)
    listing = _in_ns(netns, "nft", "list", "ruleset").stdout
    assert listing.count("table ip resolver_dns") == 1
    assert listing.count(f"dnat to 127.0.0.11:{listeners.port}") == 2

    _in_ns(netns, "nft", "flush", "ruleset")
    assert not redirect_present(netns, "127.0.0.11", listeners.port)
    install_redirect(netns, "127.0.0.11", listeners.port)
    assert redirect_present(netns, "127.0.0.11", listeners.port)

    install_redirect(netns, "127.0.0.11", listeners.port + 1)  # port change replaces, does not add
    assert not redirect_present(netns, "127.0.0.11", listeners.port)
    assert redirect_present(netns, "127.0.0.11", listeners.port + 1)
    assert _in_ns(netns, "nft", "list", "ruleset").stdout.count("dnat to") == 2


@pytest.mark.netns
def test_flushed_chain_is_not_present(netns: str, listeners: Listeners) -> None:
    install_redirect(netns, "127.0.0.11", listeners.port)
    _in_ns(netns, "nft", "flush", "chain", "ip", "resolver_dns", "output")
    assert not redirect_present(netns, "127.0.0.11", listeners.port)


@pytest.mark.netns
def test_remove_redirect_leaves_other_tables(netns: str, listeners: Listeners) -> None:
    _in_ns(netns, "nft", "add", "table", "inet", "app_filter")
    install_redirect(netns, "127.0.0.11", listeners.port)
    remove_redirect(netns)
    tables = _in_ns(netns, "nft", "list", "tables").stdout
    assert "resolver_dns" not in tables
    assert "table inet app_filter" in tables
    assert not redirect_present(netns, "127.0.0.11", listeners.port)
    remove_redirect(netns)  # already gone: no error
