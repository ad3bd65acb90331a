"""Operating the daemon: settings (file, environment, flags; unknown or mistyped keys refused), text and JSON
logs, SIGHUP reload, SIGTERM, Prometheus metrics, the inspecting commands (`query`, `inspect`, `status`,
`network ls`) and the TCP limits (connections per sandbox, idle timeout, broken frames).

A rejected query (here: class CH, answered REFUSED by the core) makes exactly one debug line that names
its outcome, `refused-class`; the tests read the log level the daemon runs at from those lines. The join
probe of the daemon is such a query too, so the tests count the lines a query adds, never the total.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pytest
from prometheus_client.parser import text_string_to_metric_families

from resolver.control.client import call

from .nstools import (
    LISTEN,
    NETNS_ETC,
    RESOLVER,
    Daemon,
    Namespaces,
    clean_env,
    dig,
    netns_python,
    run,
    stop_daemons,
    wait_until,
)

pytestmark = pytest.mark.netns

# ---- a daemon with a config file, environment and flags of the test's choosing -------------------------


class OpsDaemon(Daemon):
    """`resolver serve` with `--config FILE` (when `config` is given), extra RESOLVER_* variables and flags;
    no `--log-level` unless a flag says so, so the file and the environment decide."""

    def __init__(
        self,
        workdir: Path,
        config: str | None = None,
        env: dict[str, str] | None = None,
        flags: Sequence[str] = (),
    ) -> None:
        super().__init__(workdir)
        self.log_level = None
        self.config = workdir / "resolver.toml"
        self.use_config = config is not None
        if config is not None:
            self.config.write_text(config)
        self.env = dict(env or {})
        self.flags = list(flags)

    def command(self) -> list[str]:
        cmd = super().command()
        if self.use_config:
            cmd += ["--config", str(self.config)]
        cmd += self.flags
        if self.env:
            # `env` execs the daemon, so the pid stays the daemon's (Daemon.start passes clean_env()).
            cmd = ["env", *(f"{k}={v}" for k, v in self.env.items()), *cmd]
        return cmd

    def log(self) -> str:
        """What the current run wrote (stdout and stderr)."""
        return self.logs[-1].read_text(errors="replace")

    def log_lines(self, level: str) -> list[str]:
        """Lines of the text log at `level` (DEBUG, INFO, ...)."""
        return [line for line in self.log().splitlines() if line.split(" ", 3)[2:3] == [level]]

    def refused_lines(self) -> int:
        """Debug lines for rejected CH queries so far."""
        return sum("refused-class" in line for line in self.log_lines("DEBUG"))

    def sighup(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)


class OpsFactory(Protocol):
    def __call__(
        self, config: str | None = None, env: dict[str, str] | None = None, flags: Sequence[str] = ()
    ) -> OpsDaemon: ...


@pytest.fixture
def ops(netns: Namespaces, tmp_path: Path) -> Iterator[OpsFactory]:
    """Starts `OpsDaemon`s; stops them at teardown (before `netns` goes) and fails if one did not exit 0."""
    started: list[OpsDaemon] = []

    def start(
        config: str | None = None, env: dict[str, str] | None = None, flags: Sequence[str] = ()
    ) -> OpsDaemon:
        instance = OpsDaemon(tmp_path / f"ops{len(started)}", config, env, flags)
        started.append(instance)
        instance.start()
        return instance

    try:
        yield start
    finally:
        stop_daemons(started)


def joined_sandbox(d: Daemon, netns: Namespaces, address: str = "10.71.0.2") -> str:
    """A new namespace joined to a new network `n1` as `web` (alias `api`)."""
    ns = netns.add()
    d.ok("network", "create", "n1", "--domain", "ops.test")
    d.join("n1", ns, "0123456789abcdef", "web", "--alias", "api", "--ipv4", address)
    return ns


def ch_query(d: OpsDaemon, ns: str) -> int:
    """Send one CH-class query from `ns`; returns how many `refused-class` debug lines it added."""
    before = d.refused_lines()
    result = dig(ns, "-c", "CH", "web")
    assert result.status == "REFUSED", result.output
    time.sleep(0.2)  # the line is written right after the reply is sent; leave it time to land
    return d.refused_lines() - before


def assert_answers(ns: str, name: str = "web", address: str = "10.71.0.2") -> None:
    result = dig(ns, name)
    assert (result.status, result.addresses) == ("NOERROR", [address]), result.output


# ---- 1. settings refused at start ----------------------------------------------------------------------

BAD_CONFIGS = {
    "unknown-key": ("[tcp]\nidle_timeot = 3\n", ["idle_timeot", "[tcp]"]),
    "unknown-section": ("[tcpx]\nidle_timeout = 3\n", ["[tcpx]"]),
    "wrong-type": ('[upstream]\ntimeout = "fast"\n', ["[upstream] timeout", "'fast'"]),
    "bad-choice": ('[server]\nlisten_mode = "bridge"\n', ["[server] listen_mode", "'bridge'"]),
}


def _serve(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str, float]:
    sock = tmp_path / "s.sock"
    cmd = [RESOLVER, "serve", "--socket", str(sock), "--state-dir", str(tmp_path / "state"), *args]
    started = time.monotonic()
    result = run(cmd, timeout=20, env=clean_env(**(env or {})))
    elapsed = time.monotonic() - started
    assert not sock.exists(), "a refused configuration must not open the control socket"
    return result.returncode, result.stdout, result.stderr, elapsed


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_bad_config_file_exits_1_naming_the_key(tmp_path: Path, case: str) -> None:
    text, named = BAD_CONFIGS[case]
    config = tmp_path / "bad.toml"
    config.write_text(text)
    rc, out, err, elapsed = _serve(tmp_path, "--config", str(config))
    assert rc == 1, err
    assert elapsed < 5.0
    assert out == ""
    assert err.startswith(f"error: {config}"), err
    assert len(err.strip().splitlines()) == 1, f"one message line, not a traceback:\n{err}"
    for word in named:
        assert word in err, f"{word!r} not named in {err!r}"


def test_bad_environment_value_exits_1_naming_the_variable(tmp_path: Path) -> None:
    rc, out, err, elapsed = _serve(tmp_path, env={"RESOLVER_TCP_IDLE_TIMEOUT": "soon"})
    assert (rc, out) == (1, "")
    assert elapsed < 5.0
    assert err.startswith("error: environment RESOLVER_TCP_IDLE_TIMEOUT"), err
    assert "'soon'" in err


def test_unknown_log_level_exits_1_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[log]\nlevel = "verbose"\n')
    rc, _out, err, _elapsed = _serve(tmp_path, "--config", str(config))
    assert rc == 1
    assert err.startswith(f"error: {config} [log] level"), err
    assert "Traceback" not in err


# ---- 2. precedence: defaults < file < environment < flags --------------------------------------------


@pytest.mark.parametrize(
    ("env", "flags", "level"),
    [
        ({}, [], "WARNING"),
        ({"RESOLVER_LOG_LEVEL": "debug"}, [], "DEBUG"),
        ({"RESOLVER_LOG_LEVEL": "debug"}, ["--log-level", "info"], "INFO"),
    ],
    ids=["file", "env-over-file", "flag-over-env"],
)
def test_log_level_precedence(
    ops: OpsFactory, netns: Namespaces, env: dict[str, str], flags: list[str], level: str
) -> None:
    d = ops('[log]\nlevel = "warning"\n', env, flags)
    ns = joined_sandbox(d, netns)
    added = ch_query(d, ns)
    assert added == (1 if level == "DEBUG" else 0), d.log()
    infos = d.log_lines("INFO")
    if level == "WARNING":
        assert infos == [], "level warning from the file: no info lines"
    else:
        assert any("serving; control socket" in line for line in infos), d.log()
    if level != "DEBUG":
        assert d.log_lines("DEBUG") == []


# ---- 3. JSON logs ----------------------------------------------------------------------------------------

JSON_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def test_json_logs_every_line_is_an_object(ops: OpsFactory, netns: Namespaces) -> None:
    d = ops(flags=["--log-format", "json", "--log-level", "debug"])
    ns = joined_sandbox(d, netns)
    assert dig(ns, "-c", "CH", "web").status == "REFUSED"
    assert d.stop() == 0
    lines = d.log().splitlines()
    assert lines, "the daemon logged nothing"
    entries = []
    for line in lines:
        entry = json.loads(line)
        assert isinstance(entry, dict), line
        assert {"time", "level", "logger", "message"} <= entry.keys(), line
        assert JSON_TIME.match(entry["time"]), line
        assert entry["level"] in ("debug", "info", "warning", "error", "critical"), line
        entries.append(entry)
    refused = [e for e in entries if e.get("outcome") == "refused-class"]
    assert refused, "no debug line for the CH query"
    assert refused[-1]["level"] == "debug"
    assert refused[-1]["logger"] == "resolver.query"
    assert refused[-1]["sandbox"] == f"/run/netns/{ns}"
    assert "refused-class" in refused[-1]["message"]
    assert any(e["message"].startswith("serving; control socket") for e in entries)
    assert entries[-1]["message"] == "stopped"


# ---- 4. SIGHUP -------------------------------------------------------------------------------------------


def test_sighup_reloads_the_log_level_and_keeps_registrations(ops: OpsFactory, netns: Namespaces) -> None:
    d = ops('[log]\nlevel = "info"\n')
    ns = joined_sandbox(d, netns)
    before = d.snapshot()
    assert ch_query(d, ns) == 0

    d.config.write_text('[log]\nlevel = "debug"\n')
    d.sighup()
    assert wait_until(lambda: "settings reloaded" in d.log(), 5), d.log()
    assert ch_query(d, ns) == 1
    assert d.snapshot() == before
    assert d.json("status")["sandboxes"] == 1
    assert_answers(ns)
    assert_answers(ns, "api.ops.test")


BROKEN_RELOADS = {
    "unknown-key": ('[log]\nlevel = "debug"\nverbose = true\n', "'verbose'"),
    "not-toml": ('[log]\nlevel = "debug\n', "not valid TOML"),
    "wrong-type": ('[log]\nlevel = "debug"\n[tcp]\nidle_timeout = "long"\n', "[tcp] idle_timeout"),
}


@pytest.mark.parametrize("case", list(BROKEN_RELOADS))
def test_sighup_with_a_broken_file_keeps_the_old_settings(
    ops: OpsFactory, netns: Namespaces, case: str
) -> None:
    text, named = BROKEN_RELOADS[case]
    d = ops('[log]\nlevel = "info"\n')
    ns = joined_sandbox(d, netns)
    before = d.snapshot()

    d.config.write_text(text)
    d.sighup()
    found = wait_until(lambda: [line for line in d.log_lines("ERROR") if "reload refused" in line], 5)
    assert found, d.log()
    assert named in found[0], found[0]
    assert d.running()
    assert ch_query(d, ns) == 0, "the old level (info) must stay"
    assert "settings reloaded" not in d.log()
    assert d.snapshot() == before
    assert_answers(ns)


def test_sighup_with_an_unknown_log_level_is_refused(ops: OpsFactory, netns: Namespaces) -> None:
    d = ops('[log]\nlevel = "info"\n')
    ns = joined_sandbox(d, netns)
    d.config.write_text('[log]\nlevel = "verbose"\nformat = "json"\n')
    d.sighup()
    assert wait_until(lambda: "reload refused" in d.log() or "Exception in callback" in d.log(), 5)
    assert [line for line in d.log_lines("ERROR") if "reload refused" in line], d.log()
    assert ch_query(d, ns) == 0
    assert not d.log().splitlines()[-1].startswith("{"), "the log format must stay text"


# ---- 5. SIGTERM ------------------------------------------------------------------------------------------


def _sigterm(d: OpsDaemon) -> tuple[int, float]:
    assert d.proc is not None
    started = time.monotonic()
    d.proc.send_signal(signal.SIGTERM)
    status = d.proc.wait(10)
    elapsed = time.monotonic() - started
    d.stop()  # reaped already: only forgets it
    return status, elapsed


def test_sigterm_exits_0_removes_the_socket_and_leaves_resolv_conf(
    ops: OpsFactory, netns: Namespaces
) -> None:
    d = ops()
    ns = joined_sandbox(d, netns)
    path = NETNS_ETC / ns / "resolv.conf"
    rewritten = path.read_text()
    assert f"nameserver {LISTEN}" in rewritten.splitlines()
    assert d.socket.exists()

    status, elapsed = _sigterm(d)
    assert status == 0, d.log()
    assert elapsed < 5.0
    assert not d.socket.exists(), "the control socket must be removed"
    assert path.read_text() == rewritten, "by default resolv.conf is restored only on leave"
    assert dig(ns, "web", timeout=1).status == "NO-REPLY", "the listeners must be closed"
    assert d.log().splitlines()[-1].endswith("resolver.daemon: stopped")


def test_sigterm_restores_resolv_conf_when_configured(ops: OpsFactory, netns: Namespaces) -> None:
    d = ops("[server]\nrestore_resolv_conf_on_exit = true\n")
    kept, created = netns.add(), netns.add()
    kept_path = NETNS_ETC / kept / "resolv.conf"
    kept_path.parent.mkdir(parents=True)
    original = b"nameserver 127.0.0.1\nsearch lan.example\noptions ndots:2\n"
    kept_path.write_bytes(original)
    inode = kept_path.stat().st_ino
    d.ok("network", "create", "n1")
    d.join("n1", kept, "ep-kept", "kept", "--ipv4", "10.72.0.2")
    d.join("n1", created, "ep-created", "created", "--ipv4", "10.72.0.3")
    created_path = NETNS_ETC / created / "resolv.conf"
    assert f"nameserver {LISTEN}" in kept_path.read_text().splitlines()
    assert f"nameserver {LISTEN}" in created_path.read_text().splitlines()

    status, elapsed = _sigterm(d)
    assert status == 0, d.log()
    assert elapsed < 5.0
    assert not d.socket.exists()
    assert kept_path.read_bytes() == original
    assert kept_path.stat().st_ino == inode, "written in place, not replaced"
    assert not created_path.exists(), "a resolv.conf the daemon created is removed on restore"


# ---- 6, 7. a shared topology: metrics and the inspecting commands -------------------------------------

WEB, TASK, VAULT, VIP = "10.61.0.2", "10.61.0.3", "10.62.0.2", "10.61.0.100"
WEB_ID, TASK_ID, VAULT_ID = "0123456789abcdef", "fedcba9876543210", "00112233445566778899"


@dataclass(frozen=True)
class World:
    daemon: Daemon
    web: str  # web (alias api) on opsnet (domain ops.test)
    task: str  # task1 on opsnet, a task of service svc (vip)
    vault: str  # vault on the internal network sealed


@pytest.fixture(scope="module")
def world(module_daemon: Daemon, module_netns: Namespaces) -> World:
    d = module_daemon
    web, task, vault = module_netns.add(), module_netns.add(), module_netns.add()
    d.ok("network", "create", "opsnet", "--domain", "ops.test")
    d.ok("network", "create", "sealed", "--internal", "--ttl", "30")
    d.ok("service", "create", "opsnet", "svc", "--vip", VIP)
    d.join("opsnet", web, WEB_ID, "web", "--alias", "api", "--ipv4", WEB, "--port", "http:tcp:80")
    d.join("opsnet", task, TASK_ID, "task1", "--service", "svc", "--ipv4", TASK)
    d.join("sealed", vault, VAULT_ID, "vault", "--hostname", "vault-host", "--ipv4", VAULT)
    return World(d, web, task, vault)


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(d: Daemon) -> tuple[str, Samples]:
    text = call("GET", "/metrics", socket_path=str(d.socket))
    assert isinstance(text, str)
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return text, samples


def local_a(samples: Samples) -> float:
    labels = frozenset({"outcome": "local", "source": "local", "transport": "udp", "type": "A"}.items())
    return samples.get(("resolver_queries_total", labels), 0.0)


LOCAL_A = 'resolver_queries_total{outcome="local",source="local",transport="udp",type="A"}'


def test_metrics_are_prometheus_text_with_gauges_and_histogram(world: World) -> None:
    d = world.daemon
    # The first plain query for a name takes the general path and prepares its fast-path answer.
    assert dig(world.task, "+noedns", "web").addresses == [WEB]
    _, before = scrape(d)
    plain = 3
    for _ in range(plain):
        result = dig(world.task, "+noedns", "web")  # a plain query: the fast path
        assert result.addresses == [WEB], result.output
    edns = 4
    for _ in range(edns):
        assert dig(world.task, "web").addresses == [WEB]  # EDNS: the general path
    text, after = scrape(d)

    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["resolver_queries"].type == "counter"
    assert families["resolver_query_duration_seconds"].type == "histogram"
    for gauge in ("resolver_sandboxes", "resolver_endpoints", "resolver_networks"):
        assert families[gauge].type == "gauge", gauge
    assert after[("resolver_sandboxes", frozenset())] == 3
    assert after[("resolver_endpoints", frozenset())] == 3
    assert after[("resolver_networks", frozenset())] == 2
    status = d.json("status")
    assert (status["sandboxes"], status["endpoints"], status["networks"]) == (3, 3, 2)

    assert LOCAL_A in text
    # Every A query for the local name counts once, whichever path answered it.
    assert local_a(after) - local_a(before) == plain + edns
    # The histogram times the queries that left the fast path (its HELP says so): the EDNS ones.
    count = ("resolver_query_duration_seconds_count", frozenset())
    assert after[count] - before.get(count, 0.0) == edns
    inf = ("resolver_query_duration_seconds_bucket", frozenset({("le", "+Inf")}))
    assert after[inf] == after[count]
    assert after[("resolver_query_duration_seconds_sum", frozenset())] > 0


def test_metrics_count_local_a_queries_on_both_paths(world: World) -> None:
    _, before = scrape(world.daemon)
    for _ in range(3):
        assert dig(world.task, "+noedns", "web").addresses == [WEB]
    for _ in range(4):
        assert dig(world.task, "web").addresses == [WEB]
    _, after = scrape(world.daemon)
    assert local_a(after) - local_a(before) == 7


def _query(d: Daemon, *args: str) -> tuple[str, Any]:
    return d.ok("query", *args), d.json("query", *args)


def test_query_says_which_rule_answered(world: World) -> None:
    d = world.daemon
    text, data = _query(d, "web", "--netns", world.task)
    assert text.splitlines() == ["rule: local  rcode: NOERROR", f"answer: web. 5 IN A {WEB}"]
    assert data == {
        "netns": f"/run/netns/{world.task}",
        "name": "web",
        "type": "A",
        "rule": "local",
        "rcode": "NOERROR",
        "answer": [f"web. 5 IN A {WEB}"],
        "authority": [],
        "additional": [],
    }

    text, data = _query(d, "nothere.ops.test", "--netns", world.web)
    assert text.splitlines()[0] == "rule: nxdomain  rcode: NXDOMAIN"
    assert (data["rule"], data["rcode"], data["answer"]) == ("nxdomain", "NXDOMAIN", [])
    assert [line.split()[:4] for line in data["authority"]] == [["ops.test.", "5", "IN", "SOA"]]

    data = d.json("query", "api.ops.test", "AAAA", "--netns", world.task)  # NODATA: the rule is checked below
    assert (data["type"], data["rcode"], data["answer"]) == ("AAAA", "NOERROR", [])
    assert [line.split()[:4] for line in data["authority"]] == [["ops.test.", "5", "IN", "SOA"]]

    text, data = _query(d, "example.com", "--netns", world.vault)
    assert text.splitlines() == ["rule: refused-internal  rcode: REFUSED"]
    assert (data["rule"], data["rcode"], data["answer"]) == ("refused-internal", "REFUSED", [])

    text, data = _query(d, "vault", "--netns", world.vault)
    assert data["answer"] == [f"vault. 30 IN A {VAULT}"]
    _, data = _query(d, "vault", "--netns", world.web)  # not on sealed: not local, and no upstreams
    assert data["rule"] != "local" and data["answer"] == []

    result = d.cli("query", "web", "--netns", "rt3-nonexistent")
    assert result.rc == 1 and result.err.startswith("error: "), result


def test_query_reports_the_same_rule_for_nodata_every_time(world: World) -> None:
    asked = ("query", "task1", "AAAA", "--netns", world.web)
    replies = [world.daemon.json(*asked) for _ in range(2)]
    assert [(r["rcode"], r["answer"]) for r in replies] == [("NOERROR", []), ("NOERROR", [])]
    assert [r["rule"] for r in replies] == ["nodata", "nodata"]


def test_metrics_count_nodata_answers_as_nodata_on_both_paths(world: World) -> None:
    labels = frozenset({"outcome": "nodata", "source": "local", "transport": "udp", "type": "AAAA"}.items())
    key = ("resolver_queries_total", labels)
    _, before = scrape(world.daemon)
    for _ in range(3):
        result = dig(world.vault, "+noedns", "vault", "AAAA")
        assert (result.status, result.answer) == ("NOERROR", []), result.output
    _, after = scrape(world.daemon)
    assert after.get(key, 0.0) - before.get(key, 0.0) == 3


def test_inspect_shows_the_registered_values(world: World) -> None:
    d = world.daemon
    web_ep = {
        "id": WEB_ID,
        "network": "opsnet",
        "netns": f"/run/netns/{world.web}",
        "name": "web",
        "aliases": ["api"],
        "hostname": None,
        "ipv4": [WEB],
        "ipv6": [],
        "service": None,
        "ports": ["http:tcp:80"],
        "dns": [],
        "resolv_conf": None,
    }
    task_ep = {
        **web_ep,
        "id": TASK_ID,
        "netns": f"/run/netns/{world.task}",
        "name": "task1",
        "aliases": [],
        "ipv4": [TASK],
        "service": "svc",
        "ports": [],
    }
    svc = {"network": "opsnet", "name": "svc", "vips": [VIP], "mode": "vip"}

    network = d.json("inspect", "network", "opsnet")
    assert network == {
        "name": "opsnet",
        "internal": False,
        "domain": "ops.test",
        "dns": [],
        "ttl": 5,
        "endpoints": [web_ep, task_ep],
        "services": [svc],
    }
    text = d.ok("inspect", "network", "sealed").splitlines()
    assert {"name: sealed", "internal: True", "domain: -", "ttl: 30", "services: -"} <= set(text), text
    assert "endpoints:" in text and any(f"id={VAULT_ID}" in line for line in text), text

    assert d.json("inspect", "endpoint", WEB_ID) == web_ep
    text = d.ok("inspect", "endpoint", VAULT_ID).splitlines()
    assert {"name: vault", "hostname: vault-host", f"ipv4: {VAULT}", "network: sealed"} <= set(text), text

    assert d.json("inspect", "service", "opsnet/svc") == {**svc, "tasks": [task_ep]}
    assert d.json("inspect", "service", "svc", "--network", "opsnet") == {**svc, "tasks": [task_ep]}
    text = d.ok("inspect", "service", "opsnet/svc").splitlines()
    assert {"name: svc", f"vips: {VIP}", "mode: vip", "tasks:"} <= set(text), text

    sandbox = d.json("inspect", "sandbox", world.web)
    assert sandbox == {
        "netns": f"/run/netns/{world.web}",
        "endpoints": [web_ep],
        "original_dns": [],
        "listening": True,
        "port": 53,
        "resolv_conf": f"/etc/netns/{world.web}/resolv.conf",
        "upstreams": [],
        "networks": ["opsnet"],
    }
    text = d.ok("inspect", "sandbox", world.vault).splitlines()
    assert {"listening: True", "port: 53", "networks: sealed"} <= set(text), text

    for kind, ident in (("network", "nonet"), ("endpoint", "noep"), ("service", "opsnet/nosvc")):
        result = d.cli("inspect", kind, ident)
        assert result.rc == 1 and result.err.startswith("error: ") and ident.split("/")[-1] in result.err


def test_status_and_network_ls_count_what_is_registered(world: World) -> None:
    d = world.daemon
    status = d.json("status")
    assert (status["sandboxes"], status["endpoints"], status["networks"]) == (3, 3, 2)
    assert status["listen"] == {"address": LISTEN, "mode": "direct"}
    assert status["pid"] == d.pid
    text = d.ok("status").splitlines()
    assert {"sandboxes: 3", "endpoints: 3", "networks: 2"} <= set(text), text

    assert d.json("network", "ls") == [
        {
            "name": "opsnet",
            "internal": False,
            "domain": "ops.test",
            "dns": [],
            "ttl": 5,
            "endpoints": 2,
            "services": ["svc"],
        },
        {
            "name": "sealed",
            "internal": True,
            "domain": None,
            "dns": [],
            "ttl": 30,
            "endpoints": 1,
            "services": [],
        },
    ]
    rows = [line.split() for line in d.ok("network", "ls").splitlines()]
    assert rows == [
        ["NAME", "DOMAIN", "INTERNAL", "ENDPOINTS", "SERVICES"],
        ["opsnet", "ops.test", "no", "2", "svc"],
        ["sealed", "-", "yes", "1", "-"],
    ]
    assert sorted(Path(sb["netns"]).name for sb in d.json("ls")) == sorted(
        [world.web, world.task, world.vault]
    )


# ---- 8. TCP limits ---------------------------------------------------------------------------------------

TCP_HELPERS = r"""
import json, socket, struct, sys, time
import dns.message, dns.rdatatype

NAME = sys.argv[1]


def connect():
    return socket.create_connection(("127.0.0.11", 53), timeout=5)


def read_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def ask(sock, qid):
    query = dns.message.make_query(NAME, "A")
    query.id = qid
    wire = query.to_wire()
    try:
        sock.sendall(struct.pack("!H", len(wire)) + wire)
        head = read_exact(sock, 2)
        body = None if head is None else read_exact(sock, struct.unpack("!H", head)[0])
    except (ConnectionResetError, BrokenPipeError):
        return "closed"
    if body is None:
        return "closed"
    reply = dns.message.from_wire(body)
    assert reply.id == qid
    return [r.address for rrset in reply.answer for r in rrset if r.rdtype == dns.rdatatype.A]


def ask_new(qid, within=3.0):
    # a fresh connection; retried while the daemon is still releasing the slots of closed ones
    deadline = time.monotonic() + within
    while True:
        with connect() as sock:
            got = ask(sock, qid)
        if got != "closed" or time.monotonic() > deadline:
            return got
        time.sleep(0.05)
"""

TCP_LIMIT_CLIENT = (
    TCP_HELPERS
    + r"""
first, second = connect(), connect()
out = {"first": ask(first, 1), "second": ask(second, 2)}
third = connect()
out["third"] = ask(third, 3)
third.close()
out["first_again"] = ask(first, 4)
out["second_again"] = ask(second, 5)
first.close()
out["after_first_closed"] = ask_new(6)
second.close()
print(json.dumps(out))
"""
)

TCP_IDLE_CLIENT = (
    TCP_HELPERS
    + r"""
silent, busy = connect(), connect()
opened = time.monotonic()
out = {"busy": ask(busy, 1)}
answered = time.monotonic()
try:
    out["silent_read"] = silent.recv(1).hex()
except ConnectionResetError:
    out["silent_read"] = "reset"
out["silent_after"] = time.monotonic() - opened
try:
    out["busy_read"] = busy.recv(1).hex()
except ConnectionResetError:
    out["busy_read"] = "reset"
out["busy_after"] = time.monotonic() - answered
print(json.dumps(out))
"""
)

TCP_BROKEN_CLIENT = (
    TCP_HELPERS
    + r"""
out = {}
for i in range(3):  # more broken connections than max_connections: a leaked slot would show
    with connect() as sock:
        sock.sendall(b"\x00\x40" + b"\xab\xcd\x01\x00")  # 64 bytes announced, 4 sent
for i in range(3):
    with connect() as sock:
        sock.sendall(b"\x00")  # half a length prefix
sock = connect()
sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
sock.sendall(b"\x00\x40\xab")
sock.close()  # reset, mid-frame
time.sleep(0.3)
out["next"] = ask_new(7)
out["next_again"] = ask_new(8)
print(json.dumps(out))
"""
)

TCP_CONFIG = "[tcp]\nmax_connections = 2\nidle_timeout = 1.0\n"


@pytest.fixture
def tcp_sandbox(ops: OpsFactory, netns: Namespaces) -> tuple[OpsDaemon, str]:
    d = ops(TCP_CONFIG)
    return d, joined_sandbox(d, netns)


def test_tcp_third_connection_is_closed_while_two_answer(tcp_sandbox: tuple[OpsDaemon, str]) -> None:
    d, ns = tcp_sandbox
    out = netns_python(ns, TCP_LIMIT_CLIENT, "web")
    assert out == {
        "first": ["10.71.0.2"],
        "second": ["10.71.0.2"],
        "third": "closed",
        "first_again": ["10.71.0.2"],
        "second_again": ["10.71.0.2"],
        "after_first_closed": ["10.71.0.2"],
    }
    assert d.running()


def test_tcp_idle_connection_is_closed_after_idle_timeout(tcp_sandbox: tuple[OpsDaemon, str]) -> None:
    _d, ns = tcp_sandbox
    out = netns_python(ns, TCP_IDLE_CLIENT, "web")
    assert out["busy"] == ["10.71.0.2"]
    assert out["silent_read"] == "", "a silent connection must be closed (EOF)"
    assert 0.9 <= out["silent_after"] <= 3.0, out
    assert out["busy_read"] == "", "a connection idle after its answer must be closed (EOF)"
    assert 0.9 <= out["busy_after"] <= 3.0, out


def test_tcp_broken_frames_do_not_disturb_the_daemon(tcp_sandbox: tuple[OpsDaemon, str]) -> None:
    d, ns = tcp_sandbox
    out = netns_python(ns, TCP_BROKEN_CLIENT, "web")
    assert out == {"next": ["10.71.0.2"], "next_again": ["10.71.0.2"]}
    assert d.running()
    assert_answers(ns)
    assert dig(ns, "web", tcp=True).addresses == ["10.71.0.2"]
    assert "Traceback" not in d.log()
    assert os.path.exists(d.socket)
