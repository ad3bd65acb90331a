"""Failover: a blackholed first server costs one attempt timeout and is then skipped; SERVFAIL and
REFUSED move on to the next server; when every server fails the client gets SERVFAIL promptly. Times
are measured against the configured attempt timeout, never asserted as absolute speed."""

from __future__ import annotations

import time
from collections.abc import Callable

import dns.message
import dns.rcode
import pytest

from .conftest import Addresses, Daemon
from .helpers import Client, ScriptedUpstream, Send, answer_with, response, silent

pytestmark = pytest.mark.netns

TIMEOUT = 0.5
MARGIN = 1.5


def rcode_only(rcode: int) -> Callable[[dns.message.Message, str], list[Send]]:
    def handle(query: dns.message.Message, _transport: str) -> list[Send]:
        return [Send(response(query, rcode).to_wire())]

    return handle


def test_blackholed_first_upstream_costs_one_timeout_then_is_skipped(
    addresses: Addresses,
    make_netns: Callable[[], str],
    start_daemon: Callable[..., Daemon],
    scripted: Callable[..., ScriptedUpstream],
) -> None:
    dead = scripted(addresses.take(), silent)
    good = scripted(addresses.take(), answer_with(["1.2.3.4"]))
    daemon = start_daemon([dead.address, good.address], upstream_timeout=TIMEOUT, upstream_down_for=60)
    netns = make_netns()
    daemon.join(netns)

    with Client(netns) as client:
        first = client.ask("first.test")
        assert (first.rcode, first.addresses()) == (dns.rcode.NOERROR, ["1.2.3.4"])
        assert TIMEOUT * 0.9 <= first.elapsed < TIMEOUT + MARGIN
        assert (dead.count(), good.count()) == (1, 1)

        started = time.monotonic()
        answers = [client.ask(f"next{i}.test") for i in range(100)]
        total = time.monotonic() - started

    assert [a.addresses() for a in answers] == [["1.2.3.4"]] * 100
    assert total < 100 * TIMEOUT / 4, f"100 queries took {total:.2f} s"
    slowest = max(a.elapsed for a in answers)
    assert slowest < TIMEOUT, f"a query waited {slowest:.2f} s: the dead server was tried again"
    assert (dead.count(), good.count()) == (1, 101)
    assert daemon.status()["upstreams_down"] == [f"{dead.address}:53"]


def test_servfail_and_refused_move_on_to_the_next_server(
    addresses: Addresses,
    make_netns: Callable[[], str],
    start_daemon: Callable[..., Daemon],
    scripted: Callable[..., ScriptedUpstream],
) -> None:
    failing = scripted(addresses.take(), rcode_only(dns.rcode.SERVFAIL))
    refusing = scripted(addresses.take(), rcode_only(dns.rcode.REFUSED))
    good = scripted(addresses.take(), answer_with(["1.2.3.4"], ttl=0))
    daemon = start_daemon([failing.address, refusing.address, good.address], upstream_timeout=TIMEOUT)
    netns = make_netns()
    daemon.join(netns)

    with Client(netns) as client:
        answer = client.ask("one.test")
        assert (answer.rcode, answer.addresses()) == (dns.rcode.NOERROR, ["1.2.3.4"])
        assert answer.elapsed < TIMEOUT  # no timeout involved
        assert (failing.count(), refusing.count(), good.count()) == (1, 1, 1)
        # an error rcode does not mark a server down: the next query asks them in order again
        answer = client.ask("two.test")
        assert answer.addresses() == ["1.2.3.4"]
    assert (failing.count(), refusing.count(), good.count()) == (2, 2, 2)


def test_all_upstreams_failing_gives_servfail_promptly(
    addresses: Addresses,
    make_netns: Callable[[], str],
    start_daemon: Callable[..., Daemon],
    scripted: Callable[..., ScriptedUpstream],
) -> None:
    first, second = scripted(addresses.take(), silent), scripted(addresses.take(), silent)
    daemon = start_daemon([first.address, second.address], upstream_timeout=TIMEOUT)
    netns = make_netns()
    daemon.join(netns)

    with Client(netns) as client:
        answer = client.ask("nobody.test", edns=True)
    assert answer.rcode == dns.rcode.SERVFAIL
    assert (answer.message.answer, answer.message.authority) == ([], [])
    assert answer.message.edns == 0  # EDNS echoed since the client sent it
    assert 2 * TIMEOUT * 0.9 <= answer.elapsed < 2 * TIMEOUT + MARGIN
    assert (first.count(), second.count()) == (1, 1)
