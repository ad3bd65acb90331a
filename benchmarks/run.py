"""The one benchmark command: every scenario for this daemon and, in the same run with the same query files
and pinning, for dnsmasq and aardvark-dns 1.4; a table with ratios to dnsmasq, JSON, a PNG chart and the
table in benchmarks/README.md.

  sudo .venv/bin/python -m benchmarks                     # everything, 3 runs of 10 s (about 12 minutes)
  sudo .venv/bin/python -m benchmarks --quick             # 1 run of 2 s, smaller scale: a check, not a figure
  sudo .venv/bin/python -m benchmarks -s local,scale --runs 5 --seconds 12

Scenarios: local, fwd-hit, fwd-miss, spread, scale, tcp, adapters (benchmarks/scenarios.py, scale.py,
adapters.py).
Servers run pinned to CPU 0, dnsperf (and the scale harness) to CPU 1, everything inside namespaces named
rt6-* that the run makes and removes. Missing tools are installed by ./scripts/setup (Debian packages).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import report, scenarios
from benchmarks.adapters import adapters
from benchmarks.lab import Lab, LabError
from benchmarks.scale import scale
from benchmarks.servers import ROOT, missing_tools
from resolver.control.client import ControlError

ALL = ("local", "fwd-hit", "fwd-miss", "spread", "tcp", "adapters", "scale")
"""Scale runs last: the kernel tears its 1,000 namespaces down for a while after, which slowed every
process start of the adapters scenario by a third when that came after it."""
RESULTS = ROOT / "benchmarks" / "results"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "-s", "--scenarios", default=",".join(ALL), help="comma-separated, from: " + ", ".join(ALL)
    )
    parser.add_argument("--seconds", type=float, help="length of one dnsperf run (default 10; quick 2)")
    parser.add_argument(
        "--runs", type=int, help="runs per figure, the median is reported (default 3; quick 1)"
    )
    parser.add_argument("--latency-seconds", type=float, help="length of the fixed-rate p99 run (default 4)")
    parser.add_argument("--endpoints", type=int, default=1000, help="endpoints on the local network")
    parser.add_argument("--spread", type=int, help="sandboxes in the spread scenario (default 100; quick 10)")
    parser.add_argument(
        "--sandboxes", type=int, help="sandboxes in the scale scenario (default 1000; quick 100)"
    )
    parser.add_argument(
        "--containers", type=int, help="containers in the adapters scenario (default 30; quick 5)"
    )
    parser.add_argument("--tcp-per-conn", type=int, default=20, help="queries per TCP connection")
    parser.add_argument(
        "--quick", action="store_true", help="short runs: checks the harness, not the figures"
    )
    parser.add_argument("--out", type=Path, help="directory for JSON and chart (default benchmarks/results)")
    parser.add_argument("--no-readme", action="store_true", help="leave benchmarks/README.md alone")
    parser.add_argument("--no-chart", action="store_true", help="write no PNG chart")
    parser.add_argument("--prefix", default="rt6-", help="prefix of the namespaces the run makes")
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(ALL))
    if unknown or not chosen:
        parser.error(f"unknown scenario {', '.join(unknown)}; choose from {', '.join(ALL)}")
    args.scenarios = [s for s in ALL if s in chosen]
    sizes = (
        "seconds",
        "runs",
        "latency_seconds",
        "endpoints",
        "spread",
        "sandboxes",
        "containers",
        "tcp_per_conn",
    )
    for size in sizes:
        if getattr(args, size) is not None and getattr(args, size) <= 0:
            parser.error(f"--{size.replace('_', '-')} must be positive")
    return args


def options(args: argparse.Namespace) -> scenarios.Options:
    quick = args.quick

    def pick(value: Any, full: Any, short: Any) -> Any:
        return value if value is not None else (short if quick else full)

    return scenarios.Options(
        seconds=pick(args.seconds, 10.0, 2.0),
        runs=pick(args.runs, 3, 1),
        latency_seconds=pick(args.latency_seconds, 4.0, 1.0),
        endpoints=args.endpoints,
        spread=pick(args.spread, 100, 10),
        sandboxes=pick(args.sandboxes, 1000, 100),
        containers=pick(args.containers, 30, 5),
        tcp_per_conn=args.tcp_per_conn,
    )


def commit() -> str:
    def git(*cmd: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), *cmd], capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def ensure_tools() -> None:
    if os.geteuid() != 0:
        sys.exit("the benchmark needs root (network namespaces)")
    if missing_tools():
        subprocess.run([str(ROOT / "scripts" / "setup")], check=False)
    if lacking := missing_tools():
        sys.exit(f"missing {', '.join(lacking)}: ./scripts/setup could not install them")


def run_scenario(lab: Lab, name: str, opts: scenarios.Options) -> dict[str, Any]:
    if name == "scale":
        return report.scale_json(scale(lab, opts.sandboxes, opts.runs))
    if name == "adapters":
        return report.adapters_json(adapters(lab, opts.containers, opts.runs))
    return report.scenario_json(scenarios.THROUGHPUT[name](lab, opts))


def measure(args: argparse.Namespace, opts: scenarios.Options) -> tuple[dict[str, Any], dict[str, str]]:
    """Every chosen scenario; one that fails is reported (and the exit status is 1), the others still run."""
    results: dict[str, Any] = {}
    failed: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="rt6-bench-") as tmp, Lab(Path(tmp), args.prefix) as lab:
        for name in args.scenarios:
            print(f"== {name}", file=sys.stderr, flush=True)
            try:
                results[name] = run_scenario(lab, name, opts)
            except (LabError, ControlError, subprocess.TimeoutExpired) as exc:
                print(f"== {name} failed: {exc}", file=sys.stderr, flush=True)
                failed[name] = str(exc)
    return results, failed


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    opts = options(args)
    ensure_tools()
    out = args.out or (RESULTS / "quick" if args.quick else RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    results, failed = measure(args, opts)
    doc: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit(),
        "command": "python -m benchmarks " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {
            "cpus": os.cpu_count(),
            "kernel": platform.release(),
            "python": platform.python_version(),
        },
        "options": vars(opts),
        "results": results,
        "failed": failed,
    }
    doc["targets"] = report.targets(results)
    report.write_json(out / "bench.json", doc)
    chart_path = None if args.no_chart else out / "bench.png"
    if chart_path is not None:
        report.chart(chart_path, doc)
    print(report.text(doc))
    print(f"\nwrote {out / 'bench.json'}" + (f" and {chart_path}" if chart_path else ""))
    if not args.no_readme and not args.quick:
        relative = os.path.relpath(chart_path, ROOT / "benchmarks") if chart_path else None
        report.update_readme(ROOT / "benchmarks" / "README.md", report.markdown(doc, relative))
        print("updated benchmarks/README.md")
    return 1 if failed else 0
