"""Per-datagram CPU floor: what a query costs the server in a minimal Python loop, a uvloop echo and
our daemon, measured in the same network namespace with the same dnsperf load (server on CPU 0,
dnsperf on CPU 1). It tells how much of the daemon's CPU per query is the kernel and the event loop
(which we cannot remove) and how much is ours.

Servers (each answers the query with QR set, so dnsperf counts a reply):
  blocking   recvfrom/sendto in a plain Python loop (what a C server does per datagram)
  uvloop     an asyncio DatagramProtocol on uvloop, transport.sendto
  reader     uvloop add_reader + recvfrom until EAGAIN, sock.sendto (several datagrams per wakeup)
  daemon     this project, local answers (the same names as dns_bench local)
  dnsmasq    dnsmasq 2.90 answering from a hosts file

Run as root:  .venv/bin/python -m benchmarks.floor_bench [--seconds 8] [servers...]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.dns_bench import (
    call,
    cli,
    dnsmasq,
    dnsperf,
    names_and_addresses,
    namespace,
    process,
    query_file,
    server_pid,
    start_daemon,
    wait_answer,
)

PYTHON = sys.executable
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
}


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


def measure(label: str, netns: str, server: str, queries: Path, seconds: float, pid: int) -> None:
    before = task_times(pid)
    result = dnsperf(netns, server, queries, seconds, pid)
    after = task_times(pid)
    n = max(result.qps * seconds, 1)
    user, system, run = (1e6 * (a - b) / n for a, b in zip(after, before, strict=True))
    print(
        f"{label:<12}{result.qps:>10,.0f} q/s  {result.latency_ms:6.2f} ms  "
        f"CPU/query {run:5.1f} us (user {user:4.1f}, sys {system:4.1f})",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("servers", nargs="*", default=["blocking", "uvloop", "reader", "daemon", "dnsmasq"])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--names", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, namespace() as netns:
        workdir = Path(tmp)
        entries = names_and_addresses(args.names)
        names = [f"{n}.corp.test" for n, _, _ in entries]
        queries = query_file(workdir, names, [f"missing{i}.corp.test" for i in range(100)])
        for server in args.servers:
            if server in ECHO:
                with process([PYTHON, "-c", ECHO[server]], workdir / f"{server}.log", netns) as proc:
                    time.sleep(1.0)
                    measure(server, netns, "127.0.0.13", queries, args.seconds, proc.pid)
            elif server == "daemon":
                with start_daemon(workdir, {}) as daemon:
                    cli(daemon.sock, "network", "create", "bench", "--domain", "corp.test", "--internal")
                    for i, (name, v4, v6) in enumerate(entries):
                        body = {"network": "bench", "netns": netns, "endpoint": f"ep{i}", "name": name}
                        call("POST", "/v1/endpoints", {**body, "ipv4": [v4], "ipv6": [v6]}, daemon.sock)
                    wait_answer(netns, "127.0.0.11", "host0.corp.test")
                    measure(server, netns, "127.0.0.11", queries, args.seconds, daemon.pid)
            elif server == "dnsmasq":
                hosts = workdir / "hosts"
                hosts.write_text(
                    "".join(f"{v4} {n}.corp.test\n{v6} {n}.corp.test\n" for n, v4, v6 in entries)
                )
                extra = [
                    f"--addn-hosts={hosts}",
                    "--local=/corp.test/",
                    "--cache-size=10000",
                    "--local-ttl=5",
                ]
                with dnsmasq(netns, "127.0.0.12", workdir, extra, "local") as proc:
                    wait_answer(netns, "127.0.0.12", "host0.corp.test")
                    pid = server_pid(proc, "dnsmasq")
                    measure(server, netns, "127.0.0.12", queries, args.seconds, pid)


if __name__ == "__main__":
    main()
