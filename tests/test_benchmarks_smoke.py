"""The benchmark harness works: one tiny run of `python -m benchmarks` (local names, 1 s, 1 run, 50
endpoints) against this daemon, dnsmasq and aardvark-dns gives every figure for every server, the query
mix it promises, no lost query, a JSON document, a PNG chart, and leaves no namespace behind. Speed itself
is never asserted. Plus the pure parts: query files, dnsperf output parsing, target checks.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks import dataset, load, report, run
from benchmarks.lab import LabError
from benchmarks.scenarios import AARDVARK, DNSMASQ_HOSTS, RESOLVER

REPO = Path(__file__).resolve().parent.parent
FIELDS = (
    "qps",
    "avg_ms",
    "p50_ms",
    "p99_ms",
    "cpu_us",
    "lost",
    "sent",
    "completed",
    "qps_ratio",
    "cpu_ratio",
)


def _lacking() -> list[str]:
    lacking = [] if os.geteuid() == 0 else ["root"]
    lacking += [t for t in ("ip", "dig", "dnsperf", "dnsmasq", "taskset") if shutil.which(t) is None]
    if not os.access("/usr/lib/podman/aardvark-dns", os.X_OK):
        lacking.append("aardvark-dns")
    return lacking


def _namespaces(prefix: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(prefix)]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    lacking = _lacking()
    if lacking:
        pytest.skip(f"the benchmark smoke test needs {', '.join(lacking)}")
    out = tmp_path_factory.mktemp("bench")
    prefix = f"rt6s{secrets.token_hex(2)}-"
    cmd = [sys.executable, "-m", "benchmarks", "--quick", "-s", "local", "--seconds", "1", "--runs", "1"]
    cmd += ["--latency-seconds", "1", "--endpoints", "50", "--out", str(out), "--prefix", prefix]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=240, check=False)
    assert result.returncode == 0, f"benchmark failed:\n{result.stdout}\n{result.stderr[-4000:]}"
    return {
        "doc": json.loads((out / "bench.json").read_text()),
        "png": (out / "bench.png").read_bytes(),
        "stdout": result.stdout,
        "leftover": _namespaces(prefix),
    }


@pytest.mark.netns
def test_every_server_has_every_figure(tiny_run: dict[str, Any]) -> None:
    local = tiny_run["doc"]["results"]["local"]
    rows = {r["server"]: r for r in local["rows"]}
    assert list(rows) == [RESOLVER, DNSMASQ_HOSTS, AARDVARK]
    for server, row in rows.items():
        missing = [f for f in FIELDS if not isinstance(row[f], int | float)]
        assert not missing, f"{server} lacks {missing}"
        assert row["qps"] > 0 and row["completed"] > 0 and row["cpu_us"] > 0, server
        assert 0 < row["p50_ms"] <= row["p99_ms"], server
        assert len(row["runs"]) == 1
    assert rows[DNSMASQ_HOSTS]["qps_ratio"] == pytest.approx(1.0)
    assert rows[RESOLVER]["qps_ratio"] == pytest.approx(rows[RESOLVER]["qps"] / rows[DNSMASQ_HOSTS]["qps"])


@pytest.mark.netns
def test_no_query_is_lost_and_the_mix_is_answered_as_designed(tiny_run: dict[str, Any]) -> None:
    for row in tiny_run["doc"]["results"]["local"]["rows"]:
        run = row["runs"][0]
        assert row["lost"] == 0, row["server"]
        assert set(run["rcodes"]) == {"NOERROR", "NXDOMAIN"}, (row["server"], run["rcodes"])
        nxdomain = run["rcodes"]["NXDOMAIN"] / run["completed"]
        assert 0.05 < nxdomain < 0.15, (row["server"], nxdomain)  # 10% of the names do not exist


@pytest.mark.netns
def test_targets_chart_table_and_cleanup(tiny_run: dict[str, Any]) -> None:
    targets = {t["target"]: t for t in tiny_run["doc"]["targets"]}
    assert len(targets) == 5 and all(t["target"].startswith("local:") for t in targets.values())
    assert all(isinstance(t["met"], bool) and t["value"] is not None for t in targets.values())
    assert tiny_run["png"].startswith(b"\x89PNG\r\n\x1a\n") and len(tiny_run["png"]) > 5000
    assert "QPS ratio" in tiny_run["stdout"] and AARDVARK in tiny_run["stdout"]
    assert tiny_run["doc"]["options"]["runs"] == 1 and tiny_run["doc"]["commit"] != "unknown"
    assert tiny_run["leftover"] == []


# ---- the pure parts -------------------------------------------------------------------------------------


def test_local_query_mix(tmp_path: Path) -> None:
    eps = dataset.endpoints(200)
    lines = dataset.local_queries(tmp_path / "q", eps, lines=4000).read_text().splitlines()
    kinds = {"A": 0, "AAAA": 0, "PTR": 0, "missing": 0}
    for line in lines:
        name, qtype = line.split()
        kinds["missing" if name.startswith("missing") else qtype] += 1
    assert len(lines) == 4000
    for kind, share in (("A", 0.45), ("AAAA", 0.25), ("PTR", 0.20), ("missing", 0.10)):
        assert abs(kinds[kind] / 4000 - share) < 0.03, kind
    assert len({e.ipv4 for e in eps}) == 200 and dataset.GATEWAY not in {e.ipv4 for e in eps}


def test_miss_files_never_repeat_a_name_within_or_across_runs(tmp_path: Path) -> None:
    first = dataset.miss_queries(tmp_path / "a", 25000, run=0).read_text().splitlines()
    second = dataset.miss_queries(tmp_path / "b", 25000, run=1).read_text().splitlines()
    assert len(set(first)) == 25000 and not set(first) & set(second)


DNSPERF_OUTPUT = """
Statistics:

  Queries sent:         120000
  Queries completed:    119990 (99.99%)
  Queries lost:         10 (0.01%)

  Response codes:       NOERROR 107991 (90.00%), NXDOMAIN 11999 (10.00%)
  Average packet size:  request 36, response 52
  Run time (s):         1.000000
  Queries per second:   119990.000000

  Average Latency (s):  0.000800 (min 0.000020, max 0.004000)
  Latency StdDev (s):   0.000100
"""


def test_dnsperf_statistics_are_read() -> None:
    m = load.parse(DNSPERF_OUTPUT)
    assert (m.sent, m.completed, m.lost) == (120000, 119990, 10)
    assert m.qps == pytest.approx(119990) and m.avg_ms == pytest.approx(0.8)
    assert m.rcodes == {"NOERROR": 107991, "NXDOMAIN": 11999}
    with pytest.raises(load.LabError):
        load.parse("dnsperf: error: no such file")


@pytest.mark.parametrize(
    ("ours", "anchor", "met"),
    [(150_000.0, 100_000.0, True), (100_000.0, 100_000.0, True), (90_000.0, 100_000.0, False)],
)
def test_qps_target_against_dnsmasq(ours: float, anchor: float, met: bool) -> None:
    rows = [{"server": RESOLVER, "qps": ours}, {"server": DNSMASQ_HOSTS, "qps": anchor}]
    checked = report.TARGETS[0].check({"local": {"rows": rows}})
    assert checked is not None and checked["met"] is met and checked["value"] == pytest.approx(ours / anchor)


def test_a_scenario_not_run_has_no_targets_and_a_missing_figure_is_missed() -> None:
    assert report.targets({}) == []
    rows = [{"server": RESOLVER, "p99_ms": None}, {"server": DNSMASQ_HOSTS, "p99_ms": 0.2}]
    checked = report.TARGETS[2].check({"local": {"rows": rows}})
    assert checked is not None and checked["met"] is False and checked["value"] is None


def test_a_failing_scenario_is_reported_and_the_others_still_run(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def fake(_lab: object, name: str, _opts: object) -> dict[str, Any]:
        if name == "tcp":
            raise LabError("dnsmasq did not start")
        return {"name": name, "rows": []}

    monkeypatch.setattr(run, "run_scenario", fake)
    monkeypatch.setattr(run.tempfile, "tempdir", str(tmp_path))
    args = run.parse_args(["-s", "local,tcp,adapters", "--prefix", "rt6x-"])
    results, failed = run.measure(args, run.options(args))
    assert list(results) == ["local", "adapters"] and failed == {"tcp": "dnsmasq did not start"}
    lines = report.failure_lines({"failed": failed})
    assert lines == ["FAILED scenario tcp: dnsmasq did not start"]


@pytest.mark.parametrize("argv", [["--seconds", "0"], ["--runs", "-1"], ["-s", "local,nosuch"], ["-s", ","]])
def test_bad_options_are_usage_errors(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        run.parse_args(argv)
    assert exc.value.code == 2
