"""A two-host cluster on one machine for the multi-host tests and benchmark: a real etcd (Debian's
etcd-server) and one `resolver serve` per "host", each host being a network namespace of its own.

Layout: a hub namespace holds a bridge (10.88.0.1/24, where etcd listens) and etcd itself; each host
namespace has a veth on the bridge (10.88.0.2, .3, ...) and runs its daemon through `nsenter --net`, so
the daemon's sockets to etcd live in the host namespace while it still enters sandbox namespaces made
with `ip netns add`. Nothing listens on the machine's own loopback.

Everything is removed by `cleanup()` (etcd and daemons stopped by pid, namespaces and veths deleted),
also when a test fails.
"""

from __future__ import annotations

import base64
import json
import signal
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from integration.nstools import VENV_PYTHON, Daemon, Namespaces, in_netns, run, wait_until

PREFIX = "rt8-"
HUB_ADDRESS = "10.88.0.1"
CLIENT_PORT = 2379
LEASE_TTL = 5


class Netns(Namespaces):
    """`Namespaces` with this suite's prefix."""

    prefix = PREFIX


def netns_path(name: str) -> str:
    return f"/run/netns/{name}"


def make_certificates(directory: Path, address: str) -> Path:
    """A CA, a server certificate for `address` and a client certificate (ca/server/client .pem/.key)."""
    directory.mkdir(parents=True, exist_ok=True)
    d = directory
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    self_signed = ["-x509", "-days", "1", "-subj", "/CN=rt8-test-ca", "-keyout", d / "ca.key"]
    run(["openssl", "req", *key, *self_signed, "-out", d / "ca.pem"], check=True)
    ca = ["-CA", d / "ca.pem", "-CAkey", d / "ca.key", "-CAcreateserial", "-days", "1"]
    for name, extension in (
        ("server", f"subjectAltName=IP:{address}\nextendedKeyUsage=serverAuth,clientAuth"),
        ("client", "extendedKeyUsage=clientAuth"),
    ):
        (d / f"{name}.ext").write_text(extension + "\n")
        request = ["-keyout", d / f"{name}.key", "-out", d / f"{name}.csr", "-subj", f"/CN=rt8-{name}"]
        run(["openssl", "req", *key, *request], check=True)
        sign = ["-in", d / f"{name}.csr", "-out", d / f"{name}.pem", "-extfile", d / f"{name}.ext"]
        run(["openssl", "x509", "-req", *ca, *sign], check=True)
    return directory


class Etcd:
    """etcd in namespace `netns` (`members` of them: client ports 2379, 12379, ...), data under `workdir`;
    `stop()` keeps the data for a later `start()`. With `tls` (a `make_certificates` directory) it serves
    HTTPS and asks clients for a certificate."""

    def __init__(
        self, workdir: Path, netns: str, address: str, tls: Path | None = None, members: int = 1
    ) -> None:
        self.workdir = workdir
        self.netns = netns
        self.tls = tls
        scheme = "https" if tls else "http"
        self.urls = [f"{scheme}://{address}:{CLIENT_PORT + 10000 * i}" for i in range(members)]
        self.url = self.urls[0]
        self.peers = [f"http://127.0.0.1:{CLIENT_PORT + 1 + 10000 * i}" for i in range(members)]
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * members
        self.log = workdir / "etcd.log"

    def start(self, timeout: float = 20.0) -> None:
        assert not any(self.procs)
        cluster = ",".join(f"rt8-{i}={peer}" for i, peer in enumerate(self.peers))
        for i, (url, peer) in enumerate(zip(self.urls, self.peers, strict=True)):
            with open(self.log, "ab") as log:
                self.procs[i] = subprocess.Popen(
                    in_netns(
                        netns_path(self.netns),
                        "etcd",
                        f"--name=rt8-{i}",
                        f"--data-dir={self.workdir / f'data-{i}'}",
                        f"--listen-client-urls={url}",
                        f"--advertise-client-urls={url}",
                        f"--listen-peer-urls={peer}",
                        f"--initial-advertise-peer-urls={peer}",
                        f"--initial-cluster={cluster}",
                        *self._tls_flags(),
                    ),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
        if not wait_until(lambda: self.ctl("endpoint", "health").returncode == 0, timeout, 0.2):
            self.stop()
            raise AssertionError(f"etcd did not become healthy:\n{self.log.read_text(errors='replace')}")

    def _tls_flags(self) -> list[str]:
        if self.tls is None:
            return []
        return [
            f"--cert-file={self.tls / 'server.pem'}",
            f"--key-file={self.tls / 'server.key'}",
            f"--trusted-ca-file={self.tls / 'ca.pem'}",
            "--client-cert-auth",
        ]

    def stop(self) -> None:
        for i in range(len(self.procs)):
            self.stop_member(i)

    def stop_member(self, index: int) -> None:
        proc = self.procs[index]
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs[index] = None

    def leader(self) -> int:
        """The index of the member that leads now."""
        result = self.ctl("endpoint", "status", "-w", "json")
        assert result.returncode == 0, result.stderr
        statuses = json.loads(result.stdout)
        by_id = {st["Status"]["header"]["member_id"]: self.urls.index(st["Endpoint"]) for st in statuses}
        return by_id[statuses[0]["Status"]["leader"]]

    def member_id(self, index: int) -> int:
        result = self.ctl("endpoint", "status", "-w", "json", endpoints=[self.urls[index]])
        assert result.returncode == 0, result.stderr
        return int(json.loads(result.stdout)[0]["Status"]["header"]["member_id"])

    ctl_env = {"ETCDCTL_API": "3", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}

    def ctl(self, *args: str, endpoints: list[str] | None = None) -> subprocess.CompletedProcess[str]:
        urls = endpoints or [u for u, proc in zip(self.urls, self.procs, strict=True) if proc is not None]
        ctl = ["etcdctl", f"--endpoints={','.join(urls or self.urls)}", "--command-timeout=3s"]
        if self.tls is not None:
            ctl += [f"--cacert={self.tls / 'ca.pem'}", f"--cert={self.tls / 'client.pem'}"]
            ctl += [f"--key={self.tls / 'client.key'}"]
        ctl += args
        return run(
            in_netns(netns_path(self.netns), *ctl),
            env=self.ctl_env,
        )

    def revision(self) -> int:
        result = self.ctl("get", "/", "--prefix", "--keys-only", "--limit=1", "-w", "json")
        assert result.returncode == 0, result.stderr
        return int(json.loads(result.stdout)["header"]["revision"])

    def keys(self, prefix: str = "/resolver/") -> dict[str, int]:
        """Every key under `prefix` and the lease it is attached to (0: none)."""
        result = self.ctl("get", prefix, "--prefix", "-w", "json")
        assert result.returncode == 0, result.stderr
        kvs = json.loads(result.stdout).get("kvs", [])
        return {base64.b64decode(kv["key"]).decode(): int(kv.get("lease", 0)) for kv in kvs}


class HostDaemon(Daemon):
    """`resolver serve` inside host namespace `host`, with the etcd backend."""

    def __init__(
        self,
        workdir: Path,
        host: str,
        etcd_urls: list[str],
        lease_ttl: int = LEASE_TTL,
        tls: Path | None = None,
    ) -> None:
        super().__init__(workdir)
        self.host = host
        self.config = workdir / "resolver.toml"
        endpoints = ", ".join(f'"{url.split("://", 1)[1]}"' for url in etcd_urls)
        self.config.write_text(
            "[registry]\n"
            'backend = "etcd"\n'
            f"endpoints = [{endpoints}]\n"
            f"lease_ttl = {lease_ttl}\n"
            "timeout = 2.0\n"
        )
        if tls is not None:
            with self.config.open("a") as f:
                f.write(f'tls_ca = "{tls / "ca.pem"}"\n')
                f.write(f'tls_cert = "{tls / "client.pem"}"\ntls_key = "{tls / "client.key"}"\n')

    def command(self) -> list[str]:
        return in_netns(netns_path(self.host), *super().command(), "--config", str(self.config))

    def registry_status(self) -> dict[str, Any]:
        status: dict[str, Any] = self.json("status")["registry"]
        return status

    def connected(self) -> bool:
        return bool(self.registry_status()["connected"])


class Cluster:
    """etcd plus `hosts` host namespaces, each with a daemon (started by `start_daemons`)."""

    def __init__(
        self, workdir: Path, hosts: int = 2, log_level: str = "debug", tls: bool = False, members: int = 1
    ) -> None:
        self.workdir = workdir
        self.members = members
        self.tls = make_certificates(workdir / "tls", HUB_ADDRESS) if tls else None
        self.log_level = log_level
        self.netns = Netns()
        self.daemons: list[HostDaemon] = []
        self.etcd: Etcd | None = None
        self.hosts: list[str] = []
        self._hosts = hosts

    def setup(self) -> None:
        lan = self.netns.lan()
        run(["ip", "-n", lan.hub, "addr", "add", f"{HUB_ADDRESS}/24", "dev", lan.bridge], check=True)
        run(["ip", "-n", lan.hub, "link", "set", "lo", "up"], check=True)
        for index in range(self._hosts):
            host = self.netns.add()
            lan.attach(host, f"10.88.0.{index + 2}/24")
            run(["ip", "-n", host, "link", "set", "lo", "up"], check=True)
            self.hosts.append(host)
        (self.workdir / "etcd").mkdir(parents=True, exist_ok=True)
        self.etcd = Etcd(self.workdir / "etcd", lan.hub, HUB_ADDRESS, self.tls, self.members)
        self.etcd.start()
        for index, host in enumerate(self.hosts):
            assert self.etcd is not None
            daemon = HostDaemon(self.workdir / f"h{index}", host, self.etcd.urls, tls=self.tls)
            daemon.log_level = self.log_level
            self.daemons.append(daemon)
        with ThreadPoolExecutor(len(self.daemons)) as pool:
            list(pool.map(lambda d: d.start(), self.daemons))
        for daemon in self.daemons:
            assert wait_until(daemon.connected, 15), f"daemon did not reach etcd:\n{daemon.log_text()}"

    def sandbox(self) -> str:
        """A new sandbox namespace (joined through any host's daemon)."""
        return self.netns.add()

    def prober(self, sandbox: str) -> Prober:
        proc = subprocess.Popen(
            in_netns(sandbox, VENV_PYTHON, Path(__file__).with_name("prober.py")),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.netns.procs.append(proc)
        return Prober(proc)

    def cleanup(self) -> list[str]:
        """Stop everything; returns the daemons that did not exit 0 on SIGTERM (with their logs)."""
        failures = []
        for daemon in self.daemons:
            was_running = daemon.running()
            status = daemon.stop()
            if was_running and status != 0:
                failures.append(f"daemon {daemon.host} exited {status}:\n{daemon.log_text()}")
        if self.etcd is not None:
            self.etcd.stop()
        self.netns.cleanup()
        return failures


class Prober:
    """A `prober.py` running inside a sandbox: `lookup(name)` asks 127.0.0.11 there for NAME's A records."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def reply(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, f"the prober exited with {self.proc.wait()}"
        result: dict[str, Any] = json.loads(line)
        return result

    def lookup(self, name: str) -> dict[str, Any]:
        self.send(name)
        return self.reply()

    def addresses(self, name: str) -> list[str]:
        result: list[str] = self.lookup(name)["addresses"]
        return result

    def unknown(self, name: str) -> bool:
        """The daemon answered and NAME is not local (no upstream in these tests: SERVFAIL)."""
        result = self.lookup(name)
        return result["rcode"] in ("NXDOMAIN", "SERVFAIL") and not result["addresses"]
