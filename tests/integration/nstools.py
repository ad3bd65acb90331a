"""Tools for the namespace integration tests: the daemon under test, namespaces and LANs, and the DNS
clients that run inside sandboxes (dig, glibc `getent ahosts`, busybox `nslookup`, dnspython scripts).

Everything here cleans up after itself: a `Daemon` is stopped (SIGTERM, then SIGKILL), `Namespaces`
deletes every namespace, link and process it made and removes `/etc/netns/NAME` if the daemon left it.
Traffic only ever goes to loopback addresses inside namespaces made here.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol, TypeVar

import pytest

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"
RESOLVER = VENV_BIN / "resolver"
VENV_PYTHON = VENV_BIN / "python"
LISTEN = "127.0.0.11"
PREFIX = "rt3-"
NETNS_ETC = Path("/etc/netns")
NOBODY = 65534
# The daemon's default upstreams come from this file: no server, so a name that is not local gets no
# answer (SERVFAIL) and nothing ever leaves the machine.
NO_UPSTREAMS = "# integration tests: no upstream servers\n"

T = TypeVar("T")

# Daemons that are running now; a failing test gets their logs in its report (see conftest.py).
LIVE_DAEMONS: list[Daemon] = []


# ---- requirements ---------------------------------------------------------------------------------------


def missing(*tools: str) -> list[str]:
    """What this machine lacks for a namespace test: `root`, or the named executables."""
    lacking = [] if os.geteuid() == 0 else ["root"]
    lacking += [tool for tool in ("ip", "dig", *tools) if shutil.which(tool) is None]
    if not os.access(RESOLVER, os.X_OK):
        lacking.append(str(RESOLVER.relative_to(REPO)))
    return lacking


def require(*tools: str) -> None:
    """Skip the test, naming what is missing, unless we are root and every tool is installed."""
    lacking = missing(*tools)
    if lacking:
        pytest.skip(f"namespace integration test needs {', '.join(lacking)}")


# ---- processes ------------------------------------------------------------------------------------------


def run(
    cmd: Sequence[str | os.PathLike[str]],
    *,
    timeout: float = 30.0,
    env: dict[str, str] | None = None,
    check: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing text output; `check` raises with the command's stderr on failure."""
    args = [str(a) for a in cmd]
    result = subprocess.run(
        args, capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} exited {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
        )
    return result


def wait_until(predicate: Callable[[], T], timeout: float, interval: float = 0.1) -> T | None:
    """Call `predicate` until it returns something truthy (returned) or `timeout` seconds pass (None)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


class CliResult(NamedTuple):
    rc: int
    out: str
    err: str


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without RESOLVER_* settings of the caller (they would change the daemon)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESOLVER_")}
    env.update(extra)
    return env


def as_user(uid: int, cmd: Sequence[str | os.PathLike[str]]) -> list[str]:
    """`cmd` run as `uid` (same gid, no supplementary groups) through setpriv."""
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *map(str, cmd)]


def run_cli(socket_path: Path | str, *args: str, user: int | None = None, timeout: float = 30.0) -> CliResult:
    """Run `resolver ARGS...` with RESOLVER_SOCKET set; as `user` (a uid) when given."""
    cmd: list[str] = [str(RESOLVER), *args]
    if user is not None:
        cmd = as_user(user, cmd)
    result = run(cmd, timeout=timeout, env=clean_env(RESOLVER_SOCKET=str(socket_path)))
    return CliResult(result.returncode, result.stdout, result.stderr)


# ---- the daemon -----------------------------------------------------------------------------------------


class DaemonError(Exception):
    """The daemon did not start or stop as it should; the message carries its log."""


class Daemon:
    """`resolver serve` as a subprocess with everything (socket, state, logs) under `workdir`."""

    def __init__(
        self, workdir: Path, listen_mode: str = "direct", host_resolv_conf: str = NO_UPSTREAMS
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.listen_mode = listen_mode
        self.log_level: str | None = "debug"
        self.socket = workdir / "s.sock"
        self.state_dir = workdir / "state"
        self.host_resolv_conf = workdir / "resolv.conf"
        self.host_resolv_conf.write_text(host_resolv_conf)
        self.proc: subprocess.Popen[bytes] | None = None
        self.logs: list[Path] = []
        self.env: dict[str, str] = {}  # extra environment of the next `start` (e.g. a test-only hook)
        if len(str(self.socket)) > 100:
            raise DaemonError(f"socket path too long for AF_UNIX: {self.socket}")

    def command(self) -> list[str]:
        return [
            str(RESOLVER),
            "serve",
            "--socket",
            str(self.socket),
            "--state-dir",
            str(self.state_dir),
            "--host-resolv-conf",
            str(self.host_resolv_conf),
            "--listen-mode",
            self.listen_mode,
            *(["--log-level", self.log_level] if self.log_level else []),
        ]

    @property
    def pid(self) -> int:
        assert self.proc is not None, "the daemon is not running"
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 15.0) -> None:
        """Start the daemon and wait until `resolver status` answers."""
        assert not self.running(), "the daemon is already running"
        log_path = self.workdir / f"daemon-{len(self.logs) + 1}.log"
        self.logs.append(log_path)
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=clean_env(**self.env),
                start_new_session=True,
            )
        LIVE_DAEMONS.append(self)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._forget()
                raise DaemonError(f"the daemon exited with {self.proc.returncode}\n{self.log_text()}")
            if self.cli("status").rc == 0:
                return
            time.sleep(0.1)
        self.stop()
        raise DaemonError(f"the daemon did not answer `status` within {timeout} s\n{self.log_text()}")

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`; returns the exit status after SIGTERM, None if killed."""
        if self.proc is None:
            return 0
        status: int | None
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            try:
                status = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                status = None
        finally:
            self._forget()
        return status

    def kill9(self) -> None:
        """SIGKILL the daemon and reap it (the state directory stays)."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        self._forget()

    def restart_after_kill9(self) -> None:
        self.kill9()
        self.start()

    def _forget(self) -> None:
        with contextlib.suppress(ValueError):
            LIVE_DAEMONS.remove(self)

    def log_text(self) -> str:
        parts = []
        for path in self.logs:
            with contextlib.suppress(OSError):
                parts.append(f"==== {path} ====\n{path.read_text(errors='replace')}")
        return "\n".join(parts)

    # ---- client ----

    def cli(self, *args: str, user: int | None = None) -> CliResult:
        return run_cli(self.socket, *args, user=user)

    def ok(self, *args: str) -> str:
        """Run a client command that must succeed; returns its stdout."""
        result = self.cli(*args)
        assert result.rc == 0, f"resolver {' '.join(args)} exited {result.rc}: {result.err.strip()}"
        return result.out

    def join(self, network: str, netns: str, endpoint: str, name: str, *options: str) -> str:
        """`resolver join NETWORK --netns NETNS --endpoint ENDPOINT --name NAME OPTIONS...` (must work)."""
        return self.ok("join", network, "--netns", netns, "--endpoint", endpoint, "--name", name, *options)

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "--json"))

    def snapshot(self) -> tuple[Any, Any]:
        """What `ls --json` and `network ls --json` say now."""
        return self.json("ls"), self.json("network", "ls")


def stop_daemons(daemons: Sequence[Daemon]) -> None:
    """Stop every daemon; fail the test if one that was running did not exit 0 on SIGTERM."""
    failures: list[str] = []
    for instance in daemons:
        was_running = instance.running()
        status = instance.stop()
        if was_running and status != 0:
            failures.append(f"the daemon did not exit 0 on SIGTERM (status {status}):\n{instance.log_text()}")
    if failures:
        pytest.fail("\n".join(failures))


class DaemonFactory(Protocol):
    """The `daemon` fixture: starts a daemon (stopped at teardown)."""

    def __call__(self, listen_mode: str = "direct", host_resolv_conf: str = NO_UPSTREAMS) -> Daemon: ...


# ---- namespaces and LANs --------------------------------------------------------------------------------


def netns_inode(name: str) -> int:
    """The inode that identifies a named namespace (what SIOCGSKNS of its sockets gives)."""
    return os.stat(f"/run/netns/{name}").st_ino


def netns_exists(name: str) -> bool:
    return os.path.exists(f"/run/netns/{name}")


@dataclass
class Lan:
    """A bridge in its own hub namespace; `attach` wires a sandbox to it with a veth pair."""

    owner: Namespaces
    hub: str
    bridge: str = "br0"

    def attach(self, netns: str, cidr: str) -> str:
        """Give `netns` an interface with address `cidr` on this LAN; returns its name inside `netns`."""
        index = self.owner.interfaces.get(netns, 0)
        self.owner.interfaces[netns] = index + 1
        inner = f"eth{index}"
        outer = f"v{secrets.token_hex(4)}"
        self.owner.links.append((self.hub, outer))
        veth = ["type", "veth", "peer", "name", inner, "netns", netns]
        run(["ip", "-n", self.hub, "link", "add", outer, *veth], check=True)
        run(["ip", "-n", self.hub, "link", "set", outer, "master", self.bridge, "up"], check=True)
        run(["ip", "-n", netns, "addr", "add", cidr, "dev", inner], check=True)
        run(["ip", "-n", netns, "link", "set", inner, "up"], check=True)
        return inner


class Namespaces:
    """Makes `rt3-XXXXXXXXXX` namespaces (and LANs, and processes inside them) and removes them all."""

    prefix = PREFIX
    """Every name this class makes or adopts starts with it (a suite may set its own)."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.links: list[tuple[str, str]] = []
        self.interfaces: dict[str, int] = {}
        self.procs: list[subprocess.Popen[str]] = []

    @classmethod
    def unique_name(cls) -> str:
        return f"{cls.prefix}{secrets.token_hex(5)}"

    def adopt(self, name: str) -> str:
        """Delete namespace `name` (made by someone else, e.g. a README command) at cleanup."""
        assert name.startswith(self.prefix), name
        self.names.append(name)
        return name

    def add(self) -> str:
        """A new, empty namespace (its `lo` is left down: the daemon must bring it up)."""
        name = self.adopt(self.unique_name())
        run(["ip", "netns", "add", name], check=True)
        return name

    def lan(self) -> Lan:
        hub = self.add()
        run(["ip", "-n", hub, "link", "add", "br0", "type", "bridge"], check=True)
        run(["ip", "-n", hub, "link", "set", "br0", "up"], check=True)
        return Lan(self, hub)

    def spawn(self, netns: str | None, cmd: Sequence[str | os.PathLike[str]]) -> subprocess.Popen[str]:
        """Start a long-running process inside `netns` (None: `cmd` as it is); ended by pid at cleanup."""
        proc = subprocess.Popen(
            in_netns(netns, *cmd) if netns else [str(c) for c in cmd],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        self.procs.append(proc)
        return proc

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(3)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
        for hub, link in reversed(self.links):
            if netns_exists(hub):
                run(["ip", "-n", hub, "link", "del", link])
        for name in reversed(self.names):
            if netns_exists(name):
                run(["ip", "netns", "del", name])
            shutil.rmtree(NETNS_ETC / name, ignore_errors=True)
        self.procs.clear()
        self.links.clear()
        self.names.clear()


# ---- DNS clients inside a sandbox -----------------------------------------------------------------------


def in_netns(netns: str, *cmd: str | os.PathLike[str]) -> list[str]:
    """`cmd` inside `netns`: a name (`ip netns exec`, with its /etc/netns files) or a path (nsenter)."""
    if "/" in netns:
        return ["nsenter", f"--net={netns}", *map(str, cmd)]
    return ["ip", "netns", "exec", netns, *map(str, cmd)]


class Record(NamedTuple):
    name: str
    ttl: int
    rdtype: str
    data: str


@dataclass
class DigResult:
    """What dig printed: `status` is the rcode, or `NO-REPLY` when no answer came back at all."""

    status: str
    flags: frozenset[str]
    answer: list[Record]
    authority: list[Record]
    output: str

    @property
    def addresses(self) -> list[str]:
        return [r.data for r in self.answer if r.rdtype in ("A", "AAAA")]

    @property
    def ptr_names(self) -> list[str]:
        return [r.data for r in self.answer if r.rdtype == "PTR"]

    @property
    def authoritative(self) -> bool:
        return "aa" in self.flags

    def __str__(self) -> str:
        return self.output


_STATUS = re.compile(r"->>HEADER<<- opcode: \w+, status: ([A-Z]+),")
_FLAGS = re.compile(r"^;; flags: ([a-z ]*);", re.M)


def parse_dig(output: str) -> DigResult:
    status_match = _STATUS.search(output)
    flags_match = _FLAGS.search(output)
    sections: dict[str, list[Record]] = {"ANSWER": [], "AUTHORITY": []}
    current: str | None = None
    for line in output.splitlines():
        if line.startswith(";; ") and line.endswith(" SECTION:"):
            current = line[3:].split()[0]
            continue
        if not line.strip() or line.startswith(";"):
            continue
        if current in sections:
            name, ttl, _cls, rdtype, data = line.split(None, 4)
            sections[current].append(Record(name, int(ttl), rdtype, data))
    return DigResult(
        status=status_match.group(1) if status_match else "NO-REPLY",
        flags=frozenset(flags_match.group(1).split()) if flags_match else frozenset(),
        answer=sections["ANSWER"],
        authority=sections["AUTHORITY"],
        output=output,
    )


def dig(netns: str, *args: str, tcp: bool = False, timeout: int = 2) -> DigResult:
    """`dig @127.0.0.11 ARGS...` inside `netns` (one try), parsed."""
    options = [f"+time={timeout}", "+tries=1", "+nocmd", "+noall", "+comments", "+answer", "+authority"]
    if tcp:
        options.append("+tcp")
    result = run(in_netns(netns, "dig", *options, f"@{LISTEN}", *args), timeout=timeout + 10)
    return parse_dig(result.stdout + result.stderr)


def getent_ahosts(netns: str, name: str) -> tuple[int, list[str]]:
    """glibc `getent ahosts NAME` inside `netns` (through its rewritten resolv.conf): status, addresses."""
    result = run(in_netns(netns, "getent", "ahosts", name), timeout=30)
    addresses: list[str] = []
    for line in result.stdout.splitlines():
        address = line.split()[0]
        if address not in addresses:
            addresses.append(address)
    return result.returncode, addresses


@dataclass
class NslookupResult:
    rc: int
    addresses: list[str]
    names: list[str]
    error: str | None
    output: str


_CANT_FIND = re.compile(r"\*\* server can't find (\S+): (\S+)")


def nslookup(netns: str, name: str) -> NslookupResult:
    """`busybox nslookup NAME 127.0.0.11` inside `netns`: addresses (A/AAAA), names (PTR), error."""
    result = run(in_netns(netns, "busybox", "nslookup", name, LISTEN), timeout=30)
    lines = result.stdout.splitlines()
    if lines and lines[0].startswith("Server:"):
        lines = lines[2:]  # "Server: 127.0.0.11" and "Address: 127.0.0.11:53"
    addresses = [m.group(1) for line in lines if (m := re.match(r"Address:\s+(\S+)$", line))]
    names = [m.group(1) for line in lines if (m := re.search(r"\sname = (\S+)$", line))]
    error = _CANT_FIND.search(result.stdout + result.stderr)
    return NslookupResult(
        result.returncode, addresses, names, error.group(2) if error else None, result.stdout + result.stderr
    )


def netns_python(netns: str, script: str, *args: str, timeout: float = 60.0) -> Any:
    """Run `script` with the project's Python inside `netns`; it prints one JSON document, returned."""
    result = run(in_netns(netns, VENV_PYTHON, "-c", script, *args), timeout=timeout)
    assert result.returncode == 0, f"script in {netns} failed ({result.returncode}):\n{result.stderr}"
    return json.loads(result.stdout)


# ---- looking at the daemon's sockets ----------------------------------------------------------------------

_SYS_PIDFD_OPEN = 434
_SYS_PIDFD_GETFD = 438
_SIOCGSKNS = 0x894C


def sockets_by_netns(pid: int) -> Counter[int]:
    """How many sockets process `pid` holds in each network namespace (by namespace inode).

    Each socket is duplicated with pidfd_getfd(2) and asked for its namespace with SIOCGSKNS; the
    copies are closed at once, so they do not keep any namespace alive.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = libc.syscall(_SYS_PIDFD_OPEN, pid, 0)
    if pidfd < 0:
        pytest.skip(f"pidfd_open failed: {os.strerror(ctypes.get_errno())}")
    counts: Counter[int] = Counter()
    try:
        for entry in os.listdir(f"/proc/{pid}/fd"):
            try:
                if not os.readlink(f"/proc/{pid}/fd/{entry}").startswith("socket:"):
                    continue
            except OSError:
                continue
            copy = libc.syscall(_SYS_PIDFD_GETFD, pidfd, int(entry), 0)
            if copy < 0:
                error = ctypes.get_errno()
                if error == 9:  # EBADF: closed meanwhile
                    continue
                pytest.skip(f"pidfd_getfd failed: {os.strerror(error)}")
            try:
                nsfd = fcntl.ioctl(copy, _SIOCGSKNS)
                try:
                    counts[os.fstat(nsfd).st_ino] += 1
                finally:
                    os.close(nsfd)
            finally:
                os.close(copy)
    finally:
        os.close(pidfd)
    return counts
