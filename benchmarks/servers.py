"""The servers under test, each started inside a namespace the lab made and pinned to the server core:
this project's daemon (`resolver serve` with a config file in the work directory, fed through its control
API), dnsmasq (hosts file, or forwarding with and without its cache) and Debian's aardvark-dns 1.4 (its
config directory, listening on the gateway address of a veth link).

A `Server` says where clients send queries (namespace, address, source address) and which pid to charge
CPU time to. Nothing here listens outside the lab's namespaces; no upstream is reachable from them but
the dnsmasq upstream the benchmark starts in the same namespace.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import dataset
from benchmarks.lab import SERVER_CPU, Lab, LabError, in_netns, run, wait_for
from resolver.control.client import ControlError, call

ROOT = Path(__file__).resolve().parent.parent
AARDVARK = "/usr/lib/podman/aardvark-dns"
LISTEN = "127.0.0.11"
# How the anchors appear in tables, JSON and charts.
DNSMASQ_HOSTS = "dnsmasq (hosts)"
DNSMASQ_CACHE = "dnsmasq (cache)"
DNSMASQ_NOCACHE = "dnsmasq (no cache)"
AARDVARK_LABEL = "aardvark-dns 1.4"
FLOOR_LABEL = "Python floor (fresh socket per query, no checks)"


@dataclass
class Server:
    """Where to send queries and whose CPU time they cost."""

    label: str
    netns: str
    address: str
    pid: int
    source: str | None = None
    targets: list[str] = field(default_factory=list)  # more sandboxes served by the same process


def resolver_command() -> list[str]:
    script = ROOT / ".venv" / "bin" / "resolver"
    return [str(script)] if script.exists() else [sys.executable, "-m", "resolver"]


def probe(netns: str, address: str, name: str, source: str | None = None, qtype: str = "A") -> bool:
    """One dig query from inside `netns`: true when an answer came back with at least one record."""
    bind = ["-b", source] if source else []
    cmd = ["dig", "+short", "+time=1", "+tries=1", *bind, f"@{address}", name, qtype]
    return bool(run(in_netns(netns, cmd), check=False).strip())


def wait_answering(lab: Lab, server: Server, name: str, log: str) -> Server:
    try:
        wait_for(lambda: probe(server.netns, server.address, name, server.source), 15, f"{server.label}")
    except LabError as exc:
        raise LabError(f"{exc}\n{lab.log(log)}") from None
    return server


# ---- this project's daemon -----------------------------------------------------------------------------


class Daemon:
    """`resolver serve` with a private socket, state directory and host resolv.conf (no servers)."""

    def __init__(self, lab: Lab, tag: str, settings: str = "") -> None:
        self.lab = lab
        tag = f"{tag}-{secrets.token_hex(2)}"  # a fresh state directory every time
        self.dir = lab.workdir / f"daemon-{tag}"
        self.dir.mkdir(parents=True)
        self.socket = str(self.dir / "s.sock")
        (self.dir / "host-resolv.conf").write_text("# benchmark: no host upstreams\n")
        config = self.dir / "resolver.toml"
        config.write_text(
            "[server]\n"
            f'socket = "{self.socket}"\n'
            f'state_dir = "{self.dir / "state"}"\n'
            f'host_resolv_conf = "{self.dir / "host-resolv.conf"}"\n'
            f"{settings}"
            '[log]\nlevel = "warning"\n'
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("RESOLVER_")}
        self.log = f"daemon-{tag}.log"
        self.proc = lab.spawn(
            [*resolver_command(), "serve", "--config", config], self.log, cpu=SERVER_CPU, env=env
        )
        try:
            wait_for(self._up, 20, "the daemon's control API")
        except LabError as exc:
            raise LabError(f"{exc}\n{lab.log(self.log)}") from None

    def _up(self) -> bool:
        if self.proc.poll() is not None:
            raise LabError(f"the daemon exited with {self.proc.returncode}\n{self.lab.log(self.log)}")
        try:
            call("GET", "/v1/status", None, self.socket, timeout=2)
        except ControlError:
            return False
        return True

    @property
    def pid(self) -> int:
        return self.proc.pid

    def api(self, method: str, path: str, body: Any = None) -> Any:
        return call(method, path, body, self.socket)

    def network(self, name: str, **options: Any) -> None:
        self.api("POST", "/v1/networks", {"name": name, **options})

    def join(self, network: str, netns: str, ep: dataset.Endpoint, dns: list[str] | None = None) -> None:
        body = {
            "network": network,
            "netns": netns,
            "endpoint": f"ep{ep.index}",
            "name": ep.name,
            "ipv4": [ep.ipv4],
            "ipv6": [ep.ipv6],
            "dns": dns or [],
        }
        self.api("POST", "/v1/endpoints", body)

    def server(self, label: str, netns: str) -> Server:
        return Server(label, netns, LISTEN, self.pid)


# ---- dnsmasq -------------------------------------------------------------------------------------------


def dnsmasq(lab: Lab, netns: str, address: str, options: list[str], tag: str, label: str = "") -> Server:
    """dnsmasq 2.90 on `address`:53 (UDP and TCP) in `netns`, pinned to the server core."""
    cmd = [
        "dnsmasq",
        "--keep-in-foreground",
        "--no-resolv",
        "--no-hosts",
        "--bind-interfaces",
        f"--listen-address={address}",
        "--port=53",
        "--user=root",
        f"--pid-file={lab.workdir / f'dnsmasq-{tag}.pid'}",
        *options,
    ]
    proc = lab.spawn(cmd, f"dnsmasq-{tag}.log", netns, cpu=SERVER_CPU)
    return Server(label or f"dnsmasq-{tag}", netns, address, proc.pid)


def dnsmasq_local(lab: Lab, netns: str, hosts: Path) -> Server:
    """dnsmasq answering the endpoints from a hosts file, NXDOMAIN for other names under the domain."""
    options = [f"--addn-hosts={hosts}", f"--local=/{dataset.DOMAIN}/", "--cache-size=10000", "--local-ttl=5"]
    server = dnsmasq(lab, netns, LISTEN, options, "local", DNSMASQ_HOSTS)
    return wait_answering(lab, server, f"host0.{dataset.DOMAIN}", "dnsmasq-local.log")


def upstream(lab: Lab, netns: str, hosts: Path) -> Server:
    """The upstream every forwarder asks: names under the hit zone from a hosts file (TTL 300), any name
    under the miss zone from a wildcard."""
    options = [
        f"--addn-hosts={hosts}",
        f"--local=/{dataset.HIT_ZONE}/",
        f"--address=/{dataset.MISS_ZONE}/{dataset.MISS_ADDRESS}",
        "--local-ttl=300",
        "--cache-size=10000",
    ]
    server = dnsmasq(lab, netns, dataset.UPSTREAM, options, f"upstream-{netns}")
    return wait_answering(lab, server, f"host0.{dataset.HIT_ZONE}", f"dnsmasq-upstream-{netns}.log")


def dnsmasq_forwarder(lab: Lab, netns: str, cache: bool) -> Server:
    options = [
        f"--server={dataset.UPSTREAM}",
        f"--cache-size={10000 if cache else 0}",
        "--dns-forward-max=1000",
    ]
    tag = "cache" if cache else "nocache"
    server = dnsmasq(lab, netns, LISTEN, options, tag, DNSMASQ_CACHE if cache else DNSMASQ_NOCACHE)
    return wait_answering(lab, server, f"host0.{dataset.HIT_ZONE}", f"dnsmasq-{tag}.log")


# ---- the floor of a Python forwarder ------------------------------------------------------------------

FRESH_SOCKET_FORWARDER = """
import asyncio, select, socket, sys, uvloop
LISTEN, UP = (sys.argv[1], 53), (sys.argv[2], 53)
class P(asyncio.DatagramProtocol):
    def __init__(self, loop):
        self.ep = select.epoll(); self.waiting = {}
        loop.add_reader(self.ep.fileno(), self.ready)
    def connection_made(self, t): self.t = t
    def datagram_received(self, d, a):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
        s.connect(UP); s.send(d)
        self.ep.register(s.fileno(), select.EPOLLIN | select.EPOLLONESHOT)
        self.waiting[s.fileno()] = (s, a)
    def ready(self):
        for fd, _ in self.ep.poll(0):
            s, a = self.waiting.pop(fd)
            d = s.recv(4096); s.close()
            self.t.sendto(d, a)
async def main():
    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(lambda: P(loop), local_addr=LISTEN)
    await asyncio.Event().wait()
uvloop.run(main())
"""
"""The least a Python forwarder on uvloop can do with a fresh socket (a new random port) per upstream
query: socket, connect, send, one-shot epoll, recv, close, reply. It checks nothing and relays the
upstream's bytes, id included, so it is a floor to read our cache-miss figures against, not a server."""


def python_floor_forwarder(lab: Lab, netns: str, listen: str = LISTEN) -> Server:
    """`FRESH_SOCKET_FORWARDER` on `listen` in `netns`, asking the upstream of that namespace."""
    command = [sys.executable, "-c", FRESH_SOCKET_FORWARDER, listen, dataset.UPSTREAM]
    proc = lab.spawn(command, f"floor-{netns}.log", netns, cpu=SERVER_CPU)
    server = Server(FLOOR_LABEL, netns, listen, proc.pid)
    return wait_answering(lab, server, f"host0.{dataset.HIT_ZONE}", f"floor-{netns}.log")


# ---- aardvark-dns --------------------------------------------------------------------------------------


def aardvark(lab: Lab, netns: str, eps: list[dataset.Endpoint]) -> Server:
    """Debian's aardvark-dns 1.4 for one network holding every endpoint, on the gateway address of a
    veth link in `netns`; clients send from the sandbox address (a known container, so PTR works).
    Its upstream (/etc/resolv.conf as `ip netns exec` shows it) is the lab's upstream address."""
    if not os.access(AARDVARK, os.X_OK):
        raise LabError(f"{AARDVARK} is missing: run ./scripts/setup as root")
    link = ["ip", "-n", netns]
    run([*link, "link", "add", "avk0", "type", "veth", "peer", "name", "avk1"])
    for address in (dataset.GATEWAY, dataset.CLIENT):
        run([*link, "addr", "add", f"{address}/{dataset.PREFIX_LEN}", "dev", "avk0"])
    for device in ("avk0", "avk1"):
        run([*link, "link", "set", device, "up"])
    lab.etc_file(netns, "resolv.conf", f"nameserver {dataset.UPSTREAM}\n")
    config = dataset.aardvark_config(lab.workdir / f"aardvark-{netns}", "bench", eps)
    log = f"aardvark-{netns}.log"
    parent = lab.spawn([AARDVARK, "--config", config, "-p", "53", "run"], log, netns, cpu=SERVER_CPU)
    parent.wait(15)  # it forks; the parent exits once the child is ready
    pidfile = config / "aardvark.pid"
    pid = int(wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), 10, "aardvark.pid"))
    lab.adopt_pid(pid)
    server = Server(AARDVARK_LABEL, netns, dataset.GATEWAY, pid, source=dataset.CLIENT)
    return wait_answering(lab, server, f"host0.{dataset.DOMAIN}", log)


def missing_tools() -> list[str]:
    tools = ("ip", "dig", "dnsperf", "dnsmasq", "taskset")
    return [t for t in tools if shutil.which(t) is None] + (
        [] if os.access(AARDVARK, os.X_OK) else [AARDVARK]
    )
