"""Load generation with dnsperf 2.10 pinned to the client core, and what one measurement gives.

`throughput` runs dnsperf flat out (`-c 16 -q 100` by default) and charges the server process's CPU time
over the run to the completed queries. `latency` runs dnsperf at a fixed rate (5k q/s: no server is
saturated, so the figure does not depend on the client) with per-query output (`-v`) and takes the
median and 99th percentile. `spread` runs one dnsperf per target namespace at the same time against one
server process. Queries that get no answer within the timeout (2 s) are lost.
"""

from __future__ import annotations

import re
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from benchmarks.lab import CLIENT_CPU, LabError, cpu_seconds, in_netns
from benchmarks.servers import Server

TIMEOUT = 2
LATENCY_RATE = 5000


@dataclass
class Measure:
    """One run against one server: throughput, latency and cost."""

    qps: float = 0.0
    avg_ms: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    cpu_us: float = 0.0
    sent: int = 0
    completed: int = 0
    lost: int = 0
    rcodes: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


_NUMBER = {
    "sent": r"Queries sent:\s+(\d+)",
    "completed": r"Queries completed:\s+(\d+)",
    "lost": r"Queries lost:\s+(\d+)",
    "qps": r"Queries per second:\s+([\d.]+)",
    "avg": r"Average Latency \(s\):\s+([\d.]+)",
}


def parse(output: str) -> Measure:
    """The statistics block that dnsperf prints at the end; LabError when there is none."""
    found = {key: re.search(pattern, output) for key, pattern in _NUMBER.items()}
    if found["completed"] is None or found["qps"] is None:
        raise LabError(f"dnsperf printed no statistics:\n{output[-2000:]}")

    def number(key: str) -> float:
        match = found[key]
        return float(match.group(1)) if match else 0.0

    codes = re.search(r"Response codes:\s+(.*)", output)
    rcodes = {m[0]: int(m[1]) for m in re.findall(r"([A-Z]+) (\d+) \(", codes.group(1))} if codes else {}
    return Measure(
        qps=number("qps"),
        avg_ms=number("avg") * 1000,
        sent=int(number("sent")),
        completed=int(number("completed")),
        lost=int(number("lost")),
        rcodes=rcodes,
    )


def command(
    server: Server,
    queries: Path,
    seconds: float,
    netns: str | None = None,
    clients: int = 16,
    outstanding: int = 100,
    extra: tuple[str, ...] = (),
) -> list[str]:
    args = ["dnsperf", "-s", server.address, "-d", str(queries), "-c", str(clients), "-q", str(outstanding)]
    args += ["-l", f"{seconds:g}", "-t", str(TIMEOUT), *extra]
    if server.source:
        args += ["-a", server.source]
    return in_netns(netns or server.netns, args, CLIENT_CPU)


def _dnsperf(cmd: list[str], seconds: float) -> str:
    result = subprocess.run(
        cmd, capture_output=True, text=True, timeout=seconds + 60, stdin=subprocess.DEVNULL, check=False
    )
    if result.returncode != 0:
        raise LabError(f"{' '.join(cmd)} exited {result.returncode}: {result.stderr[-2000:]}")
    return result.stdout


def throughput(server: Server, queries: Path, seconds: float, tcp_per_conn: int = 0) -> Measure:
    """dnsperf flat out for `seconds`; over TCP with `tcp_per_conn` queries per connection when > 0."""
    extra: tuple[str, ...] = ()
    if tcp_per_conn:
        extra = ("-m", "tcp", "-O", f"num-queries-per-conn={tcp_per_conn}")
    before = cpu_seconds(server.pid)
    out = _dnsperf(command(server, queries, seconds, extra=extra), seconds)
    used = cpu_seconds(server.pid) - before
    result = parse(out)
    result.cpu_us = used / max(result.completed, 1) * 1e6
    return result


def warm(server: Server, queries: Path) -> None:
    """Every distinct question of `queries` asked once (at most 60 s): caches filled, code paths warm."""
    distinct = queries.with_name(queries.name + ".distinct")
    if not distinct.exists():
        distinct.write_text("".join(f"{line}\n" for line in dict.fromkeys(queries.read_text().splitlines())))
    _dnsperf(command(server, distinct, 60, clients=4, outstanding=20, extra=("-n", "1")), 60)


_VERBOSE = re.compile(r"^> [A-Z]+ \S+ \S+ ([\d.]+)$", re.M)


def latency(server: Server, queries: Path, seconds: float, rate: int = LATENCY_RATE) -> tuple[float, float]:
    """Median and 99th percentile latency (ms) of the answered queries at a fixed rate."""
    out = _dnsperf(command(server, queries, seconds, extra=("-Q", str(rate), "-v")), seconds)
    samples = [float(m) * 1000 for m in _VERBOSE.findall(out)]
    if len(samples) < 100:
        raise LabError(f"only {len(samples)} answered queries in the latency run of {server.label}")
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return cuts[49], cuts[98]


def spread(server: Server, netns: list[str], queries: Path, seconds: float, outstanding: int) -> Measure:
    """One dnsperf (one client, `outstanding` queries in flight) per namespace in `netns`, all at once;
    QPS is all completed queries over the wall time from the first start to the last exit."""
    before = cpu_seconds(server.pid)
    start = time.monotonic()
    procs = [
        subprocess.Popen(
            command(server, queries, seconds, ns, clients=1, outstanding=outstanding),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        for ns in netns
    ]
    outputs = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=seconds + 60)
            if proc.returncode != 0:
                raise LabError(f"dnsperf in a sandbox exited {proc.returncode}: {err[-1000:]}")
            outputs.append(out)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    wall = time.monotonic() - start
    used = cpu_seconds(server.pid) - before
    parts = [parse(out) for out in outputs]
    completed = sum(p.completed for p in parts)
    rcodes: dict[str, int] = {}
    for p in parts:
        for code, count in p.rcodes.items():
            rcodes[code] = rcodes.get(code, 0) + count
    return Measure(
        qps=completed / wall,
        avg_ms=sum(p.avg_ms * p.completed for p in parts) / max(completed, 1),
        cpu_us=used / max(completed, 1) * 1e6,
        sent=sum(p.sent for p in parts),
        completed=completed,
        lost=sum(p.lost for p in parts),
        rcodes=rcodes,
    )
