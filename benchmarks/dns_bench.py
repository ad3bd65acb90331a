"""Side-by-side DNS benchmark with dnsperf: this daemon against dnsmasq (and aardvark-dns when
installed) in one run, reported as ratios, plus server CPU time per query.

Everything runs in a network namespace the benchmark creates (and deletes): our daemon answers on
127.0.0.11 there, dnsmasq on 127.0.0.12; the servers are pinned to CPU 0 and dnsperf to CPU 1.

  local    local answers: N registered names (A/AAAA, 10% unknown names under the network domain),
           dnsmasq serving the same names from a hosts file.
  forward  forwarded queries to one upstream (a dnsmasq on 127.0.0.61 inside the namespace, answering
           from a hosts file with a 300 s TTL): ours with the cache (hits) and without it (every query
           goes upstream), against a dnsmasq forwarder with and without its cache.

Run as root:  .venv/bin/python -m benchmarks.dns_bench [local|forward|all] [--seconds 10] [--names 1000]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from resolver.control.client import call

ROOT = Path(__file__).resolve().parent.parent
RESOLVER = str(ROOT / ".venv" / "bin" / "resolver")
CLK = os.sysconf("SC_CLK_TCK")


def run(*cmd: str, check: bool = True, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=check, capture_output=True, text=True, **kw)  # type: ignore[call-overload]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


@contextlib.contextmanager
def namespace() -> Iterator[str]:
    name = f"bench-{secrets.token_hex(3)}"
    run("ip", "netns", "add", name)
    try:
        run("ip", "-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        run("ip", "netns", "del", name, check=False)
        shutil.rmtree(f"/etc/netns/{name}", ignore_errors=True)


@contextlib.contextmanager
def process(
    cmd: list[str], log: Path, netns: str | None = None, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    full = ["ip", "netns", "exec", netns, *cmd] if netns else cmd
    with open(log, "wb") as out:
        proc = subprocess.Popen(full, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def dnsmasq(
    netns: str, address: str, workdir: Path, extra: list[str], tag: str
) -> contextlib.AbstractContextManager:
    pidfile = workdir / f"dnsmasq-{tag}.pid"
    cmd = [
        "dnsmasq",
        "--keep-in-foreground",
        "--no-resolv",
        "--no-hosts",
        "--bind-interfaces",
        f"--listen-address={address}",
        "--port=53",
        f"--pid-file={pidfile}",
        "--user=root",
        *extra,
    ]
    return process(cmd, workdir / f"dnsmasq-{tag}.log", netns)


def server_pid(proc: subprocess.Popen[bytes], name: str) -> int:
    """The pid of the real server under `ip netns exec` (it execs, so usually the same pid)."""
    for _ in range(50):
        out = run("pgrep", "-s", str(proc.pid), "-f", name, check=False).stdout.split()
        if out:
            return int(out[0])
        time.sleep(0.05)
    raise RuntimeError(f"{name} did not start")


def wait_answer(netns: str, server: str, name: str) -> None:
    for _ in range(100):
        out = run(
            "ip",
            "netns",
            "exec",
            netns,
            "dig",
            "+short",
            "+time=1",
            "+tries=1",
            f"@{server}",
            name,
            check=False,
        )
        if out.stdout.strip():
            return
        time.sleep(0.1)
    raise RuntimeError(f"{server} does not answer {name}")


@dataclass
class Result:
    qps: float
    latency_ms: float
    cpu_us: float
    servfail_share: float


def dnsperf(netns: str, server: str, queries: Path, seconds: float, pid: int) -> Result:
    """Queries per second, average latency, server CPU per query and the share of SERVFAIL replies
    (a server that sheds load with SERVFAIL looks fast; this column shows it)."""
    run("taskset", "-pc", "0", str(pid), check=False)
    before = cpu_seconds(pid)
    command = [
        "ip",
        "netns",
        "exec",
        netns,
        "taskset",
        "-c",
        "1",
        "dnsperf",
        "-s",
        server,
        "-d",
        str(queries),
        "-c",
        "16",
        "-q",
        "100",
        "-l",
        str(seconds),
        "-t",
        "2",
    ]
    out = run(*command).stdout
    used = cpu_seconds(pid) - before

    def number(pattern: str) -> float:
        found = re.search(pattern, out)
        return float(found.group(1)) if found else 0.0

    completed = number(r"Queries completed:\s+(\d+)")
    return Result(
        qps=number(r"Queries per second:\s+([\d.]+)"),
        latency_ms=number(r"Average Latency \(s\):\s+([\d.]+)") * 1000,
        cpu_us=used / max(completed, 1) * 1e6,
        servfail_share=number(r"SERVFAIL\s+\d+\s+\(([\d.]+)%\)"),
    )


def report(rows: list[tuple[str, Result]], baseline: str) -> None:
    base = dict(rows)[baseline].qps
    print(
        f"{'server':<40}{'queries/s':>11}{'avg ms':>8}{'CPU us/q':>10}{'SERVFAIL':>10}  ratio to {baseline}"
    )
    for label, r in rows:
        print(
            f"{label:<40}{r.qps:>11,.0f}{r.latency_ms:>8.2f}{r.cpu_us:>10.1f}{r.servfail_share:>9.1f}%"
            f"  {r.qps / base:.2f}x"
        )


@dataclass
class RunningDaemon:
    pid: int
    sock: str


@contextlib.contextmanager
def start_daemon(workdir: Path, env: dict[str, str]) -> Iterator[RunningDaemon]:
    """Our daemon with a fresh state directory and no host upstreams."""
    run_dir = workdir / f"daemon-{secrets.token_hex(3)}"
    run_dir.mkdir()
    (run_dir / "host-resolv.conf").write_text("")
    sock = str(run_dir / "s.sock")
    cmd = [
        RESOLVER,
        "serve",
        "--socket",
        sock,
        "--state-dir",
        str(run_dir / "state"),
        "--host-resolv-conf",
        str(run_dir / "host-resolv.conf"),
        "--log-level",
        "warning",
    ]
    with process(cmd, run_dir / "daemon.log", env={**os.environ, **env}) as proc:
        for _ in range(100):
            if run(RESOLVER, "status", "--socket", sock, check=False).returncode == 0:
                break
            time.sleep(0.1)
        yield RunningDaemon(proc.pid, sock)


def cli(sock: str, *args: str) -> None:
    run(RESOLVER, *args, "--socket", sock)


def names_and_addresses(count: int) -> list[tuple[str, str, str]]:
    return [
        (f"host{i}", f"10.{64 + i // 62500}.{i // 250 % 250}.{i % 250 + 1}", f"fd00::{i + 1:x}")
        for i in range(count)
    ]


def query_file(workdir: Path, names: list[str], unknown: list[str]) -> Path:
    rng = random.Random(7)
    lines = [f"{rng.choice(names)} {rng.choice(('A', 'AAAA'))}" for _ in range(18000)]
    lines += [f"{rng.choice(unknown)} A" for _ in range(2000)]
    rng.shuffle(lines)
    path = workdir / "queries.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def bench_local(seconds: float, count: int) -> None:
    with tempfile.TemporaryDirectory() as tmp, namespace() as netns:
        workdir = Path(tmp)
        entries = names_and_addresses(count)
        hosts = workdir / "hosts"
        hosts.write_text("".join(f"{v4} {n}.corp.test\n{v6} {n}.corp.test\n" for n, v4, v6 in entries))
        queries = query_file(
            workdir, [f"{n}.corp.test" for n, _, _ in entries], [f"missing{i}.corp.test" for i in range(100)]
        )
        rows = []
        with start_daemon(workdir, {}) as daemon:
            sock = daemon.sock
            cli(sock, "network", "create", "bench", "--domain", "corp.test", "--internal")
            for i, (name, v4, v6) in enumerate(entries):
                body = {
                    "network": "bench",
                    "netns": netns,
                    "endpoint": f"ep{i}",
                    "name": name,
                    "ipv4": [v4],
                    "ipv6": [v6],
                }
                call("POST", "/v1/endpoints", body, sock)
            wait_answer(netns, "127.0.0.11", "host0.corp.test")
            rows.append(
                ("resolver (this project)", dnsperf(netns, "127.0.0.11", queries, seconds, daemon.pid))
            )
        extra = [f"--addn-hosts={hosts}", "--local=/corp.test/", "--cache-size=10000", "--local-ttl=5"]
        with dnsmasq(netns, "127.0.0.12", workdir, extra, "local") as proc:
            wait_answer(netns, "127.0.0.12", "host0.corp.test")
            rows.append(
                (
                    "dnsmasq 2.90 (hosts file)",
                    dnsperf(netns, "127.0.0.12", queries, seconds, server_pid(proc, "dnsmasq")),
                )
            )
        print(f"\nlocal answers: {count} names, A/AAAA + 10% NXDOMAIN, {seconds:.0f} s per server")
        report(rows, "dnsmasq 2.90 (hosts file)")


def bench_forward(seconds: float, count: int) -> None:
    with tempfile.TemporaryDirectory() as tmp, namespace() as netns:
        workdir = Path(tmp)
        entries = names_and_addresses(count)
        hosts = workdir / "hosts"
        hosts.write_text("".join(f"{v4} {n}.up.test\n{v6} {n}.up.test\n" for n, v4, v6 in entries))
        queries = query_file(
            workdir, [f"{n}.up.test" for n, _, _ in entries], [f"missing{i}.up.test" for i in range(100)]
        )
        upstream = [
            "--addn-hosts=" + str(hosts),
            "--local=/up.test/",
            "--local-ttl=300",
            "--cache-size=10000",
        ]
        rows = []
        with dnsmasq(netns, "127.0.0.61", workdir, upstream, "upstream"):
            wait_answer(netns, "127.0.0.61", "host0.up.test")
            for label, env in (
                ("resolver, cache on (hits)", {}),
                ("resolver, cache off (all upstream)", {"RESOLVER_CACHE_ENABLED": "false"}),
            ):
                with start_daemon(workdir, env) as daemon:
                    sock = daemon.sock
                    cli(sock, "network", "create", "bench")
                    cli(
                        sock,
                        "join",
                        "bench",
                        "--netns",
                        netns,
                        "--endpoint",
                        "ep0",
                        "--name",
                        "client",
                        "--ipv4",
                        "10.99.0.2",
                        "--dns",
                        "127.0.0.61",
                    )
                    wait_answer(netns, "127.0.0.11", "host0.up.test")
                    rows.append((label, dnsperf(netns, "127.0.0.11", queries, seconds, daemon.pid)))
            for label, cache in (
                ("dnsmasq 2.90 forwarder, cache on", "10000"),
                ("dnsmasq 2.90 forwarder, cache off", "0"),
            ):
                extra = ["--server=127.0.0.61", f"--cache-size={cache}", "--dns-forward-max=1000"]
                with dnsmasq(netns, "127.0.0.12", workdir, extra, f"fwd{cache}") as proc:
                    wait_answer(netns, "127.0.0.12", "host0.up.test")
                    rows.append(
                        (label, dnsperf(netns, "127.0.0.12", queries, seconds, server_pid(proc, "dnsmasq")))
                    )
        print(f"\nforwarding to one upstream (dnsmasq, TTL 300): {count} names, {seconds:.0f} s per server")
        report(rows, "dnsmasq 2.90 forwarder, cache on")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("mode", choices=("local", "forward", "all"), nargs="?", default="all")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--names", type=int, default=1000)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("the benchmark needs root (network namespaces)")
    for tool in ("dnsperf", "dnsmasq", "dig", "taskset"):
        if shutil.which(tool) is None:
            sys.exit(f"missing {tool}: run ./scripts/setup as root")
    if args.mode in ("local", "all"):
        bench_local(args.seconds, args.names)
    if args.mode in ("forward", "all"):
        bench_forward(args.seconds, args.names)


if __name__ == "__main__":
    main()
