"""Fixtures of the multi-host tests: `cluster` is a `Cluster` (etcd plus two host namespaces, each with
its daemon), torn down after the test - etcd and daemons stopped, namespaces and veths deleted - also
when the test fails; a failing test gets the daemons' and etcd's logs in its report.

The tests need root, `ip`, `dig`, `etcd`, `etcdctl` and the `etcd` extra (aetcd); without them they are
skipped with a reason naming what is missing.
"""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from integration.nstools import missing

from .cluster import Cluster

LIVE: list[Cluster] = []


def _lacking() -> list[str]:
    lacking = missing("etcd", "etcdctl", "nsenter")
    if importlib.util.find_spec("aetcd") is None:
        lacking.append("the etcd extra (aetcd)")
    return lacking


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.failed and report.when in ("setup", "call"):
        for cluster in LIVE:
            for daemon in cluster.daemons:
                report.sections.append((f"daemon log ({daemon.host})", daemon.log_text()))
            if cluster.etcd is not None and cluster.etcd.log.exists():
                report.sections.append(("etcd log", cluster.etcd.log.read_text(errors="replace")[-5000:]))


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    yield from _cluster(tmp_path, tls=False)


@pytest.fixture
def tls_cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A cluster whose etcd serves TLS only and requires client certificates."""
    if shutil.which("openssl") is None:
        pytest.skip("the TLS multi-host test needs openssl (to make certificates)")
    yield from _cluster(tmp_path, tls=True)


@pytest.fixture
def three_member_cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A cluster whose etcd has three members; the daemons know all three endpoints."""
    yield from _cluster(tmp_path, tls=False, members=3)


def _cluster(tmp_path: Path, tls: bool, members: int = 1) -> Iterator[Cluster]:
    lacking = _lacking()
    if lacking:
        pytest.skip(f"multi-host test needs {', '.join(lacking)}")
    instance = Cluster(tmp_path, tls=tls, members=members)
    LIVE.append(instance)
    failures: list[str] = []
    try:
        instance.setup()
        yield instance
    finally:
        LIVE.remove(instance)
        failures = instance.cleanup()
    if failures:
        pytest.fail("\n".join(failures))
