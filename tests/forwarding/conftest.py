"""Fixtures of the forwarding tests: network namespaces (`rt4-` + random hex), the daemon run as a
process with its settings in RESOLVER_* variables, dnsmasq upstreams on host loopback addresses or inside
a namespace, and scripted upstreams (tests.forwarding.helpers.ScriptedUpstream).

Everything a fixture creates is removed in its teardown, also when the test fails: endpoints leave, the
daemon is stopped (its log is printed, so a failing test shows it), dnsmasq and scripted servers stop,
namespaces and their /etc/netns directories are deleted. Tests skip, naming what is missing, when not
run as root or when `ip`, `dnsmasq` or `dig` is absent. Host upstreams listen on a random 127.X.Y.0/24
block picked per session, so concurrent test runs do not collide.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.message
import pytest

from resolver.control.client import ControlError, call

from .helpers import Handler, ScriptedUpstream, netns_socket, rss_kib

ROOT = Path(__file__).resolve().parents[2]
RESOLVER_BIN = ROOT / ".venv" / "bin" / "resolver"
NETNS_PREFIX = "rt4-"
NETWORK = "fwd"


def _missing_requirements() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, port 53)"
    for tool in ("ip", "dnsmasq", "dig"):
        if shutil.which(tool) is None:
            return f"needs the `{tool}` binary on PATH"
    if not RESOLVER_BIN.exists():
        return f"needs the daemon entry point {RESOLVER_BIN} (run ./scripts/test once to build .venv)"
    return None


@pytest.fixture(autouse=True)
def _requirements() -> None:
    missing = _missing_requirements()
    if missing:
        pytest.skip(missing)


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=check, timeout=30)


# ---- loopback addresses -------------------------------------------------------------------------------


class Addresses:
    """Host loopback addresses in one random 127.X.Y.0/24 block (all of 127/8 is local on `lo`)."""

    def __init__(self) -> None:
        self.prefix = f"127.{secrets.choice(range(100, 200))}.{secrets.randbelow(256)}"
        self._next = 41

    def take(self) -> str:
        if self._next > 250:
            raise RuntimeError("out of test loopback addresses")
        address = f"{self.prefix}.{self._next}"
        self._next += 1
        return address


@pytest.fixture(scope="session")
def addresses() -> Addresses:
    return Addresses()


# ---- namespaces ---------------------------------------------------------------------------------------


@pytest.fixture
def make_netns() -> Iterator[Callable[[], str]]:
    """Create namespaces `rt4-<hex>` with `lo` up; all are deleted afterwards."""
    created: list[str] = []

    def make() -> str:
        name = NETNS_PREFIX + secrets.token_hex(4)
        _run("ip", "netns", "add", name)
        created.append(name)
        _run("ip", "-n", name, "link", "set", "lo", "up")
        return name

    yield make
    for name in created:
        pids = _run("ip", "netns", "pids", name, check=False).stdout.split()
        for pid in pids:  # only processes of our own namespace: the ones this test started there
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        _run("ip", "netns", "del", name, check=False)
        shutil.rmtree(f"/etc/netns/{name}", ignore_errors=True)


# ---- the daemon ---------------------------------------------------------------------------------------


@dataclass
class Daemon:
    """A running `resolver serve` with its own control socket, state and host resolv.conf."""

    proc: subprocess.Popen[bytes]
    socket_path: str
    host_resolv_conf: Path
    log_path: Path
    endpoints: list[str] = field(default_factory=list)
    networks: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def call(self, method: str, path: str, body: Any = None) -> Any:
        return call(method, path, body, self.socket_path, timeout=15)

    def create_network(self, name: str, **options: Any) -> None:
        """Create network `name`; `options` are fields of the API body (internal, domain, dns, ttl)."""
        self.call("POST", "/v1/networks", {"name": name, **options})
        self.networks.append(name)

    def join(self, netns: str, dns: tuple[str, ...] = (), network: str = NETWORK) -> str:
        """Join `netns` to `network` (the default one is created on first use); returns the endpoint id."""
        if network == NETWORK and NETWORK not in self.networks:
            self.create_network(NETWORK)
        endpoint = secrets.token_hex(8)
        body = {
            "network": network,
            "netns": netns,
            "endpoint": endpoint,
            "name": f"c{endpoint[:6]}",
            "dns": list(dns),
        }
        self.call("POST", "/v1/endpoints", body)
        self.endpoints.append(endpoint)
        return endpoint

    def leave(self, endpoint: str) -> None:
        self.call("DELETE", f"/v1/endpoints/{endpoint}")
        self.endpoints.remove(endpoint)

    def status(self) -> dict[str, Any]:
        return self.call("GET", "/v1/status")

    def metrics(self) -> str:
        return self.call("GET", "/metrics")

    def rss_kib(self) -> int:
        return rss_kib(self.pid)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def set_host_servers(self, *servers: str) -> None:
        """Rewrite the host resolv.conf in place (same inode), as an editor or a bind mount would see it."""
        text = "".join(f"nameserver {s}\n" for s in servers)
        with open(self.host_resolv_conf, "r+") as f:
            f.seek(0)
            f.write(text)
            f.truncate()


def _wait_ready(daemon: Daemon, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon.proc.poll() is not None:
            raise RuntimeError(f"the daemon exited with {daemon.proc.returncode}:\n{daemon.log()}")
        with contextlib.suppress(ControlError):
            daemon.status()
            return
        time.sleep(0.05)
    raise RuntimeError(f"the daemon did not answer on {daemon.socket_path} in {timeout} s:\n{daemon.log()}")


def _stop(daemon: Daemon) -> None:
    for endpoint in list(daemon.endpoints):
        with contextlib.suppress(ControlError, ValueError):
            daemon.leave(endpoint)
    if daemon.proc.poll() is None:
        daemon.proc.send_signal(signal.SIGTERM)
        try:
            daemon.proc.wait(10)
        except subprocess.TimeoutExpired:
            daemon.proc.kill()
            daemon.proc.wait(5)


@pytest.fixture
def start_daemon(make_netns: Callable[[], str], tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """`start_daemon(host_servers, upstream_timeout=0.5, ...)`: each keyword is a setting, passed as
    RESOLVER_<KEY> (e.g. limits_inflight_total -> RESOLVER_LIMITS_INFLIGHT_TOTAL)."""
    daemons: list[Daemon] = []

    def start(host_servers: tuple[str, ...] | list[str] = (), **settings: Any) -> Daemon:
        base = tmp_path / f"daemon{len(daemons)}"
        base.mkdir()
        host_resolv = base / "host-resolv.conf"
        host_resolv.write_text("".join(f"nameserver {s}\n" for s in host_servers))
        log_path = base / "daemon.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("RESOLVER_")}
        env.update(
            {
                f"RESOLVER_{k.upper()}": str(v).lower() if isinstance(v, bool) else str(v)
                for k, v in settings.items()
            }
        )
        sock = str(base / "s.sock")
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [
                    str(RESOLVER_BIN),
                    "serve",
                    "--socket",
                    sock,
                    "--state-dir",
                    str(base / "state"),
                    "--host-resolv-conf",
                    str(host_resolv),
                ],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        daemon = Daemon(proc, sock, host_resolv, log_path)
        daemons.append(daemon)
        _wait_ready(daemon)
        return daemon

    yield start
    for daemon in daemons:
        _stop(daemon)
        print(f"---- daemon log ({daemon.log_path}) ----\n{daemon.log()}", file=sys.stdout)


# ---- upstream servers ---------------------------------------------------------------------------------


@pytest.fixture
def scripted(make_netns: Callable[[], str]) -> Iterator[Callable[..., ScriptedUpstream]]:
    """`scripted(address, handler, netns=None)`: a ScriptedUpstream on address:53; closed afterwards."""
    servers: list[ScriptedUpstream] = []

    def start(address: str, handler: Handler, netns: str | None = None) -> ScriptedUpstream:
        server = ScriptedUpstream(address, handler, netns)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()
    errors = [e for s in servers for e in s.errors]
    assert not errors, f"scripted upstream handlers failed: {errors!r}"


@pytest.fixture
def behind_scripted(
    addresses: Addresses,
    make_netns: Callable[[], str],
    start_daemon: Callable[..., Daemon],
    scripted: Callable[..., ScriptedUpstream],
) -> Callable[[Handler], tuple[ScriptedUpstream, Daemon, str]]:
    """`behind_scripted(handler)`: a scripted upstream, a daemon using it as its host server, and a
    joined sandbox, returned as (upstream, daemon, netns)."""

    def make(handler: Handler) -> tuple[ScriptedUpstream, Daemon, str]:
        upstream = scripted(addresses.take(), handler)
        daemon = start_daemon([upstream.address])
        netns = make_netns()
        daemon.join(netns)
        return upstream, daemon, netns

    return make


@dataclass
class Dnsmasq:
    proc: subprocess.Popen[bytes]
    address: str
    netns: str | None
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def _dnsmasq_ready(address: str, netns: str | None, timeout: float = 5.0) -> bool:
    probe = dns.message.make_query("ready.probe.invalid", "A").to_wire()
    deadline = time.monotonic() + timeout
    with contextlib.closing(netns_socket(netns, socket.SOCK_DGRAM)) as sock:
        sock.settimeout(0.1)
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                sock.sendto(probe, (address, 53))
                sock.recv(512)
                return True
            time.sleep(0.05)
    return False


@pytest.fixture
def dnsmasq(make_netns: Callable[[], str], tmp_path: Path) -> Iterator[Callable[..., Dnsmasq]]:
    """`dnsmasq(address, options, netns=None)`: dnsmasq in the foreground on address:53 (inside `netns`
    with `ip netns exec` when given), no resolv.conf, no hosts file, queries logged to a file."""
    started: list[Dnsmasq] = []

    def start(address: str, options: list[str], netns: str | None = None) -> Dnsmasq:
        base = tmp_path / f"dnsmasq{len(started)}"
        base.mkdir()
        log_path = base / "queries.log"
        command = [
            "dnsmasq",
            "--keep-in-foreground",
            "--port=53",
            f"--listen-address={address}",
            "--bind-interfaces",
            "--no-resolv",
            "--no-hosts",
            f"--pid-file={base / 'dnsmasq.pid'}",
            "--log-queries",
            f"--log-facility={log_path}",
            *options,
        ]
        if netns is not None:
            command = ["ip", "netns", "exec", netns, *command]
        proc = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        server = Dnsmasq(proc, address, netns, log_path)
        started.append(server)
        if not _dnsmasq_ready(address, netns):
            stderr = proc.stderr.read().decode() if proc.poll() is not None and proc.stderr else ""
            raise RuntimeError(f"dnsmasq on {address} (netns {netns}) did not start: {stderr}{server.log()}")
        return server

    yield start
    for server in started:
        if server.proc.poll() is None:
            server.proc.terminate()
            try:
                server.proc.wait(5)
            except subprocess.TimeoutExpired:
                server.proc.kill()
                server.proc.wait(5)
        if server.proc.stderr:
            server.proc.stderr.close()
        print(f"---- dnsmasq {server.address} (netns {server.netns}) log ----\n{server.log()}")
