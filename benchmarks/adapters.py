"""Runtime adapters: what the CNI plugin and the OCI hook add to a container's start and stop.

For each of N containers (namespaces with `lo` up and an address, made beforehand and not counted) the
harness runs, as a runtime would and pinned to the client core: `resolver-cni` ADD (a chained plugin:
the container's address in `prevResult`) and later DEL; and, for another N containers, each with a process
inside and an OCI bundle (config.json naming the netns, a rootfs with etc/resolv.conf), `resolver-oci-hook`
at createRuntime and at poststop, with the container state on stdin. Each figure is the wall time of the
whole process (interpreter start included); the interpreter starting alone (`python -c pass`) is measured
the same way for reference. The daemon runs on the server core.
"""

from __future__ import annotations

import functools
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from benchmarks.lab import CLIENT_CPU, Lab, LabError, run, wait_for
from benchmarks.servers import ROOT, Daemon

NETWORK = "adapters"
OPERATIONS = ("python_start", "cni_add", "cni_del", "oci_create", "oci_poststop")


@dataclass
class AdapterRun:
    containers: int
    ms: dict[str, list[float]] = field(default_factory=lambda: {op: [] for op in OPERATIONS})

    def summary(self) -> dict[str, float]:
        out: dict[str, float] = {"containers": self.containers}
        for op, values in self.ms.items():
            ordered = sorted(values) or [float("nan")]
            out[f"{op}_median_ms"] = statistics.median(ordered)
            out[f"{op}_p99_ms"] = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
        return out

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def script(name: str) -> str:
    path = ROOT / ".venv" / "bin" / name
    if not path.exists():
        raise LabError(f"{path} is missing: run ./scripts/setup")
    return str(path)


def timed(cmd: list[str], stdin: str, env: dict[str, str]) -> float:
    """Wall time (ms) of one adapter run; LabError with its output when it fails."""
    started = time.perf_counter()
    done = subprocess.run(
        ["taskset", "-c", str(CLIENT_CPU), *cmd],
        input=stdin,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    elapsed = (time.perf_counter() - started) * 1000
    if done.returncode != 0:
        raise LabError(f"{' '.join(cmd)} exited {done.returncode}: {done.stdout} {done.stderr}")
    return elapsed


def cni_config(socket: str, address: str, netns: str) -> str:
    prev = {
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "sandbox": netns}],
        "ips": [{"address": f"{address}/16", "interface": 0}],
    }
    conf = {"cniVersion": "1.0.0", "name": NETWORK, "type": "resolver-cni", "socket": socket}
    return json.dumps({**conf, "prevResult": prev})


def cni_env(command: str, container: str, netns: str) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": container,
        "CNI_NETNS": netns,
        "CNI_IFNAME": "eth0",
        "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAME={container[:8]}",
        "CNI_PATH": str(ROOT / ".venv" / "bin"),
    }


def bundle(lab: Lab, container: str, netns: str) -> Path:
    path = lab.workdir / "bundles" / container
    (path / "rootfs" / "etc").mkdir(parents=True)
    (path / "rootfs" / "etc" / "resolv.conf").write_text("nameserver 192.0.2.53\n")
    config = {
        "ociVersion": "1.0.2",
        "hostname": container[:12],
        "root": {"path": "rootfs"},
        "linux": {"namespaces": [{"type": "network", "path": f"/run/netns/{netns}"}]},
    }
    (path / "config.json").write_text(json.dumps(config))
    return path


def oci_state(container: str, status: str, pid: int | None, bundle_dir: Path) -> str:
    return json.dumps(
        {
            "ociVersion": "1.0.2",
            "id": container,
            "status": status,
            "pid": pid,
            "bundle": str(bundle_dir),
            "annotations": {"io.resolver.networks": NETWORK},
        }
    )


def one_run(lab: Lab, count: int, run_index: int) -> AdapterRun:
    result = AdapterRun(count)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESOLVER_")}
    with lab.scope():
        names = lab.add_namespaces(2 * count)
        addresses = [f"10.121.{i // 250}.{i % 250 + 1}" for i in range(2 * count)]
        for name, address in zip(names, addresses, strict=True):
            run(["ip", "-n", name, "addr", "add", f"{address}/32", "dev", "lo"])
        cni_names, oci_names = names[:count], names[count:]
        sleepers = [lab.spawn(["sleep", "600"], "sleepers.log", ns) for ns in oci_names]
        daemon = Daemon(lab, f"adapters-{run_index}")
        daemon.network(NETWORK)
        hook_env = {**env, "RESOLVER_SOCKET": daemon.socket}
        for i, ns in enumerate(cni_names):
            result.ms["python_start"].append(timed([sys.executable, "-c", "pass"], "", env))
            container = f"{run_index:02d}{i:06d}".ljust(64, "c")
            conf = cni_config(daemon.socket, addresses[i], f"/run/netns/{ns}")
            add = timed([script("resolver-cni")], conf, cni_env("ADD", container, f"/run/netns/{ns}"))
            result.ms["cni_add"].append(add)
        for i, ns in enumerate(cni_names):
            container = f"{run_index:02d}{i:06d}".ljust(64, "c")
            conf = cni_config(daemon.socket, addresses[i], f"/run/netns/{ns}")
            result.ms["cni_del"].append(
                timed([script("resolver-cni")], conf, cni_env("DEL", container, f"/run/netns/{ns}"))
            )
        hook = [script("resolver-oci-hook")]
        for i, (ns, sleeper) in enumerate(zip(oci_names, sleepers, strict=True)):
            container = f"{run_index:02d}{i:06d}".ljust(64, "d")
            wait_for(functools.partial(_in_netns, sleeper.pid, ns), 5, f"a process in {ns}")
            state = oci_state(container, "creating", sleeper.pid, bundle(lab, container, ns))
            result.ms["oci_create"].append(timed(hook, state, hook_env))
        for i in range(count):
            container = f"{run_index:02d}{i:06d}".ljust(64, "d")
            state = oci_state(container, "stopped", None, lab.workdir / "bundles" / container)
            result.ms["oci_poststop"].append(timed(hook, state, hook_env))
        left = daemon.api("GET", "/v1/status")["endpoints"]
        if left != 0:
            raise LabError(f"{left} endpoints are still registered after every DEL and poststop")
    return result


def _in_netns(pid: int, netns: str) -> bool:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(f"/run/netns/{netns}").st_ino
    except OSError:
        return False


def adapters(lab: Lab, count: int, runs: int) -> list[AdapterRun]:
    return [one_run(lab, count, r) for r in range(runs)]
