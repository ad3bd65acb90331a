"""Scale: N sandboxes joined one after another to one daemon, and what each join costs.

The namespaces are made beforehand (not counted; their loopback left down, as a runtime hands them
over), and so is one UDP socket inside each, from which the harness asks the new sandbox's own name. Per
sandbox: the join request is sent through the control API, then the query is sent every 2 ms until an
answer with a record comes back. Join-to-first-answer is the time from sending the join to that answer;
a join the daemon refuses is counted (and its message kept), not timed.
The daemon's RSS, open descriptors and CPU time are read before the first and after the last join
(CPU per join, which the machine's other load does not inflate as much as wall time). The harness
runs on the client core, the daemon on the server core.
"""

from __future__ import annotations

import os
import resource
import select
import socket
import statistics
import struct
import time
from dataclasses import asdict, dataclass, field

from benchmarks.lab import CLIENT_CPU, Lab, cpu_seconds, open_fds, rss_kib
from benchmarks.servers import LISTEN, Daemon
from resolver.control.client import ControlError
from resolver.nsinject.netns import NamespaceWorker

ZONE = "scale.test"
GIVE_UP = 2.0
RESEND = 0.002


@dataclass
class ScaleRun:
    sandboxes: int
    join_ms: list[float] = field(default_factory=list)
    first_answer_ms: list[float] = field(default_factory=list)
    unanswered: int = 0
    failed_joins: list[str] = field(default_factory=list)
    total_s: float = 0.0
    rss_kib_per_sandbox: float = 0.0
    fds_per_sandbox: float = 0.0
    cpu_ms_per_join: float = 0.0

    def summary(self) -> dict[str, float | int]:
        answered = sorted(self.first_answer_ms) or [float("nan")]
        return {
            "sandboxes": self.sandboxes,
            "first_answer_median_ms": statistics.median(answered),
            "first_answer_p99_ms": answered[min(len(answered) - 1, int(len(answered) * 0.99))],
            "join_median_ms": statistics.median(self.join_ms or [float("nan")]),
            "total_s": self.total_s,
            "rss_kib_per_sandbox": self.rss_kib_per_sandbox,
            "fds_per_sandbox": self.fds_per_sandbox,
            "cpu_ms_per_join": self.cpu_ms_per_join,
            "unanswered": self.unanswered,
            "failed_joins": len(self.failed_joins),
        }

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def query(ident: int, name: str) -> bytes:
    header = struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0)
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split("."))
    return header + labels + b"\x00" + struct.pack("!HH", 1, 1)


def answered(reply: bytes, ident: int) -> bool:
    """The reply to our query (same id), NOERROR, with at least one answer record."""
    if len(reply) < 12:
        return False
    rid, flags, _qd, ancount = struct.unpack("!HHHH", reply[:8])
    return rid == ident and flags & 0x8000 != 0 and flags & 0x000F == 0 and ancount > 0


def first_answer(sock: socket.socket, wire: bytes, ident: int, deadline: float) -> bool:
    while time.perf_counter() < deadline:
        sock.sendto(wire, (LISTEN, 53))
        resend = time.perf_counter() + RESEND
        while (left := resend - time.perf_counter()) > 0:
            if not select.select([sock], [], [], left)[0]:
                break
            try:
                if answered(sock.recv(4096), ident):
                    return True
            except OSError:
                break
    return False


def udp_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    return sock


def raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(needed, hard), hard))


def one_run(lab: Lab, count: int, tag: str) -> ScaleRun:
    result = ScaleRun(count)
    with lab.scope():
        names = lab.add_namespaces(count, lo_up=False)
        raise_fd_limit(count + 256)
        with NamespaceWorker() as worker:
            sockets = [worker.run_in(ns, udp_socket) for ns in names]
        try:
            daemon = Daemon(lab, f"scale-{tag}")
            daemon.network("scale", domain=ZONE)
            time.sleep(0.5)
            rss, fds, cpu = rss_kib(daemon.pid), open_fds(daemon.pid), cpu_seconds(daemon.pid)
            start = time.perf_counter()
            for i, (ns, sock) in enumerate(zip(names, sockets, strict=True)):
                address = f"10.{100 + i // 62500}.{i // 250 % 250}.{i % 250 + 1}"
                body = {
                    "network": "scale",
                    "netns": ns,
                    "endpoint": f"s{i}",
                    "name": f"s{i}",
                    "ipv4": [address],
                }
                wire = query(i & 0xFFFF, f"s{i}.{ZONE}")
                sent = time.perf_counter()
                try:
                    daemon.api("POST", "/v1/endpoints", body)
                except ControlError as exc:
                    result.failed_joins.append(str(exc))
                    continue
                result.join_ms.append((time.perf_counter() - sent) * 1000)
                if first_answer(sock, wire, i & 0xFFFF, sent + GIVE_UP):
                    result.first_answer_ms.append((time.perf_counter() - sent) * 1000)
                else:
                    result.unanswered += 1
            result.total_s = time.perf_counter() - start
            result.rss_kib_per_sandbox = (rss_kib(daemon.pid) - rss) / count
            result.fds_per_sandbox = (open_fds(daemon.pid) - fds) / count
            result.cpu_ms_per_join = (cpu_seconds(daemon.pid) - cpu) * 1000 / count
        finally:
            for sock in sockets:
                sock.close()
    return result


def scale(lab: Lab, count: int, runs: int) -> list[ScaleRun]:
    """`runs` runs, each with a fresh daemon and fresh namespaces; the harness pinned to the client core."""
    previous = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {CLIENT_CPU})
    try:
        return [one_run(lab, count, str(run)) for run in range(runs)]
    finally:
        os.sched_setaffinity(0, previous)
