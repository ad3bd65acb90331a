"""Fixtures of the namespace integration tests.

- `netns`: a `Namespaces` factory (`netns.add()`, `netns.lan()`, `netns.spawn()`); every namespace, link
  and process it made is removed at teardown, also `/etc/netns/NAME` if something left it behind;
- `daemon`: starts `resolver serve` with its socket, state, host resolv.conf and log under tmp_path
  (`daemon(listen_mode="redirect")`), waits until `resolver status` answers, and stops it at teardown
  (SIGTERM, then SIGKILL; a daemon that does not exit 0 on SIGTERM fails the test). The returned
  `Daemon` has `cli(*args) -> (rc, stdout, stderr)`, `kill9()`, `restart_after_kill9()`;
- a failing test gets the log of every daemon that is still running in its report.

Every test here needs root, `ip` and `dig`; without them it is skipped with a reason naming what is missing.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .nstools import LIVE_DAEMONS, NO_UPSTREAMS, Daemon, DaemonFactory, Namespaces, require, stop_daemons


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.failed and report.when in ("setup", "call"):
        for daemon in LIVE_DAEMONS:
            report.sections.append((f"daemon log ({daemon.workdir})", daemon.log_text()))


@pytest.fixture(autouse=True)
def _needs_root_and_tools() -> None:
    require()


@pytest.fixture
def netns() -> Iterator[Namespaces]:
    require()
    namespaces = Namespaces()
    try:
        yield namespaces
    finally:
        namespaces.cleanup()


@pytest.fixture
def daemon(netns: Namespaces, tmp_path: Path) -> Iterator[DaemonFactory]:
    """Depends on `netns` so that daemons stop before the namespaces go."""
    started: list[Daemon] = []

    def start(listen_mode: str = "direct", host_resolv_conf: str = NO_UPSTREAMS) -> Daemon:
        instance = Daemon(tmp_path / f"d{len(started)}", listen_mode, host_resolv_conf)
        started.append(instance)
        instance.start()
        return instance

    try:
        yield start
    finally:
        stop_daemons(started)


@pytest.fixture(scope="module")
def module_netns() -> Iterator[Namespaces]:
    """A `Namespaces` shared by a module's tests (for topologies that the tests only read)."""
    require()
    namespaces = Namespaces()
    try:
        yield namespaces
    finally:
        namespaces.cleanup()


@pytest.fixture(scope="module")
def module_daemon(module_netns: Namespaces, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """A daemon shared by a module's tests; stopped (and checked to exit 0) after the module."""
    instance = Daemon(tmp_path_factory.mktemp("daemon"))
    try:
        instance.start()
        yield instance
    finally:
        status = instance.stop()
    if status != 0:
        pytest.fail(f"the daemon did not exit 0 on SIGTERM (status {status}):\n{instance.log_text()}")
