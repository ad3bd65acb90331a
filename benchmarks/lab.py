"""The benchmark's laboratory: a work directory, network namespaces and processes, all removed at the end.

Rules: every namespace is named `<prefix><random>` (prefix `rt6-` unless told otherwise) and deleted by name;
every process is started here (in its own session) and ended by its id, never by name; `/etc/netns/NAME`
files that a server or the daemon wrote are removed with their namespace. `Lab.close` runs on success,
failure and SIGTERM alike. Servers and clients are pinned with taskset: servers to `SERVER_CPU`, load
generators to `CLIENT_CPU` (the machine has two cores).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import TypeVar

SERVER_CPU = 0
CLIENT_CPU = 1
CLK_TCK = os.sysconf("SC_CLK_TCK")
NETNS_ETC = Path("/etc/netns")
T = TypeVar("T")


class LabError(RuntimeError):
    """A server or tool did not start or answer; the message says which and carries its log."""


def run(cmd: Sequence[str | os.PathLike[str]], check: bool = True, timeout: float = 120.0) -> str:
    """Run a command to completion; its stdout, or LabError with its stderr when `check` and it fails."""
    args = [str(c) for c in cmd]
    result = subprocess.run(
        args, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False
    )
    if check and result.returncode != 0:
        raise LabError(f"{' '.join(args)} exited {result.returncode}: {result.stderr.strip()}")
    return result.stdout


def in_netns(netns: str | None, cmd: Sequence[str | os.PathLike[str]], cpu: int | None = None) -> list[str]:
    """`cmd` inside `netns` (None: where we are), pinned to `cpu` when given (both exec, keeping the pid)."""
    out = [str(c) for c in cmd]
    if cpu is not None:
        out = ["taskset", "-c", str(cpu), *out]
    return ["ip", "netns", "exec", netns, *out] if netns else out


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of process `pid`, all its threads and its reaped children."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / CLK_TCK


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise LabError(f"no VmRSS for pid {pid}")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie that no one reaped yet counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_for(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise LabError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


class Lab:
    """Owns what one benchmark run creates; use as a context manager."""

    def __init__(self, workdir: Path, prefix: str = "rt6-") -> None:
        self.workdir = workdir
        self.prefix = prefix
        self.namespaces: list[str] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        self.pids: list[int] = []
        self._previous_sigterm: signal._HANDLER = None

    def __enter__(self) -> Lab:
        self._previous_sigterm = signal.signal(signal.SIGTERM, self._on_sigterm)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
        signal.signal(signal.SIGTERM, self._previous_sigterm)

    @staticmethod
    def _on_sigterm(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt("SIGTERM")

    # ---- namespaces ----

    def add_namespaces(self, count: int, lo_up: bool = True) -> list[str]:
        """`count` new namespaces (one `ip -batch` call: a thousand take about 3 s); `lo_up=False` leaves
        their loopback down, as a runtime hands a fresh sandbox to the daemon."""
        names = [f"{self.prefix}{secrets.token_hex(5)}" for _ in range(count)]
        self.namespaces.extend(names)
        self._batch([f"netns add {n}" for n in names])
        if lo_up:
            for name in names:
                run(["ip", "-n", name, "link", "set", "lo", "up"])
        return names

    def delete_namespaces(self, names: Sequence[str]) -> None:
        gone = set(names)
        for name in names:
            shutil.rmtree(NETNS_ETC / name, ignore_errors=True)
        existing = [n for n in names if os.path.exists(f"/run/netns/{n}")]
        if existing:
            self._batch([f"netns del {n}" for n in existing], check=False)
        self.namespaces = [n for n in self.namespaces if n not in gone]

    def _batch(self, lines: list[str], check: bool = True) -> None:
        for start in range(0, len(lines), 500):
            chunk = "\n".join(lines[start : start + 500]) + "\n"
            result = subprocess.run(
                ["ip", "-force", "-batch", "-"], input=chunk, capture_output=True, text=True, check=False
            )
            if check and result.returncode != 0:
                raise LabError(f"ip -batch failed: {result.stderr.strip()}")

    def etc_file(self, netns: str, name: str, text: str) -> Path:
        """A file that `ip netns exec NETNS` binds over /etc/NAME (e.g. resolv.conf) for that namespace."""
        path = NETNS_ETC / netns / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    # ---- processes ----

    def spawn(
        self,
        cmd: Sequence[str | os.PathLike[str]],
        log_name: str,
        netns: str | None = None,
        cpu: int | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start a long-running process (its own session; output to `log_name` in the work directory)."""
        with open(self.workdir / log_name, "ab") as log:
            proc = subprocess.Popen(
                in_netns(netns, cmd, cpu),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=env,
            )
        self.procs.append(proc)
        return proc

    def adopt_pid(self, pid: int) -> None:
        """A process that detached itself from one we started (a daemon that forks): ended at close."""
        self.pids.append(pid)

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        with contextlib.suppress(ValueError):
            self.procs.remove(proc)

    def stop_pid(self, pid: int, timeout: float = 5.0) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while alive(pid) and time.monotonic() < deadline:
                time.sleep(0.02)
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ValueError):
            self.pids.remove(pid)

    @contextlib.contextmanager
    def scope(self) -> Iterator[None]:
        """Whatever is started or made inside the block is ended and removed when it leaves."""
        procs, pids, names = list(self.procs), list(self.pids), list(self.namespaces)
        try:
            yield
        finally:
            for proc in [p for p in reversed(self.procs) if p not in procs]:
                self.stop(proc)
            for pid in [p for p in self.pids if p not in pids]:
                self.stop_pid(pid)
            self.delete_namespaces([n for n in self.namespaces if n not in names])

    def log(self, name: str) -> str:
        path = self.workdir / name
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def close(self) -> None:
        for proc in reversed(list(self.procs)):
            self.stop(proc)
        for pid in list(self.pids):
            self.stop_pid(pid)
        self.delete_namespaces(list(self.namespaces))
