"""What a benchmark run reports: the median of the runs for every figure, ratios to the scenario's anchor
(dnsmasq), the issue's targets met or missed, as a text table, as JSON, as a PNG chart and as the
markdown block of benchmarks/README.md (between the `bench:start` and `bench:end` markers).
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.adapters import OPERATIONS, AdapterRun
from benchmarks.scale import ScaleRun
from benchmarks.scenarios import (
    AARDVARK,
    DNSMASQ_CACHE,
    DNSMASQ_HOSTS,
    DNSMASQ_NOCACHE,
    RESOLVER,
    Row,
    Scenario,
)

FIGURES = ("qps", "avg_ms", "p50_ms", "p99_ms", "cpu_us", "lost", "sent", "completed")
SUMMARIES = ("scale", "adapters")  # results that are not a table of servers
MARK_START = "<!-- bench:start -->"
MARK_END = "<!-- bench:end -->"


def median(values: list[Any]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def row_figures(row: Row) -> dict[str, Any]:
    figures: dict[str, Any] = {k: median([getattr(m, k) for m in row.runs]) for k in FIGURES}
    figures["lost"] = max(m.lost for m in row.runs) if row.runs else None  # the worst run, not the median
    return figures


def ratio(value: float | None, anchor: float | None) -> float | None:
    if value is None or not anchor:
        return None
    return value / anchor


def scenario_json(scenario: Scenario) -> dict[str, Any]:
    rows = {row.server: row_figures(row) for row in scenario.rows}
    anchor = rows[scenario.anchor]
    out = []
    for row in scenario.rows:
        figures = rows[row.server]
        out.append(
            {
                "server": row.server,
                **figures,
                "qps_ratio": ratio(figures["qps"], anchor["qps"]),
                "cpu_ratio": ratio(figures["cpu_us"], anchor["cpu_us"]),
                "p99_ratio": ratio(figures["p99_ms"], anchor["p99_ms"]),
                "note": row.note,
                "runs": [m.as_dict() for m in row.runs],
            }
        )
    return {"name": scenario.name, "title": scenario.title, "anchor": scenario.anchor, "rows": out}


def scale_json(runs: list[ScaleRun]) -> dict[str, Any]:
    summaries = [r.summary() for r in runs]
    keys = summaries[0].keys()
    return {
        **{k: median([s[k] for s in summaries]) for k in keys},
        "unanswered": max(s["unanswered"] for s in summaries),
        "failed_joins": max(s["failed_joins"] for s in summaries),
        "failures": [msg for r in runs for msg in r.failed_joins][:10],
        "runs": summaries,
    }


def adapters_json(runs: list[AdapterRun]) -> dict[str, Any]:
    summaries = [r.summary() for r in runs]
    return {**{k: median([s[k] for s in summaries]) for k in summaries[0]}, "runs": summaries}


@dataclass
class Target:
    text: str
    scenario: str
    value: Callable[[dict[str, Any]], float | None]
    limit: float
    at_least: bool

    def check(self, results: dict[str, Any]) -> dict[str, Any] | None:
        if self.scenario not in results:
            return None
        try:
            value = self.value(results)
        except (KeyError, TypeError, ZeroDivisionError):
            value = None
        met = value is not None and (value >= self.limit if self.at_least else value <= self.limit)
        return {"target": self.text, "value": value, "limit": self.limit, "met": met}


def _row(results: dict[str, Any], scenario: str, server: str) -> dict[str, Any]:
    return next(r for r in results[scenario]["rows"] if r["server"] == server)


def _ours(scenario: str, key: str) -> Callable[[dict[str, Any]], Any]:
    return lambda res: _row(res, scenario, RESOLVER)[key]


def _vs(scenario: str, other: str, key: str) -> Callable[[dict[str, Any]], Any]:
    return lambda res: _row(res, scenario, RESOLVER)[key] / _row(res, scenario, other)[key]


def _spread_vs(res: dict[str, Any]) -> float:
    one, many = res["spread"]["rows"]
    return float(many["qps"] / one["qps"])


def _scale_failures(res: dict[str, Any]) -> float:
    return float(res["scale"]["unanswered"] + res["scale"]["failed_joins"])


TARGETS = [
    Target("local: QPS >= 1.0x dnsmasq", "local", _vs("local", DNSMASQ_HOSTS, "qps"), 1.0, True),
    Target("local: CPU/query <= 1.2x dnsmasq", "local", _vs("local", DNSMASQ_HOSTS, "cpu_us"), 1.2, False),
    Target("local: p99 <= 1.5x dnsmasq", "local", _vs("local", DNSMASQ_HOSTS, "p99_ms"), 1.5, False),
    Target("local: lost queries = 0", "local", _ours("local", "lost"), 0, False),
    Target("local: QPS >= 3x aardvark-dns", "local", _vs("local", AARDVARK, "qps"), 3.0, True),
    Target(
        "fwd-hit: QPS >= 0.8x dnsmasq (cache)", "fwd-hit", _vs("fwd-hit", DNSMASQ_CACHE, "qps"), 0.8, True
    ),
    Target(
        "fwd-miss: QPS >= 1.0x dnsmasq (no cache)",
        "fwd-miss",
        _vs("fwd-miss", DNSMASQ_NOCACHE, "qps"),
        1.0,
        True,
    ),
    Target("spread: QPS within 10% of one sandbox", "spread", _spread_vs, 0.9, True),
    Target(
        "scale: join-to-answer median <= 5 ms",
        "scale",
        lambda r: r["scale"]["first_answer_median_ms"],
        5,
        False,
    ),
    Target(
        "scale: join-to-answer p99 <= 20 ms", "scale", lambda r: r["scale"]["first_answer_p99_ms"], 20, False
    ),
    Target("scale: all joins <= 5 s", "scale", lambda r: r["scale"]["total_s"], 5, False),
    Target("scale: no join failed or went unanswered", "scale", _scale_failures, 0, False),
    Target(
        "scale: RSS <= 20 KiB per sandbox", "scale", lambda r: r["scale"]["rss_kib_per_sandbox"], 20, False
    ),
    Target("adapters: CNI ADD <= 50 ms", "adapters", lambda r: r["adapters"]["cni_add_median_ms"], 50, False),
    Target(
        "adapters: OCI hook createRuntime <= 50 ms",
        "adapters",
        lambda r: r["adapters"]["oci_create_median_ms"],
        50,
        False,
    ),
]


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    return [checked for t in TARGETS if (checked := t.check(results)) is not None]


# ---- text -----------------------------------------------------------------------------------------------


def _fmt(value: Any, spec: str, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:{spec}}{suffix}"


HEADER = [
    "scenario",
    "server",
    "QPS",
    "avg ms",
    "p99 ms",
    "CPU us/q",
    "lost",
    "QPS ratio",
    "CPU ratio",
    "p99 ratio",
]


def table_rows(results: dict[str, Any]) -> list[list[str]]:
    rows = []
    for name, scenario in results.items():
        if name in SUMMARIES:
            continue
        for r in scenario["rows"]:
            rows.append(
                [
                    name,
                    r["server"] + (" *" if r["note"] else ""),
                    _fmt(r["qps"], ",.0f"),
                    _fmt(r["avg_ms"], ".3f"),
                    _fmt(r["p99_ms"], ".3f"),
                    _fmt(r["cpu_us"], ".1f"),
                    _fmt(r["lost"], "d"),
                    _fmt(r["qps_ratio"], ".2f", "x"),
                    _fmt(r["cpu_ratio"], ".2f", "x"),
                    _fmt(r["p99_ratio"], ".2f", "x"),
                ]
            )
    return rows


def scale_lines(scale: dict[str, Any]) -> list[str]:
    return [
        f"scale: {scale['sandboxes']:.0f} sandboxes joined one after another: join-to-first-answer median "
        f"{scale['first_answer_median_ms']:.2f} ms, p99 {scale['first_answer_p99_ms']:.2f} ms; all joins "
        f"{scale['total_s']:.2f} s ({scale['cpu_ms_per_join']:.2f} ms daemon CPU per join); daemon RSS "
        f"+{scale['rss_kib_per_sandbox']:.1f} KiB and "
        f"+{scale['fds_per_sandbox']:.2f} fds per sandbox; unanswered {scale['unanswered']:.0f}, "
        f"failed joins {scale['failed_joins']:.0f}"
    ]


def adapter_lines(adapters: dict[str, Any]) -> list[str]:
    names = {
        "python_start": "python -c pass",
        "cni_add": "resolver-cni ADD",
        "cni_del": "resolver-cni DEL",
        "oci_create": "resolver-oci-hook createRuntime",
        "oci_poststop": "resolver-oci-hook poststop",
    }
    parts = [
        f"{names[op]} {adapters[f'{op}_median_ms']:.1f} ms (p99 {adapters[f'{op}_p99_ms']:.1f})"
        for op in OPERATIONS
    ]
    return [f"adapters, {adapters['containers']:.0f} containers, median wall time: " + "; ".join(parts)]


def target_lines(checked: list[dict[str, Any]]) -> list[str]:
    return [
        f"{'met   ' if t['met'] else 'MISSED'} {t['target']} (measured {_fmt(t['value'], '.2f')})"
        for t in checked
    ]


def failure_lines(doc: dict[str, Any]) -> list[str]:
    return [f"FAILED scenario {name}: {message.splitlines()[0]}" for name, message in doc["failed"].items()]


def text(doc: dict[str, Any]) -> str:
    rows = table_rows(doc["results"])
    widths = [max(len(r[i]) for r in [HEADER, *rows]) for i in range(len(HEADER))]
    lines = [
        "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in [HEADER, *rows]
    ]
    if not rows:
        lines = []
    if "scale" in doc["results"]:
        lines += ["", *scale_lines(doc["results"]["scale"])]
    if "adapters" in doc["results"]:
        lines += ["", *adapter_lines(doc["results"]["adapters"])]
    lines += ["", *target_lines(doc["targets"]), *failure_lines(doc)]
    return "\n".join(lines)


def markdown(doc: dict[str, Any], chart: str | None) -> str:
    rows = table_rows(doc["results"])
    out = [
        MARK_START,
        f"Run on {doc['date']} at commit `{doc['commit']}` (`{doc['command']}`); every figure is the median "
        f"of {doc['options']['runs']} runs of {doc['options']['seconds']:g} s; ratios are to the scenario's "
        "anchor (dnsmasq); p99 at a fixed 5k queries/s.",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "|".join("---" for _ in HEADER) + "|",
        *("| " + " | ".join(r) + " |" for r in rows),
        "",
    ]
    for name, scenario in doc["results"].items():
        if name not in SUMMARIES:
            out.append(f"- **{name}**: {scenario['title']}")
    if "scale" in doc["results"]:
        out += ["", *scale_lines(doc["results"]["scale"])]
    if "adapters" in doc["results"]:
        out += ["", *adapter_lines(doc["results"]["adapters"])]
    out += ["", "Targets:", "", *(f"- {line}" for line in target_lines(doc["targets"]))]
    out += [f"- {line}" for line in failure_lines(doc)]
    if chart:
        out += ["", f"![benchmark chart]({chart})"]
    out.append(MARK_END)
    return "\n".join(out)


def update_readme(readme: Path, block: str) -> None:
    current = readme.read_text()
    start, end = current.find(MARK_START), current.find(MARK_END)
    if start < 0 or end < start:
        raise ValueError(f"{readme} has no {MARK_START} ... {MARK_END} block")
    readme.write_text(current[:start] + block + current[end + len(MARK_END) :])


# ---- files ----------------------------------------------------------------------------------------------


def write_json(path: Path, doc: dict[str, Any]) -> None:
    path.write_text(json.dumps(doc, indent=2) + "\n")


def _latencies(results: dict[str, Any]) -> list[tuple[str, float, float | None]]:
    """(label, milliseconds, target or None) of the scale and adapter figures, for the chart."""
    out: list[tuple[str, float, float | None]] = []
    if "scale" in results:
        scale = results["scale"]
        out += [
            ("join to first answer, median", scale["first_answer_median_ms"], 5.0),
            ("join to first answer, p99", scale["first_answer_p99_ms"], 20.0),
        ]
    if "adapters" in results:
        adapters = results["adapters"]
        out += [
            ("python -c pass", adapters["python_start_median_ms"], None),
            ("resolver-cni ADD", adapters["cni_add_median_ms"], 50.0),
            ("resolver-oci-hook createRuntime", adapters["oci_create_median_ms"], 50.0),
        ]
    return out


def chart(path: Path, doc: dict[str, Any]) -> None:
    """Queries per second and CPU per query of every server in every scenario, side by side; below them
    the join and adapter latencies against their targets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = [(n, s) for n, s in doc["results"].items() if n not in SUMMARIES]
    latencies = _latencies(doc["results"])
    columns = max(len(scenarios), 1)
    rows = 3 if latencies else 2
    fig, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3.5 * rows), squeeze=False)
    for col, (name, scenario) in enumerate(scenarios):
        labels = [r["server"].replace(", ", ",\n") for r in scenario["rows"]]
        colors = ["#2a7ab9" if r["server"].startswith(RESOLVER) else "#999999" for r in scenario["rows"]]
        for row, key, unit in ((0, "qps", "queries/s"), (1, "cpu_us", "server CPU us/query")):
            ax = axes[row][col]
            values = [r[key] or 0 for r in scenario["rows"]]
            bars = ax.bar(range(len(values)), values, color=colors)
            ratios = [r["qps_ratio" if key == "qps" else "cpu_ratio"] for r in scenario["rows"]]
            ax.bar_label(bars, [_fmt(x, ".2f", "x") for x in ratios], fontsize=7)
            ax.set_xticks(range(len(values)), labels, fontsize=7, rotation=30, ha="right")
            ax.set_ylabel(unit, fontsize=8)
            ax.tick_params(axis="y", labelsize=7)
            if row == 0:
                ax.set_title(name, fontsize=10)
    if latencies:
        for ax in axes[2][1:]:
            ax.remove()
        gs = axes[2][0].get_gridspec()
        axes[2][0].remove()
        ax = fig.add_subplot(gs[2, :])
        names = [n for n, _, _ in latencies]
        bars = ax.barh(range(len(latencies)), [v for _, v, _ in latencies], color="#2a7ab9")
        notes = [f"{v:.1f} ms" + (f" (target {t:g})" if t else " (reference)") for _, v, t in latencies]
        ax.bar_label(bars, notes, fontsize=7)
        ax.set_yticks(range(len(latencies)), names, fontsize=8)
        ax.set_xlabel("milliseconds (median unless marked)", fontsize=8)
        ax.invert_yaxis()
    fig.suptitle(f"DNS benchmark {doc['date']} ({doc['commit']})", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
