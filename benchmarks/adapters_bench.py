"""What the runtime adapters add to a container start, side by side with the runtime's own work.

  cni    a CNI chain driven like libcni (tests/integration/cnidriver.py) on one netns, ADD then DEL, N
         times: `bridge` + `host-local` alone against the same chain + `resolver-cni` (joining a running
         daemon), interleaved so that load drifts hit both alike. Reported: median wall time of ADD and DEL
         with and without, the difference (what the plugin adds), the plugin's own run and its CPU time.
  hook   `resolver-oci-hook` as podman runs it, on a real process in a netns with an address: the state
         JSON on stdin, the bundle's config.json; createRuntime (join) and poststop (leave), N times each.
         With --podman-runs K (default 5; 0 skips): `podman run --rm` of a busybox container with and
         without the annotation that triggers the hook (contained podman, tests/integration/podmanenv.py).
  floor  the interpreter start alone (`python -c pass`, the same venv), which both adapters pay.

Target: under 50 ms each. Wall times on a shared machine are noisy; CPU times are steadier.
Run as root from the repository:  .venv/bin/python -m benchmarks.adapters_bench [cni|hook|all] [--runs 15]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

from tests.integration.cnidriver import Chain

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = ROOT / ".venv" / "bin"
CNI_DIR = Path("/usr/lib/cni")
PREFIX = "rt5b"
CLK = os.sysconf("SC_CLK_TCK")


def run(*cmd: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in cmd], check=check, capture_output=True, text=True)


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def process_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def ms(seconds: float) -> str:
    return f"{seconds * 1000:7.1f} ms"


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall, CPU of the child processes) of one call."""
    cpu, started = children_cpu(), time.perf_counter()
    fn()
    return time.perf_counter() - started, children_cpu() - cpu


@contextlib.contextmanager
def daemon(workdir: Path) -> Iterator[tuple[Path, int]]:
    workdir.mkdir()
    (workdir / "resolv.conf").write_text("# benchmark: no upstreams\n")
    socket = workdir / "s.sock"
    log = open(workdir / "daemon.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [
            VENV_BIN / "resolver",
            "serve",
            "--socket",
            socket,
            "--state-dir",
            workdir / "state",
            "--host-resolv-conf",
            workdir / "resolv.conf",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while run(VENV_BIN / "resolver", "status", "--socket", socket, check=False).returncode != 0:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"the daemon did not start: {(workdir / 'daemon.log').read_text()}")
            time.sleep(0.1)
        yield socket, proc.pid
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


@contextlib.contextmanager
def netns() -> Iterator[str]:
    name = f"{PREFIX}-{secrets.token_hex(4)}"
    run("ip", "netns", "add", name)
    try:
        yield name
    finally:
        run("ip", "netns", "del", name, check=False)
        shutil.rmtree(f"/etc/netns/{name}", ignore_errors=True)


def interpreter_floor(runs: int) -> None:
    walls = [timed(lambda: run(VENV_BIN / "python", "-c", "pass"))[0] for _ in range(runs)]
    print(f"floor  python -c pass (this venv)             {ms(statistics.median(walls))}")


# ---- CNI -------------------------------------------------------------------------------------------------


def bench_cni(runs: int, tmp: Path) -> None:
    from tests.integration.test_cni import conflist, free_subnet

    bin_dir = tmp / "cni-bin"
    bin_dir.mkdir()
    (bin_dir / "resolver-cni").symlink_to(VENV_BIN / "resolver-cni")
    tag = secrets.token_hex(3)
    bridge = f"{PREFIX}br{tag}"
    forward = Path("/proc/sys/net/ipv4/ip_forward").read_text()
    try:
        with daemon(tmp / "daemon") as (socket, daemon_pid), netns() as ns:
            full = conflist(f"{PREFIX}n{tag}", bridge, free_subnet(), tmp, socket=str(socket))
            base = {**full, "plugins": full["plugins"][:1]}
            chains = {
                "without": Chain(base, [bin_dir, CNI_DIR], tmp),
                "with": Chain(full, [bin_dir, CNI_DIR], tmp),
            }
            results: dict[str, dict[str, list[float]]] = {
                k: {"add": [], "del": [], "cpu": []} for k in chains
            }
            daemon_cpu: list[float] = []
            for i in range(runs + 1):  # the first round warms caches and is dropped
                for label, chain in chains.items():
                    container = f"{PREFIX}{label}{i}"
                    before = process_cpu(daemon_pid)
                    add, add_cpu = timed(partial(chain.add, container, f"/var/run/netns/{ns}", "bench"))
                    delete, del_cpu = timed(partial(chain.delete, container, f"/var/run/netns/{ns}"))
                    if i == 0:
                        continue
                    if label == "with":
                        daemon_cpu.append(process_cpu(daemon_pid) - before)
                    results[label]["add"].append(add)
                    results[label]["del"].append(delete)
                    results[label]["cpu"].append(add_cpu + del_cpu)
            own = [t.seconds for t in chains["with"].timings if t.plugin == "resolver-cni"]
    finally:
        run("ip", "link", "del", bridge, check=False)
        Path("/proc/sys/net/ipv4/ip_forward").write_text(forward)
    med = {label: {k: statistics.median(v) for k, v in r.items()} for label, r in results.items()}
    print(f"cni    {runs} ADD+DEL rounds, bridge + host-local, one netns")
    for label in ("without", "with"):
        m = med[label]
        print(
            f"       {label:8s} resolver-cni: ADD {ms(m['add'])}  DEL {ms(m['del'])}  "
            f"plugin CPU per ADD+DEL {ms(m['cpu'])}"
        )
    added_add = med["with"]["add"] - med["without"]["add"]
    added_del = med["with"]["del"] - med["without"]["del"]
    print(
        f"       added by resolver-cni: ADD {ms(added_add)}  DEL {ms(added_del)}  "
        f"(CPU {ms(med['with']['cpu'] - med['without']['cpu'])} in the plugin, "
        f"{ms(statistics.median(daemon_cpu))} in the daemon per ADD+DEL)"
    )
    print(
        f"       resolver-cni run alone: median {ms(statistics.median(own))} per invocation; "
        f"ADD ratio with/without {med['with']['add'] / med['without']['add']:.2f}x"
    )


# ---- OCI hook ----------------------------------------------------------------------------------------------


def run_hook(hook: Path, socket: Path, state: dict[str, object]) -> None:
    subprocess.run(
        [hook, "--socket", str(socket)], input=json.dumps(state), text=True, check=True, capture_output=True
    )


def bench_hook(runs: int, podman_runs: int, tmp: Path) -> None:
    hook = VENV_BIN / "resolver-oci-hook"
    with daemon(tmp / "hookd") as (socket, _), netns() as ns:
        run("ip", "-n", ns, "link", "add", "d0", "type", "dummy")
        run("ip", "-n", ns, "addr", "add", "10.254.1.2/24", "dev", "d0")
        run("ip", "-n", ns, "link", "set", "d0", "up")
        run("ip", "-n", ns, "link", "set", "lo", "up")
        sleeper = subprocess.Popen(["ip", "netns", "exec", ns, "sleep", "600"])
        try:
            bundle = tmp / "bundle"
            bundle.mkdir()
            resolv = bundle / "resolv.conf"
            resolv.write_text("nameserver 10.254.1.1\n")
            config = {
                "hostname": "bench",
                "linux": {"namespaces": [{"type": "network", "path": f"/run/netns/{ns}"}]},
                "mounts": [{"destination": "/etc/resolv.conf", "type": "bind", "source": str(resolv)}],
                "annotations": {"io.resolver.networks": "bench"},
            }
            (bundle / "config.json").write_text(json.dumps(config))
            time.sleep(0.2)  # let `ip netns exec` exec sleep
            joins, leaves, cpus = [], [], []
            for i in range(runs + 1):
                state = {"ociVersion": "1.0.2", "id": f"bench{i}", "pid": sleeper.pid, "bundle": str(bundle)}

                join, join_cpu = timed(partial(run_hook, hook, socket, {**state, "status": "creating"}))
                leave, leave_cpu = timed(
                    partial(run_hook, hook, socket, {**state, "status": "stopped", "pid": None})
                )
                if i:
                    joins.append(join)
                    leaves.append(leave)
                    cpus.append(join_cpu + leave_cpu)
        finally:
            sleeper.terminate()
            sleeper.wait()
    print(f"hook   {runs} createRuntime + poststop runs on a live process in a netns")
    print(
        f"       createRuntime (join) {ms(statistics.median(joins))}  poststop (leave) "
        f"{ms(statistics.median(leaves))}  hook CPU per pair {ms(statistics.median(cpus))}"
    )
    if podman_runs > 0:
        bench_podman(podman_runs, tmp)


def bench_podman(runs: int, tmp: Path) -> None:
    from tests.integration import podmanenv
    from tests.integration.test_cni import free_subnet

    lacking = podmanenv.missing()
    if lacking:
        print(f"podman skipped: needs {', '.join(lacking)}")
        return
    forward = Path("/proc/sys/net/ipv4/ip_forward").read_text()
    pm = podmanenv.Podman(PREFIX)
    try:
        with daemon(tmp / "podmand") as (socket, _):
            pm.import_image()
            pm.write_hook(VENV_BIN / "resolver-oci-hook", ["--socket", str(socket)])
            net = pm.network(f"{PREFIX}pn{secrets.token_hex(3)}", str(free_subnet()))
            walls: dict[str, list[float]] = {"without": [], "with": []}
            for i in range(runs + 1):
                for label in walls:
                    extra = ["--annotation", "io.resolver.networks=bench"] if label == "with" else []
                    command = ["run", "--rm", "--network", net, "--cgroup-parent", pm.cgroup_parent, *extra]
                    wall, _ = timed(partial(pm, *command, podmanenv.IMAGE, "true"))
                    if i:
                        walls[label].append(wall)
    finally:
        pm.cleanup()
        Path("/proc/sys/net/ipv4/ip_forward").write_text(forward)
    without, with_hook = statistics.median(walls["without"]), statistics.median(walls["with"])
    print(
        f"podman {runs} `podman run --rm ... true` (runc, CNI bridge): without hook {ms(without)}, "
        f"with hook {ms(with_hook)}: added {ms(with_hook - without)} ({with_hook / without:.2f}x)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("mode", choices=("cni", "hook", "all"), nargs="?", default="all")
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--podman-runs", type=int, default=5)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("adapters_bench needs root (namespaces, bridges)")
    with tempfile.TemporaryDirectory(prefix=f"{PREFIX}-") as tmp:
        interpreter_floor(args.runs)
        if args.mode in ("cni", "all"):
            bench_cni(args.runs, Path(tmp))
        if args.mode in ("hook", "all"):
            bench_hook(args.runs, args.podman_runs, Path(tmp))


if __name__ == "__main__":
    main()
