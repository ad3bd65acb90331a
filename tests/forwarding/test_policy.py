"""Forwarding policy: a sandbox only on internal networks gets REFUSED for other names, a name under a
network's domain is answered (NXDOMAIN with SOA) and never forwarded, and non-IN classes never forward;
in each case the upstream receives nothing."""

from __future__ import annotations

from collections.abc import Callable

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from .conftest import Addresses, Daemon
from .helpers import Client, ScriptedUpstream, answer_with

pytestmark = pytest.mark.netns


def test_internal_domain_and_class_rules_never_forward(
    addresses: Addresses,
    make_netns: Callable[[], str],
    start_daemon: Callable[..., Daemon],
    scripted: Callable[..., ScriptedUpstream],
) -> None:
    upstream = scripted(addresses.take(), answer_with(["1.2.3.4"]))
    daemon = start_daemon([upstream.address])
    daemon.create_network("sealed", internal=True)
    daemon.create_network("corp", domain="corp.test")
    sealed, open_ = make_netns(), make_netns()
    daemon.join(sealed, network="sealed")
    daemon.join(open_, network="corp")

    with Client(sealed) as client:
        refused = client.ask("outside.test")
    assert refused.rcode == dns.rcode.REFUSED
    assert not refused.message.flags & dns.flags.RA

    with Client(open_) as client:
        under_domain = client.ask("nobody.corp.test")
        chaos = client.exchange_udp(dns.message.make_query("chaos.test", dns.rdatatype.TXT, "CH"))
        forwarded = client.ask("outside.test")
    assert under_domain.rcode == dns.rcode.NXDOMAIN
    assert [rrset.rdtype for rrset in under_domain.message.authority] == [dns.rdatatype.SOA]
    assert under_domain.message.flags & dns.flags.AA
    assert chaos.rcode == dns.rcode.REFUSED
    # the same sandbox does forward an ordinary name: the rules above were not a dead upstream
    assert forwarded.addresses() == ["1.2.3.4"]
    assert [q.qname for q in upstream.queries()] == ["outside.test."]
