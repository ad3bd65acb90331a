"""Per-datagram CPU floor: what a query costs the server in a minimal Python loop, a uvloop echo and
our daemon, measured in the same network namespace with the same dnsperf load (server on CPU 0,
dnsperf on CPU 1). It tells how much of the daemon's CPU per query is the kernel and the event loop
(which we cannot remove) and how much is ours.

Servers (each answers the query with QR set, so dnsperf counts a reply):
  blocking   recvfrom/sendto in a plain Python loop (what a C server does per datagram)
  uvloop     an asyncio DatagramProtocol on uvloop, transport.sendto
  reader     uvloop add_reader + recvfrom until EAGAIN, sock.sendto (several datagrams per wakeup)
  daemon     this project, local answers (the query mix of `python -m benchmarks -s local`)
  dnsmasq    dnsmasq 2.90 answering from a hosts file

Forwarding floors (every query a new name, relayed to a dnsmasq upstream on 127.0.0.61 in the same
namespace, pinned to the server core like the forwarders of `python -m benchmarks -s fwd-miss`):
  fwd-fresh    the least a Python forwarder on uvloop can do with a fresh socket per upstream query
               (socket, connect, send, one-shot epoll, recv, close, reply), no checks at all
  fwd-shared   the same with one shared upstream socket and the client's id: NOT safe (RFC 5452), the
               floor of a forwarder that gives up per-query ports
  fwd-daemon   this project, forwarding (cache on, every name new)
  fwd-dnsmasq  dnsmasq 2.90 with cache-size=0

Run as root:  .venv/bin/python -m benchmarks.floor_bench [--seconds 8] [--syscalls] [servers...]
   forwarding: .venv/bin/python -m benchmarks.floor_bench fwd-fresh fwd-shared fwd-daemon fwd-dnsmasq

--syscalls also counts the server's system calls per answered query by name (`perf stat` on the
syscalls:sys_enter_* tracepoints, Debian's linux-perf; the counting costs the server a little).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import dataset, load
from benchmarks.lab import SERVER_CPU, Lab
from benchmarks.scenarios import RESOLVER, local_daemon
from benchmarks.servers import (
    Daemon,
    Server,
    dnsmasq_forwarder,
    dnsmasq_local,
    python_floor_forwarder,
    upstream,
    wait_answering,
)

PYTHON = sys.executable
ECHO_ADDRESS = "127.0.0.13"
ECHO = {
    "blocking": """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.13", 53))
recv, send = s.recvfrom, s.sendto
while True:
    d, a = recv(4096)
    send(d[:2] + b"\\x81\\x80" + d[4:], a)
""",
    "uvloop": """
import asyncio, socket, uvloop
class P(asyncio.DatagramProtocol):
    def connection_made(self, t): self.t = t
    def datagram_received(self, d, a): self.t.sendto(d[:2] + b"\\x81\\x80" + d[4:], a)
async def main():
    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(P, local_addr=("127.0.0.13", 53))
    await asyncio.Event().wait()
uvloop.run(main())
""",
    "reader": """
import asyncio, socket, uvloop
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.13", 53))
s.setblocking(False)
recv, send = s.recvfrom, s.sendto
def ready():
    try:
        while True:
            d, a = recv(4096)
            send(d[:2] + b"\\x81\\x80" + d[4:], a)
    except BlockingIOError:
        pass
async def main():
    asyncio.get_running_loop().add_reader(s.fileno(), ready)
    await asyncio.Event().wait()
uvloop.run(main())
""",
    "fwd-shared": """
import asyncio, socket, uvloop
UP = ("127.0.0.61", 53)
class Up(asyncio.DatagramProtocol):
    def __init__(self, clients): self.clients = clients
    def datagram_received(self, d, a):
        client = self.clients.pop(d[:2], None)
        if client: client[0].sendto(d, client[1])
class P(asyncio.DatagramProtocol):
    def __init__(self, up, clients): self.up, self.clients = up, clients
    def connection_made(self, t): self.t = t
    def datagram_received(self, d, a):
        self.clients[d[:2]] = (self.t, a)
        self.up.sendto(d)
async def main():
    loop = asyncio.get_running_loop()
    clients = {}
    up, _ = await loop.create_datagram_endpoint(lambda: Up(clients), remote_addr=UP)
    await loop.create_datagram_endpoint(lambda: P(up, clients), local_addr=("127.0.0.13", 53))
    await asyncio.Event().wait()
uvloop.run(main())
""",
}
FORWARDING = {"fwd-fresh", "fwd-shared", "fwd-daemon", "fwd-dnsmasq"}


def task_times(pid: int) -> tuple[float, float, float]:
    """(user s, system s, on-CPU s from schedstat) summed over the process's threads."""
    user = system = run = 0.0
    clk = os.sysconf("SC_CLK_TCK")
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            user += int(fields[11]) / clk
            system += int(fields[12]) / clk
            run += int((task / "schedstat").read_text().split()[0]) / 1e9
        except (FileNotFoundError, ProcessLookupError):
            continue
    return user, system, run


SYSCALLS = [
    "socket",
    "connect",
    "bind",
    "close",
    "sendto",
    "sendmsg",
    "sendmmsg",
    "recvfrom",
    "recvmsg",
    "recvmmsg",
    "read",
    "write",
    "poll",
    "ppoll",
    "select",
    "epoll_wait",
    "epoll_pwait",
    "epoll_ctl",
    "futex",
    "ioctl",
    "getsockname",
    "setsockopt",
    "sched_yield",
]
"""The calls `--syscalls` counts: everything a DNS server's datagram path makes."""


def measure(server: Server, queries: Path, seconds: float, syscalls: bool = False) -> None:
    before = task_times(server.pid)
    counts_file = queries.parent / f"perf-{server.label}.txt"
    counter = _count_syscalls(server.pid, counts_file) if syscalls else None
    try:
        result = load.throughput(server, queries, seconds)
    finally:
        counts = _counted(counter, counts_file) if counter is not None else {}
    after = task_times(server.pid)
    n = max(result.completed, 1)
    user, system, run = (1e6 * (a - b) / n for a, b in zip(after, before, strict=True))
    print(
        f"{server.label:<12}{result.qps:>10,.0f} q/s  {result.avg_ms:6.2f} ms  "
        f"CPU/query {run:5.1f} us (user {user:4.1f}, sys {system:4.1f})",
        flush=True,
    )
    if counts:
        per_query = {name: count / n for name, count in counts.items() if count / n >= 0.01}
        listed = ", ".join(f"{name} {value:.2f}" for name, value in sorted(per_query.items()))
        print(f"{'':<12}system calls per query: {sum(per_query.values()):.2f} ({listed})", flush=True)


def _count_syscalls(pid: int, out: Path) -> subprocess.Popen[bytes]:
    events = ",".join(f"syscalls:sys_enter_{name}" for name in SYSCALLS)
    command = ["perf", "stat", "-x,", "-e", events, "-p", str(pid), "-o", str(out)]
    counter = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.3)  # perf attaches before the load starts
    return counter


def _counted(counter: subprocess.Popen[bytes], out: Path) -> dict[str, int]:
    """The counts `perf stat` wrote when interrupted: name -> calls."""
    counter.send_signal(2)
    counter.wait(timeout=30)
    counts = {}
    for line in out.read_text().splitlines():
        fields = line.split(",")
        if len(fields) > 2 and fields[0].isdigit():
            counts[fields[2].removeprefix("syscalls:sys_enter_")] = int(fields[0])
    out.unlink()
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("servers", nargs="*", default=["blocking", "uvloop", "reader", "daemon", "dnsmasq"])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--names", type=int, default=1000)
    parser.add_argument("--syscalls", action="store_true", help="count system calls per query (perf)")
    args = parser.parse_args()
    if args.syscalls and shutil.which("perf") is None:
        parser.error("--syscalls needs perf (apt-get install linux-perf)")
    with tempfile.TemporaryDirectory() as tmp, Lab(Path(tmp)) as lab:
        netns = lab.add_namespaces(1)[0]
        eps = dataset.endpoints(args.names)
        local_queries = dataset.local_queries(lab.workdir / "local.txt", eps)
        for run, name in enumerate(args.servers):
            with lab.scope():
                queries = local_queries
                if name in FORWARDING:
                    upstream(lab, netns, dataset.hosts_file(lab.workdir / "hosts-up", eps, dataset.HIT_ZONE))
                    lines = int(args.seconds * 60_000)
                    queries = dataset.miss_queries(lab.workdir / f"miss-{run}.txt", lines, 500 + run)
                if name == "fwd-daemon":
                    daemon = Daemon(lab, "floor-fwd")
                    daemon.network("fwd", domain=dataset.DOMAIN)
                    daemon.join("fwd", netns, eps[0], dns=[dataset.UPSTREAM])
                    ready = daemon.server(RESOLVER, netns)
                    server = wait_answering(lab, ready, f"host0.{dataset.HIT_ZONE}", daemon.log)
                    server.label = name
                elif name == "fwd-fresh":
                    server = python_floor_forwarder(lab, netns, ECHO_ADDRESS)
                    server.label = name
                elif name == "fwd-dnsmasq":
                    server = dnsmasq_forwarder(lab, netns, cache=False)
                    server.label = name
                elif name in ECHO:
                    proc = lab.spawn([PYTHON, "-c", ECHO[name]], f"{name}.log", netns, cpu=SERVER_CPU)
                    time.sleep(1.0)
                    server = Server(name, netns, ECHO_ADDRESS, proc.pid)
                elif name == "daemon":
                    daemon = local_daemon(lab, [netns], eps, "floor")
                    ready = daemon.server(name, netns)
                    server = wait_answering(lab, ready, f"host0.{dataset.DOMAIN}", daemon.log)
                elif name == "dnsmasq":
                    server = dnsmasq_local(
                        lab, netns, dataset.hosts_file(lab.workdir / "hosts", eps, dataset.DOMAIN)
                    )
                    server.label = name
                else:
                    parser.error(f"unknown server {name}")
                measure(server, queries, args.seconds, args.syscalls)
                if name in FORWARDING:
                    (lab.workdir / f"miss-{run}.txt").unlink()


if __name__ == "__main__":
    main()
