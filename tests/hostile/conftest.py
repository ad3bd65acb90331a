"""Fixtures of the hostile-input tests (ISC compliance probes, TCP abuse): those of the forwarding tests
(a daemon started with settings, dnsmasq upstreams on host loopback addresses, requirements), with this
suite's own namespace prefix `rt7-`. Every namespace is deleted at teardown, with the processes of ours
inside it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator

import pytest
from forwarding.conftest import _requirements, addresses, dnsmasq, start_daemon

__all__ = ["_requirements", "addresses", "dnsmasq", "start_daemon"]
NETNS_PREFIX = "rt7-"


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


@pytest.fixture
def make_netns() -> Iterator[Callable[[], str]]:
    """Create namespaces `rt7-<hex>` with `lo` up; all are deleted afterwards."""
    created: list[str] = []

    def make() -> str:
        name = NETNS_PREFIX + secrets.token_hex(4)
        result = _ip("netns", "add", name)
        assert result.returncode == 0, result.stderr
        created.append(name)
        _ip("-n", name, "link", "set", "lo", "up")
        return name

    yield make
    for name in created:
        for pid in _ip("netns", "pids", name).stdout.split():  # only processes this test started there
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        _ip("netns", "del", name)
        shutil.rmtree(f"/etc/netns/{name}", ignore_errors=True)
