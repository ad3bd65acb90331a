"""Upstream faults not covered elsewhere: a reply that arrives after the daemon gave up (dropped, never
relayed, never cached), a reply that arrives after the client gave up, garbage replies (skipped, next
server asked), a closed upstream port, and a sandbox namespace deleted while its forwarded queries wait
on a slow upstream (no crash, other sandboxes unaffected, every socket and descriptor given back), and a
sandbox that leaves while its query still has servers inside it to try (no socket is made there again).

Covered elsewhere and not repeated here: a blackholed or failing upstream (test_failover.py), replies
with a wrong id, question, port or source address (test_safety.py), overload (test_limits.py).
"""

from __future__ import annotations

import os
import random
import select
import struct
import subprocess
import time
from collections.abc import Callable

import dns.message
import dns.rcode
import pytest
from integration.nstools import sockets_by_netns, wait_until

from .conftest import Addresses, Daemon
from .helpers import (
    Client,
    ScriptedUpstream,
    Send,
    a_reply,
    answer_with,
    make_query,
    metric_sum,
    response,
    silent,
)

pytestmark = pytest.mark.netns

RIGHT = "1.2.3.4"
STALE = "6.6.6.6"


def first_slow_then_fast(name: str, delay: float) -> Callable[[dns.message.Message, str], list[Send]]:
    """The first query for `name` is answered STALE after `delay` seconds; every later one at once."""
    asked = 0

    def handle(query: dns.message.Message, _transport: str) -> list[Send]:
        nonlocal asked
        if query.question[0].name.to_text() != name:
            return [Send(response(query).to_wire())]  # the daemon's health probe (". NS")
        asked += 1
        if asked == 1:
            return [Send(a_reply(query, [STALE]), delay=delay)]
        return [Send(a_reply(query, [RIGHT]))]

    return handle


def nothing_pending(client: Client) -> bool:
    readable, _, _ = select.select([client.sock], [], [], 0)
    return readable == []


def test_a_reply_after_the_daemon_gave_up_is_dropped_and_never_cached(
    addresses: Addresses,
    make_netns: Callable[[], str],
    start_daemon: Callable[..., Daemon],
    scripted: Callable[..., ScriptedUpstream],
) -> None:
    upstream = scripted(addresses.take(), first_slow_then_fast("late.test.", delay=1.0))
    daemon = start_daemon([upstream.address], upstream_timeout=0.3)
    netns = make_netns()
    daemon.join(netns)

    with Client(netns) as client:
        gave_up = client.ask("late.test")
        assert (gave_up.rcode, gave_up.addresses()) == (dns.rcode.SERVFAIL, [])
        assert wait_until(lambda: upstream.count() >= 1, timeout=5)
        time.sleep(1.2)  # the late STALE reply has reached the daemon's (closed) socket by now
        assert nothing_pending(client), "a reply that came after the daemon gave up was relayed"
        again = client.ask("late.test")
    assert (again.rcode, again.addresses()) == (dns.rcode.NOERROR, [RIGHT]), "the late reply was cached"
    assert [q.qname for q in upstream.queries()].count("late.test.") == 2
    assert metric_sum(daemon.metrics(), "resolver_upstream_errors_total") >= 1
    assert daemon.proc.poll() is None


def test_a_reply_after_the_client_gave_up_serves_the_next_client(
    addresses: Addresses,
    make_netns: Callable[[], str],
    start_daemon: Callable[..., Daemon],
    scripted: Callable[..., ScriptedUpstream],
) -> None:
    upstream = scripted(addresses.take(), answer_with([RIGHT], delay=0.8))
    daemon = start_daemon([upstream.address], upstream_timeout=3.0)
    netns = make_netns()
    daemon.join(netns)

    with Client(netns) as impatient, pytest.raises(TimeoutError):
        impatient.ask("patience.test", timeout=0.2)
    # the impatient client's port is closed when the answer comes back; the daemon must not mind
    time.sleep(1.0)
    with Client(netns) as client:
        later = client.ask("patience.test")
        other = client.ask("other.test")
    assert (later.rcode, later.addresses()) == (dns.rcode.NOERROR, [RIGHT])
    assert other.addresses() == [RIGHT]
    assert [q.qname for q in upstream.queries()].count("patience.test.") == 1, "not served from the cache"
    assert daemon.proc.poll() is None


def header_and_question_claiming_answers(query: dns.message.Message) -> bytes:
    """A reply with the right id and question whose header promises 5 answers that are not there."""
    question = query.question[0].name.to_wire() + struct.pack("!HH", query.question[0].rdtype, 1)
    return struct.pack("!HHHHHH", query.id, 0x8180, 1, 5, 0, 0) + question


def garbage(query: dns.message.Message) -> list[Send]:
    """Junk that matches nothing (ignored while the wait goes on), then a matching but broken reply."""
    rng = random.Random(query.id)
    pointer_loop = struct.pack("!HHHHHH", query.id, 0x8180, 1, 1, 0, 0) + b"\xc0\x0c" + b"\x00\x01\x00\x01"
    return [
        Send(b"\x00"),
        Send(b"\xff" * 11, delay=0.01),
        Send(bytes(rng.randrange(256) for _ in range(300)), delay=0.02),
        Send(pointer_loop, delay=0.03),
        Send(header_and_question_claiming_answers(query), delay=0.05),
    ]


def test_garbage_replies_are_skipped_and_the_next_server_answers(
    addresses: Addresses,
    make_netns: Callable[[], str],
    start_daemon: Callable[..., Daemon],
    scripted: Callable[..., ScriptedUpstream],
) -> None:
    broken = scripted(addresses.take(), lambda query, _t: garbage(query))
    good = scripted(addresses.take(), answer_with([RIGHT]))
    daemon = start_daemon([broken.address, good.address], upstream_timeout=1.0)
    netns = make_netns()
    daemon.join(netns)

    with Client(netns) as client:
        answers = [client.ask(f"g{i}.test", edns=i % 2 == 0) for i in range(6)]
        tcp = client.ask("tcp.test", tcp=True)
    assert [(a.rcode, a.addresses()) for a in [*answers, tcp]] == [(dns.rcode.NOERROR, [RIGHT])] * 7
    assert (broken.count(), good.count()) == (7, 7), "each query: the broken server once, then the good one"
    errors = [line for line in daemon.metrics().splitlines() if line.startswith("resolver_upstream_errors")]
    assert errors == [f'resolver_upstream_errors_total{{reason="malformed",server="{broken.address}"}} 7.0']
    assert daemon.proc.poll() is None


def test_only_garbage_gives_servfail(
    behind_scripted: Callable[..., tuple[ScriptedUpstream, Daemon, str]],
) -> None:
    upstream, daemon, netns = behind_scripted(lambda query, _t: garbage(query))
    with Client(netns) as client:
        answers = [client.ask(f"only{i}.test") for i in range(3)]
    assert [a.rcode for a in answers] == [dns.rcode.SERVFAIL] * 3
    assert upstream.count() == 3
    assert daemon.proc.poll() is None


def test_a_closed_upstream_port_moves_on_to_the_next_server(
    addresses: Addresses,
    make_netns: Callable[[], str],
    start_daemon: Callable[..., Daemon],
    scripted: Callable[..., ScriptedUpstream],
) -> None:
    closed = addresses.take()  # nothing listens there: the kernel answers "port unreachable"
    good = scripted(addresses.take(), answer_with([RIGHT]))
    daemon = start_daemon([closed, good.address], upstream_timeout=5.0)
    netns = make_netns()
    daemon.join(netns)

    with Client(netns) as client:
        answer = client.ask("down.test", timeout=4.0)  # less than one upstream timeout
    assert (answer.rcode, answer.addresses()) == (dns.rcode.NOERROR, [RIGHT])
    errors = [line for line in daemon.metrics().splitlines() if line.startswith("resolver_upstream_errors")]
    assert errors == [f'resolver_upstream_errors_total{{reason="refused",server="{closed}"}} 1.0'], errors


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def send_all(client: Client, names: list[str]) -> dict[int, str]:
    ids = {}
    for qid, name in enumerate(names, start=1):
        client.sock.send(make_query(name, qid=qid).to_wire())
        ids[qid] = name
    return ids


def collect(client: Client, count: int, timeout: float) -> dict[int, dns.message.Message]:
    replies: dict[int, dns.message.Message] = {}
    deadline = time.monotonic() + timeout
    while len(replies) < count and time.monotonic() < deadline:
        readable, _, _ = select.select([client.sock], [], [], 0.1)
        if readable:
            message = dns.message.from_wire(client.sock.recv(65535))
            replies[message.id] = message
    return replies


def test_namespace_deleted_with_forwarded_queries_in_flight(
    addresses: Addresses,
    make_netns: Callable[[], str],
    start_daemon: Callable[..., Daemon],
    scripted: Callable[..., ScriptedUpstream],
) -> None:
    host_upstream = scripted(addresses.take(), answer_with([RIGHT], delay=1.0, ttl=0))
    daemon = start_daemon([host_upstream.address], upstream_timeout=3.0, drain_timeout=2.0)
    keep, doomed = make_netns(), make_netns()
    # the doomed sandbox's own server, reached from inside it through sockets the daemon makes there
    scripted("127.0.0.1", answer_with([RIGHT], delay=1.0, ttl=0), netns=doomed)
    daemon.join(keep)
    with Client(keep) as client:
        assert client.ask("warm.test").addresses() == [RIGHT]
    baseline = open_fds(daemon.pid)
    daemon.join(doomed, dns=("127.0.0.1",))
    inode = os.stat(f"/run/netns/{doomed}").st_ino
    with Client(doomed) as client:
        assert client.ask("warm.test").addresses() == [RIGHT]
    assert sockets_by_netns(daemon.pid)[inode] > 2, "listeners and spare upstream sockets in the sandbox"

    names = [f"q{i}.inflight.test" for i in range(20)]
    with Client(keep) as keep_client, Client(doomed) as doomed_client:
        send_all(keep_client, names)
        send_all(doomed_client, names)
        subprocess.run(["ip", "netns", "del", doomed], check=True, timeout=30)
        kept = collect(keep_client, len(names), timeout=10)
        drained = collect(doomed_client, len(names), timeout=5)
    assert sorted(kept) == list(range(1, 21)), "the other sandbox lost queries"
    assert all([r.address for rr in m.answer for r in rr] == [RIGHT] for m in kept.values())
    assert sorted(drained) == list(range(1, 21)), "in-flight queries of the deleted sandbox were not drained"

    assert wait_until(lambda: daemon.status()["sandboxes"] == 1, timeout=10)
    assert wait_until(lambda: sockets_by_netns(daemon.pid)[inode] == 0, timeout=10), (
        f"{sockets_by_netns(daemon.pid)[inode]} sockets still hold the deleted namespace"
    )
    assert wait_until(lambda: open_fds(daemon.pid) <= baseline, timeout=10), (
        f"{open_fds(daemon.pid)} descriptors open, {baseline} before the sandbox joined"
    )
    with Client(keep) as client:
        assert client.ask("after.test").addresses() == [RIGHT]
    assert daemon.proc.poll() is None


def test_leave_while_a_query_still_has_in_sandbox_servers_to_try_makes_no_socket_there(
    make_netns: Callable[[], str],
    start_daemon: Callable[..., Daemon],
    scripted: Callable[..., ScriptedUpstream],
) -> None:
    """A query waits on four blackholed servers inside its sandbox (attempts 1.5 s apart) when the
    sandbox leaves: the later attempts and the health probes must not make sockets in it again (they
    kept 31 spare sockets, and with them the namespace, alive for ever)."""
    daemon = start_daemon(
        [], upstream_timeout=1.5, upstream_max_attempts=4, drain_timeout=0.2, upstream_probe_interval=0.3
    )
    netns = make_netns()
    servers = [scripted(f"127.0.0.{i}", silent, netns=netns) for i in (1, 2, 3, 4)]
    endpoint = daemon.join(netns, dns=tuple(server.address for server in servers))
    inode = os.stat(f"/run/netns/{netns}").st_ino
    with Client(netns) as client:
        client.sock.send(make_query("stuck.test").to_wire())
        assert wait_until(lambda: servers[0].count() == 1, timeout=5)
        daemon.leave(endpoint)
        time.sleep(5.0)  # past the time of every later attempt and of many probes
    assert [server.count() for server in servers] == [1, 0, 0, 0], "queries sent from a sandbox that left"
    assert sockets_by_netns(daemon.pid)[inode] == 0, "sockets still hold the namespace of a sandbox that left"
    assert daemon.proc.poll() is None
