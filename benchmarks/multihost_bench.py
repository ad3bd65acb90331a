"""Multi-host benchmark: one etcd and two daemons, each in a "host" namespace of its own (the topology
of tests/multihost), sharing one global network.

  latency  join-to-resolvable across hosts: a join sent to host B's control API, until a sandbox on
           host A gets an address for the name (queried every millisecond from inside the sandbox);
           median and p99 over N joins, beside the floor set by etcd itself (a put until a watch on
           another connection sees it, from host A's namespace) as a ratio.
  rate     joins that one etcd and two daemons sustain: C concurrent clients per daemon join N
           endpoints in all; reported as joins acknowledged per second and as joins per second until
           both daemons hold every endpoint (converged), beside the same joins on one daemon with the
           in-memory backend (the anchor: what sharing costs).

Run as root:  .venv/bin/python -m benchmarks.multihost_bench [latency|rate|all] [--joins 200]
Wall-clock numbers are disturbed by other load on the machine: compare the ratios, run it more than once.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from resolver.control.client import call

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from integration.nstools import VENV_PYTHON, Daemon, in_netns, run  # noqa: E402
from multihost.cluster import Cluster, netns_path  # noqa: E402

NETWORK = "bench"
FLOOR_SCRIPT = """
import asyncio, json, sys, time
import aetcd

async def main(host, port, count):
    writer, reader = aetcd.Client(host=host, port=port), aetcd.Client(host=host, port=port)
    samples = []
    watch = await reader.watch_prefix(b"/bench-floor/")
    events = watch.__aiter__()
    for i in range(count):
        start = time.monotonic()
        await writer.put(f"/bench-floor/{i}".encode(), b"x")
        await events.__anext__()
        samples.append(time.monotonic() - start)
    await watch.cancel()
    await writer.close(); await reader.close()
    print(json.dumps(samples))

asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
"""


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def join_body(sandbox: str, index: int) -> dict[str, Any]:
    return {
        "network": NETWORK,
        "netns": netns_path(sandbox),
        "endpoint": f"ep-{index}",
        "name": f"n{index}",
        "ipv4": [f"10.{100 + index // 65536}.{index // 256 % 256}.{index % 256}"],
    }


def join_to(daemon: Daemon, sandbox: str, index: int) -> None:
    call("POST", "/v1/endpoints", join_body(sandbox, index), str(daemon.socket))


def prepare(cluster: Cluster) -> tuple[str, str]:
    """The global network on both hosts; a sandbox on each (A's to query from, B's to join)."""
    a, b = cluster.daemons
    a.ok("network", "create", NETWORK, "--scope", "global")
    deadline = time.monotonic() + 10
    while NETWORK not in b.ok("network", "ls"):
        assert time.monotonic() < deadline, "host B never saw the global network"
        time.sleep(0.05)
    return cluster.sandbox(), cluster.sandbox()


def etcd_floor(cluster: Cluster, count: int) -> list[float]:
    assert cluster.etcd is not None
    host, port = cluster.etcd.url.split("://")[1].split(":")
    result = run(
        in_netns(cluster.hosts[0], VENV_PYTHON, "-c", FLOOR_SCRIPT, host, port, str(count)), timeout=120
    )
    assert result.returncode == 0, result.stderr
    samples: list[float] = json.loads(result.stdout)
    return samples


def bench_latency(cluster: Cluster, joins: int) -> None:
    a, b = cluster.daemons
    sandbox_a, sandbox_b = prepare(cluster)
    join_to(a, sandbox_a, 0)
    join_to(b, sandbox_b, 1)  # attaches the sandbox once; the measured joins add endpoints to it
    prober = cluster.prober(sandbox_a)
    samples: list[float] = []
    acks: list[float] = []
    for index in range(2, joins + 2):
        prober.send(f"wait n{index}")
        time.sleep(0.002)  # the prober is polling before the join goes out
        start = time.monotonic()
        join_to(b, sandbox_b, index)
        acks.append(time.monotonic() - start)
        resolved = prober.reply()["resolved_at"]
        assert resolved is not None, f"n{index} never resolved on host A"
        samples.append(resolved - start)
    floor = etcd_floor(cluster, joins)
    ms = 1000
    print(f"join-to-resolvable across hosts, {joins} joins on host B, resolved in a sandbox on host A:")
    for label, values, note in (
        ("ours      ", samples, f"join acknowledged: median {statistics.median(acks) * ms:.2f} ms"),
        ("etcd floor", floor, "put until another connection's watch sees it"),
    ):
        median, p99 = statistics.median(values) * ms, percentile(values, 0.99) * ms
        print(f"  {label} median {median:7.2f} ms   p99 {p99:7.2f} ms   ({note})")
    after_ack = [total - ack for total, ack in zip(samples, acks, strict=True)]
    print(
        f"  after the join was acknowledged (durably saved on host B): median "
        f"{statistics.median(after_ack) * ms:.2f} ms, p99 {percentile(after_ack, 0.99) * ms:.2f} ms"
    )
    print(f"  ratio ours/floor: median {statistics.median(samples) / statistics.median(floor):.1f}x")


def memory_rate(cluster: Cluster, joins: int, clients: int, log_level: str) -> float:
    """Anchor: the same joins, same clients, on one daemon with the in-memory backend (no sharing)."""
    daemon = Daemon(cluster.workdir / "memory")
    daemon.log_level = log_level
    daemon.start()
    try:
        daemon.ok("network", "create", NETWORK)
        sandbox = cluster.sandbox()
        join_to(daemon, sandbox, 0)
        start = time.monotonic()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(lambda i: join_to(daemon, sandbox, i), range(1, joins + 1)))
        return joins / (time.monotonic() - start)
    finally:
        daemon.stop()


def bench_rate(cluster: Cluster, joins: int, clients: int, log_level: str) -> None:
    a, b = cluster.daemons
    sandbox_a, sandbox_b = prepare(cluster)
    join_to(a, sandbox_a, 0)
    join_to(b, sandbox_b, 1)
    work = [(a if i % 2 else b, sandbox_a if i % 2 else sandbox_b, i) for i in range(2, joins + 2)]
    total = joins + 2
    start = time.monotonic()
    with ThreadPoolExecutor(clients * 2) as pool:
        list(pool.map(lambda job: join_to(*job), work))
    acknowledged = time.monotonic() - start
    deadline = time.monotonic() + 20
    while not all(call("GET", "/v1/status", None, str(d.socket))["endpoints"] == total for d in (a, b)):
        if time.monotonic() > deadline:
            counts = [call("GET", "/v1/status", None, str(d.socket))["endpoints"] for d in (a, b)]
            logs = "\n".join(d.log_text()[-3000:] for d in (a, b))
            raise AssertionError(f"no convergence within 60 s: {counts} of {total}\n{logs}")
        time.sleep(0.01)
    converged = time.monotonic() - start
    print(f"join rate, {joins} joins from {clients} clients per daemon, half on each host:")
    print(f"  acknowledged {joins / acknowledged:8.1f} joins/s ({acknowledged:.2f} s)")
    print(f"  converged    {joins / converged:8.1f} joins/s ({converged:.2f} s until both hosts hold all)")
    anchor = memory_rate(cluster, joins, clients, log_level)
    print(f"  anchor: one daemon, in-memory backend, {clients} clients: {anchor:8.1f} joins/s")
    print(f"  ratio converged/anchor: {joins / converged / anchor:.2f}x")
    for daemon in (a, b):
        print(f"  {daemon.host}: {daemon.registry_status()}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("what", nargs="?", default="all", choices=["latency", "rate", "all"])
    parser.add_argument("--joins", type=int, default=150)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args()
    for what in ("latency", "rate"):
        if args.what not in (what, "all"):
            continue
        with tempfile.TemporaryDirectory(prefix="rt8-bench-") as tmp:
            cluster = Cluster(Path(tmp), log_level=args.log_level)
            try:
                cluster.setup()
                if what == "latency":
                    bench_latency(cluster, args.joins)
                else:
                    bench_rate(cluster, args.joins, args.clients, args.log_level)
            finally:
                cluster.cleanup()


if __name__ == "__main__":
    main()
