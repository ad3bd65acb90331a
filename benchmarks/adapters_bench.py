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


def launcher(directory: Path, name: str, module: str) -> Path:
    """`name` as a plain (non-editable) install would run it: no editable-install finder in `site`.

    `pip install -e` makes every interpreter start import a finder (pathlib, urllib, ipaddress...); a
    regular install has the package on sys.path. `-S` drops `site` altogether, so this is a lower bound.
    """
    directory.mkdir(exist_ok=True)
    path = directory / name
    path.write_text(
        f"#!{VENV_BIN / 'python'} -S\nimport sys\nsys.path.insert(0, {str(ROOT)!r})\n"
        f"from {module} import main\nsys.exit(main())\n"
    )
    path.chmod(0o755)
    return path


def interpreter_floor(runs: int) -> None:
    for label, args in (("python -c pass", ["-c", "pass"]), ("python -S -c pass", ["-S", "-c", "pass"])):
        samples = [timed(partial(run, VENV_BIN / "python", *args)) for _ in range(runs)]
        wall, cpu = (statistics.median(x) for x in zip(*samples, strict=True))
        print(f"floor  {label:20s} (this venv): wall {ms(wall)}  CPU {ms(cpu)}")


# ---- CNI -------------------------------------------------------------------------------------------------


def bench_cni(runs: int, tmp: Path) -> None:
    from tests.integration.test_cni import conflist, free_subnet

    installed = tmp / "cni-installed"
    installed.mkdir()
    (installed / "resolver-cni").symlink_to(VENV_BIN / "resolver-cni")
    plain = tmp / "cni-plain"
    launcher(plain, "resolver-cni", "resolver.adapters.cni")
    tag = secrets.token_hex(3)
    bridge = f"{PREFIX}br{tag}"
    forward = Path("/proc/sys/net/ipv4/ip_forward").read_text()
    try:
        with daemon(tmp / "daemon") as (socket, daemon_pid), netns() as ns:
            full = conflist(f"{PREFIX}n{tag}", bridge, free_subnet(), tmp, socket=str(socket))
            base = {**full, "plugins": full["plugins"][:1]}
            chains = {
                "bridge + host-local": Chain(base, [CNI_DIR], tmp),
                "+ resolver-cni (pip -e)": Chain(full, [installed, CNI_DIR], tmp),
                "+ resolver-cni (plain)": Chain(full, [plain, CNI_DIR], tmp),
            }
            results: dict[str, dict[str, list[float]]] = {
                k: {"add": [], "del": [], "cpu": []} for k in chains
            }
            daemon_cpu: list[float] = []
            for i in range(runs + 1):  # the first round warms caches and is dropped
                for label, chain in chains.items():
                    container = f"{PREFIX}{i}{secrets.token_hex(4)}"
                    before = process_cpu(daemon_pid)
                    add, add_cpu = timed(partial(chain.add, container, f"/var/run/netns/{ns}", "bench"))
                    delete, del_cpu = timed(partial(chain.delete, container, f"/var/run/netns/{ns}"))
                    if i == 0:
                        continue
                    if chain is not chains["bridge + host-local"]:
                        daemon_cpu.append(process_cpu(daemon_pid) - before)
                    results[label]["add"].append(add)
                    results[label]["del"].append(delete)
                    results[label]["cpu"].append(add_cpu + del_cpu)
    finally:
        run("ip", "link", "del", bridge, check=False)
        Path("/proc/sys/net/ipv4/ip_forward").write_text(forward)
    med = {label: {k: statistics.median(v) for k, v in r.items()} for label, r in results.items()}
    base_m = med["bridge + host-local"]
    print(f"cni    {runs} ADD+DEL rounds on one netns (median; CPU = all plugin processes of ADD+DEL)")
    for label, m in med.items():
        added = (
            ""
            if m is base_m
            else (
                f"  added: ADD {ms(m['add'] - base_m['add'])} DEL {ms(m['del'] - base_m['del'])} "
                f"CPU {ms(m['cpu'] - base_m['cpu'])}  (ADD {m['add'] / base_m['add']:.1f}x)"
            )
        )
        print(f"       {label:24s} ADD {ms(m['add'])}  DEL {ms(m['del'])}  CPU {ms(m['cpu'])}{added}")
    print(f"       daemon CPU per join+leave {ms(statistics.median(daemon_cpu))}")


# ---- OCI hook ----------------------------------------------------------------------------------------------


def run_hook(hook: Path, socket: Path, state: dict[str, object]) -> None:
    subprocess.run(
        [hook, "--socket", str(socket)], input=json.dumps(state), text=True, check=True, capture_output=True
    )


def bench_hook(runs: int, podman_runs: int, tmp: Path) -> None:
    hooks = {
        "pip -e": VENV_BIN / "resolver-oci-hook",
        "plain": launcher(tmp / "hook-plain", "resolver-oci-hook", "resolver.adapters.oci_hook"),
    }
    with daemon(tmp / "hookd") as (socket, _), netns() as ns:
        run(
            "ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1"
        )  # no dummy driver here
        run("ip", "-n", ns, "addr", "add", "10.254.1.2/24", "dev", "eth0")
        run("ip", "-n", ns, "link", "set", "eth0", "up")
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
            samples: dict[str, dict[str, list[float]]] = {
                k: {"join": [], "leave": [], "cpu": []} for k in hooks
            }
            for i in range(runs + 1):
                for label, hook in hooks.items():
                    state = {
                        "ociVersion": "1.0.2",
                        "id": f"bench{i}",
                        "pid": sleeper.pid,
                        "bundle": str(bundle),
                    }
                    join, join_cpu = timed(partial(run_hook, hook, socket, {**state, "status": "creating"}))
                    leave, leave_cpu = timed(
                        partial(run_hook, hook, socket, {**state, "status": "stopped", "pid": None})
                    )
                    if i:
                        samples[label]["join"].append(join)
                        samples[label]["leave"].append(leave)
                        samples[label]["cpu"].append(join_cpu + leave_cpu)
        finally:
            sleeper.terminate()
            sleeper.wait()
    print(f"hook   {runs} createRuntime + poststop runs on a live process in a netns (median)")
    for label, m in samples.items():
        print(
            f"       {label:8s} createRuntime (join) {ms(statistics.median(m['join']))}  poststop (leave) "
            f"{ms(statistics.median(m['leave']))}  hook CPU per pair {ms(statistics.median(m['cpu']))}"
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
