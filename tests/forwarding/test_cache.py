"""The forwarded-answer cache: a repeated question is answered without asking upstream, TTLs count
down, NXDOMAIN is kept for the SOA minimum and asked again after it, sandboxes with other upstreams
(servers reached from inside each sandbox) never see each other's entries, and the cache can be off."""

from __future__ import annotations

import time
from collections.abc import Callable

import dns.message
import dns.rcode
import pytest

from .conftest import Addresses, Daemon
from .helpers import Client, Handler, ScriptedUpstream, Send, answer_with, nxdomain_reply, soa_rrset

pytestmark = pytest.mark.netns


def test_repeated_question_is_answered_from_the_cache(
    behind_scripted: Callable[[Handler], tuple[ScriptedUpstream, Daemon, str]],
) -> None:
    upstream, daemon, netns = behind_scripted(answer_with(["10.0.0.1"], ttl=300))

    with Client(netns) as client:
        first = client.ask("cached.test")
        again = [client.ask(spelling) for spelling in ("cached.test", "CACHED.test", "Cached.Test")]
    assert (first.addresses(), first.ttls()) == (["10.0.0.1"], [300])
    for answer, spelling in zip(again, ("cached.test.", "CACHED.test.", "Cached.Test."), strict=True):
        assert answer.rcode == dns.rcode.NOERROR
        assert answer.addresses() == ["10.0.0.1"]
        assert answer.message.question[0].name.to_text() == spelling
        assert answer.message.answer[0].name.to_text() == spelling
    assert upstream.count() == 1
    cache = daemon.status()["cache"]
    assert (cache["entries"], cache["hits"]) == (1, 3)


def test_cached_ttls_count_down(
    behind_scripted: Callable[[Handler], tuple[ScriptedUpstream, Daemon, str]],
) -> None:
    upstream, _daemon, netns = behind_scripted(answer_with(["10.0.0.1"], ttl=300))

    with Client(netns) as client:
        first = client.ask("ttl.test")
        asked = time.monotonic()
        time.sleep(2.2)
        later = client.ask("ttl.test")
        elapsed = time.monotonic() - asked
    assert first.ttls() == [300]
    assert later.addresses() == ["10.0.0.1"]
    # counted down by the whole seconds elapsed (2, or 3 on a slow machine)
    assert later.ttls()[0] in (300 - int(elapsed), 300 - int(elapsed) - 1)
    assert later.ttls()[0] <= 298
    assert upstream.count() == 1


def test_nxdomain_is_cached_for_the_soa_minimum(
    behind_scripted: Callable[[Handler], tuple[ScriptedUpstream, Daemon, str]],
) -> None:
    def handle(query: dns.message.Message, _transport: str) -> list[Send]:
        return [Send(nxdomain_reply(query, "neg.test.", ttl=300, minimum=2))]

    upstream, _daemon, netns = behind_scripted(handle)

    with Client(netns) as client:
        first = client.ask("gone.neg.test")
        stored = time.monotonic()
        assert first.rcode == dns.rcode.NXDOMAIN and upstream.count() == 1
        assert client.ask("gone.neg.test").rcode == dns.rcode.NXDOMAIN
        time.sleep(max(0.0, stored + 1.2 - time.monotonic()))
        assert client.ask("gone.neg.test").rcode == dns.rcode.NXDOMAIN
        assert upstream.count() == 1, "NXDOMAIN was not answered from the cache within the SOA minimum"
        time.sleep(max(0.0, stored + 2.8 - time.monotonic()))
        expired = client.ask("gone.neg.test")
    assert expired.rcode == dns.rcode.NXDOMAIN
    assert len(expired.message.authority) == 1  # straight from upstream again, SOA included
    assert upstream.count() == 2


def test_sandboxes_with_other_upstreams_never_share_entries(
    addresses: Addresses,
    make_netns: Callable[[], str],
    start_daemon: Callable[..., Daemon],
    scripted: Callable[..., ScriptedUpstream],
) -> None:
    host = scripted(addresses.take(), answer_with(["10.0.0.3"]))
    daemon = start_daemon([host.address])
    first, second, plain, plain_too = make_netns(), make_netns(), make_netns(), make_netns()
    # the same server address in two sandboxes, but two different servers: each its own namespace's
    in_first = scripted("127.0.0.53", answer_with(["10.0.0.1"]), netns=first)
    in_second = scripted("127.0.0.53", answer_with(["10.0.0.2"]), netns=second)
    daemon.join(first, dns=("127.0.0.53",))
    daemon.join(second, dns=("127.0.0.53",))
    daemon.join(plain)
    daemon.join(plain_too)

    expected = {first: "10.0.0.1", second: "10.0.0.2", plain: "10.0.0.3", plain_too: "10.0.0.3"}
    for _round in range(2):
        for netns, address in expected.items():
            with Client(netns) as client:
                assert client.ask("shared.test").addresses() == [address], netns
    # each server was asked once; the sandboxes with the same (host) upstreams shared one entry
    assert (in_first.count(), in_second.count(), host.count()) == (1, 1, 1)


def test_cache_can_be_turned_off(
    addresses: Addresses,
    make_netns: Callable[[], str],
    start_daemon: Callable[..., Daemon],
    scripted: Callable[..., ScriptedUpstream],
) -> None:
    upstream = scripted(addresses.take(), answer_with(["10.0.0.1"], ttl=300))
    daemon = start_daemon([upstream.address], cache_enabled=False)
    netns = make_netns()
    daemon.join(netns)

    with Client(netns) as client:
        answers = [client.ask("uncached.test") for _ in range(3)]
    assert [a.addresses() for a in answers] == [["10.0.0.1"]] * 3
    assert [a.ttls() for a in answers] == [[300]] * 3
    assert upstream.count() == 3
    assert daemon.status()["cache"] is None


def test_cached_nxdomain_keeps_its_soa(
    behind_scripted: Callable[[Handler], tuple[ScriptedUpstream, Daemon, str]],
) -> None:
    def handle(query: dns.message.Message, _transport: str) -> list[Send]:
        return [Send(nxdomain_reply(query, "neg.test.", ttl=300, minimum=60))]

    upstream, _daemon, netns = behind_scripted(handle)

    with Client(netns) as client:
        first = client.ask("gone.neg.test")
        cached = client.ask("gone.neg.test")
    assert upstream.count() == 1
    assert first.message.authority == [soa_rrset("neg.test.", 300, 60)]
    assert cached.rcode == dns.rcode.NXDOMAIN
    assert cached.message.authority == [soa_rrset("neg.test.", 300, 60)]
    assert cached.message.authority[0].ttl <= 300
