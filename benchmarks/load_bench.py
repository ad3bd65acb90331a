"""Load benchmark: dnsperf for a fixed duration against one sandbox and against many sandboxes at once,
with a mix of local names and names forwarded to a real dnsmasq upstream, at a rate below the measured
capacity. It passes when no query is lost and the daemon's RSS after the run is within 10% of its RSS
before it (both measured after a warm-up run).

The rig (`Rig`): N namespaces `PREFIX<hex>`, each joined to network `load` (domain load.test) as `hI`;
a dnsmasq on a random host loopback address answering `nI.up.test` from a hosts file (the daemon's only
upstream, reached from the host namespace); the daemon with its forwarded-answer cache off (`--cache`
turns it on), so every forwarded query really goes upstream. Query mix: 70% local A/AAAA (5% of them
unknown names under load.test: NXDOMAIN), 30% forwarded A, one query file per sandbox (same mix, its
own order). One dnsperf runs inside each target sandbox (dnsperf in a namespace only reaches that
namespace's 127.0.0.11).

Run as root:  .venv/bin/python -m benchmarks.load_bench [--sandboxes 100] [--seconds 30] [--share 0.5]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.lab import Lab, cpu_seconds, in_netns, rss_kib
from benchmarks.servers import dnsmasq, resolver_command
from resolver.control.client import ControlError, call

LOCAL_SHARE = 0.7
UNKNOWN_SHARE = 0.05
FORWARDED_NAMES = 1000
RSS_TOLERANCE = 0.10


@dataclass
class Perf:
    """dnsperf's counts, summed over every process of one run."""

    sent: int = 0
    completed: int = 0
    lost: int = 0
    seconds: float = 0.0
    rcodes: Counter[str] = field(default_factory=Counter)

    @property
    def qps(self) -> float:
        return self.completed / self.seconds if self.seconds else 0.0

    def add(self, other: Perf) -> None:
        self.sent += other.sent
        self.completed += other.completed
        self.lost += other.lost
        self.seconds = max(self.seconds, other.seconds)
        self.rcodes.update(other.rcodes)


def parse_dnsperf(out: str) -> Perf:
    def number(pattern: str) -> float:
        found = re.search(pattern, out)
        if not found:
            raise ValueError(f"dnsperf output without {pattern!r}:\n{out}")
        return float(found.group(1))

    codes = re.search(r"Response codes:\s+(.*)", out)
    rcodes: Counter[str] = Counter()
    for code, count in re.findall(r"([A-Z]+) (\d+) \(", codes.group(1) if codes else ""):
        rcodes[code] += int(count)
    return Perf(
        sent=int(number(r"Queries sent:\s+(\d+)")),
        completed=int(number(r"Queries completed:\s+(\d+)")),
        lost=int(number(r"Queries lost:\s+(\d+)")),
        seconds=number(r"Run time \(s\):\s+([\d.]+)"),
        rcodes=rcodes,
    )


@dataclass
class Rig:
    pid: int
    sock: str
    namespaces: list[str]
    queries: list[Path]  # one file per sandbox (same mix, its own order)

    def load(self, targets: list[str], rate_each: float | None, seconds: float, timeout: float = 5.0) -> Perf:
        """One dnsperf per target sandbox, all at once, for `seconds`, each limited to `rate_each`
        queries per second (None: as fast as it gets answers); counts summed."""
        procs = []
        for netns in targets:
            queries = self.queries[self.namespaces.index(netns)]
            cmd = in_netns(netns, ["dnsperf", "-s", "127.0.0.11", "-d", str(queries)])
            cmd += ["-l", str(seconds), "-t", str(timeout)]
            if rate_each is None:  # unthrottled: several clients for one sandbox, few queries each for many
                cmd += ["-c", "8", "-q", "200"] if len(targets) == 1 else ["-c", "1", "-q", "20"]
            else:
                cmd += ["-Q", str(max(1, round(rate_each))), "-c", "1", "-q", "200"]
            procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        total = Perf()
        for proc in procs:
            out, _ = proc.communicate(timeout=seconds + timeout + 60)
            if proc.returncode != 0:
                raise RuntimeError(f"dnsperf exited {proc.returncode}:\n{out}")
            total.add(parse_dnsperf(out))
        return total

    def capacity(self, targets: list[str], seconds: float) -> float:
        """Queries per second answered when every target sandbox runs dnsperf unthrottled at once."""
        return self.load(targets, None, seconds).qps


def _query_file(path: Path, sandboxes: int, seed: int) -> Path:
    rng = random.Random(seed)
    lines = []
    for _ in range(10000):
        roll = rng.random()
        if roll < LOCAL_SHARE * (1 - UNKNOWN_SHARE):
            lines.append(f"h{rng.randrange(sandboxes)}.load.test {rng.choice(('A', 'AAAA'))}")
        elif roll < LOCAL_SHARE:
            lines.append(f"missing{rng.randrange(100)}.load.test A")
        else:
            lines.append(f"n{rng.randrange(FORWARDED_NAMES)}.up.test A")
    path.write_text("\n".join(lines) + "\n")
    return path


def _wait_status(sock: str) -> None:
    for _ in range(300):
        with contextlib.suppress(ControlError):
            call("GET", "/v1/status", None, sock, timeout=2)
            return
        time.sleep(0.1)
    raise RuntimeError("the daemon did not start")


@contextlib.contextmanager
def rig(sandboxes: int, prefix: str = "load-", cache: bool = False) -> Iterator[Rig]:
    """Everything the load runs need, torn down afterwards (daemon, dnsmasq, namespaces, files)."""
    upstream = f"127.{secrets.choice(range(100, 200))}.{secrets.randbelow(256)}.{secrets.randbelow(200) + 20}"
    with tempfile.TemporaryDirectory(prefix="load-bench-") as tmp, Lab(Path(tmp), prefix) as lab:
        workdir = lab.workdir
        names = lab.add_namespaces(sandboxes, lo_up=False)
        hosts = workdir / "hosts"
        hosts.write_text(
            "".join(f"10.200.{i // 250}.{i % 250 + 1} n{i}.up.test\n" for i in range(FORWARDED_NAMES))
        )
        queries = [_query_file(workdir / f"queries{i}.txt", sandboxes, i) for i in range(sandboxes)]
        (workdir / "host-resolv.conf").write_text(f"nameserver {upstream}\n")
        sock = str(workdir / "s.sock")
        cmd = [*resolver_command(), "serve", "--socket", sock, "--state-dir", str(workdir / "state")]
        cmd += ["--host-resolv-conf", str(workdir / "host-resolv.conf"), "--log-level", "warning"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("RESOLVER_")}
        env["RESOLVER_CACHE_ENABLED"] = "true" if cache else "false"
        extra = [f"--addn-hosts={hosts}", "--local=/up.test/", "--local-ttl=300", "--cache-size=10000"]
        dnsmasq(lab, "", upstream, extra, "upstream")  # "": in the host namespace, the daemon's upstream
        daemon = lab.spawn(cmd, "daemon.log", env=env)
        _wait_status(sock)
        call("POST", "/v1/networks", {"name": "load", "domain": "load.test"}, sock)
        for i, netns in enumerate(names):
            body = {"network": "load", "netns": netns, "endpoint": f"ep{i}", "name": f"h{i}"}
            body |= {
                "ipv4": [f"10.{100 + i // 62500}.{i // 250 % 250}.{i % 250 + 1}"],
                "ipv6": [f"fd64::{i + 1:x}"],
            }
            call("POST", "/v1/endpoints", body, sock)
        yield Rig(daemon.pid, sock, names, queries)


@dataclass
class Row:
    label: str
    capacity: float
    rate: float
    perf: Perf
    rss_before: int
    rss_after: int
    cpu_us: float

    @property
    def rss_change(self) -> float:
        return (self.rss_after - self.rss_before) / self.rss_before

    @property
    def passed(self) -> bool:
        return self.perf.lost == 0 and abs(self.rss_change) <= RSS_TOLERANCE


def measure(
    r: Rig, label: str, targets: list[str], total_rate: float, seconds: float, capacity: float = 0.0
) -> Row:
    """A warm-up run of the same shape, then the measured run: lost queries, RSS, CPU per query."""
    r.load(targets, total_rate / len(targets), min(seconds, 3.0))
    before, cpu = rss_kib(r.pid), cpu_seconds(r.pid)
    perf = r.load(targets, total_rate / len(targets), seconds)
    used = cpu_seconds(r.pid) - cpu
    cpu_us = used / max(perf.completed, 1) * 1e6
    return Row(label, capacity, total_rate, perf, before, rss_kib(r.pid), cpu_us)


def report(rows: list[Row]) -> None:
    print(
        f"{'scenario':<24}{'capacity':>9}{'rate':>7}{'sent':>8}{'lost':>6}{'q/s':>7}{'CPU us/q':>9}"
        f"{'RSS KiB before':>15}{'after':>8}{'change':>8}  rcodes"
    )
    for row in rows:
        codes = " ".join(f"{k}={v}" for k, v in sorted(row.perf.rcodes.items()))
        print(
            f"{row.label:<24}{row.capacity:>9,.0f}{row.rate:>7,.0f}{row.perf.sent:>8}{row.perf.lost:>6}"
            f"{row.perf.qps:>7,.0f}{row.cpu_us:>9.1f}{row.rss_before:>15}{row.rss_after:>8}"
            f"{row.rss_change:>+8.1%}  {codes}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sandboxes", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--share", type=float, default=0.5, help="rate as a share of the measured capacity")
    parser.add_argument("--prefix", default="load-", help="name prefix of the namespaces made")
    parser.add_argument("--cache", action="store_true", help="keep the forwarded-answer cache on")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("the benchmark needs root (network namespaces)")
    for tool in ("dnsperf", "dnsmasq"):
        if shutil.which(tool) is None:
            sys.exit(f"missing {tool}: run ./scripts/setup as root")
    rows = []
    with rig(args.sandboxes, args.prefix, args.cache) as r:
        r.load(r.namespaces, 5, 2)  # first contact: upstream sockets, tables
        for label, targets in (
            ("1 sandbox", r.namespaces[:1]),
            (f"{args.sandboxes} sandboxes", r.namespaces),
        ):
            capacity = r.capacity(targets, min(args.seconds, 10.0))
            rows.append(measure(r, label, targets, capacity * args.share, args.seconds, capacity))
    report(rows)
    print(
        f"capacity: queries/s answered with every dnsperf unthrottled; rate: {args.share:.0%} of it;"
        f" forwarded-answer cache {'on' if args.cache else 'off'}"
    )
    sys.exit(0 if all(row.passed for row in rows) else 1)


if __name__ == "__main__":
    main()
