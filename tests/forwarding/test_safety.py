"""Safety against forged answers (RFC 5452): replies with a wrong id, a wrong question, from a wrong
source port or from another address are ignored and the wait goes on; upstream ids and source ports are
unpredictable; identical questions in flight share one upstream query and every client gets its own id
and spelling back."""

from __future__ import annotations

import random
import select
import socket
import time
from collections.abc import Callable, Iterator

import dns.message
import dns.rcode
import pytest

from .conftest import Addresses, Daemon
from .helpers import Client, Handler, ScriptedUpstream, Send, a_reply, answer_with, make_query

pytestmark = pytest.mark.netns

FORGED = "6.6.6.6"
RIGHT = "1.2.3.4"


@pytest.fixture
def impostor(addresses: Addresses) -> Iterator[socket.socket]:
    """A UDP socket on port 53 of another loopback address: replies from the wrong server."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((addresses.take(), 53))
        yield sock


def forged_replies(query: dns.message.Message, impostor: socket.socket) -> list[Send]:
    """Replies an off-path attacker (or a broken server) might send; each carries FORGED."""
    name = query.question[0].name
    wrong_id = dns.message.make_query(name, "A")
    wrong_id.id = (query.id + 1) % 65536
    wrong_name = dns.message.make_query("elsewhere.test", "A")
    wrong_name.id = query.id
    wrong_type = dns.message.make_query(name, "MX")
    wrong_type.id = query.id
    return [
        Send(a_reply(wrong_id, [FORGED])),
        Send(a_reply(wrong_name, [FORGED]), delay=0.02),
        Send(a_reply(wrong_type, [FORGED]), delay=0.04),
        Send(a_reply(query, [FORGED]), delay=0.06, from_other_port=True),
        Send(a_reply(query, [FORGED]), delay=0.08, via=impostor),
    ]


def test_forged_replies_are_ignored_until_the_right_one(
    addresses: Addresses,
    impostor: socket.socket,
    make_netns: Callable[[], str],
    start_daemon: Callable[..., Daemon],
    scripted: Callable[..., ScriptedUpstream],
) -> None:
    def handle(query: dns.message.Message, _transport: str) -> list[Send]:
        return [*forged_replies(query, impostor), Send(a_reply(query, [RIGHT]), delay=0.15)]

    upstream = scripted(addresses.take(), handle)
    daemon = start_daemon([upstream.address], upstream_timeout=1.0)
    netns = make_netns()
    daemon.join(netns)

    with Client(netns) as client:
        answers = [client.ask(f"target{i}.test") for i in range(5)]
        # nothing else arrives for the client after its one answer
        time.sleep(0.2)
        readable, _, _ = select.select([client.sock], [], [], 0)
    for answer in answers:
        assert answer.rcode == dns.rcode.NOERROR
        assert answer.addresses() == [RIGHT]
        assert answer.ttls() == [300]
        assert len(answer.message.answer) == 1
    assert readable == []
    assert upstream.count() == 5  # one attempt each: the forged replies did not end the wait


def test_only_forged_replies_give_servfail(
    addresses: Addresses,
    impostor: socket.socket,
    make_netns: Callable[[], str],
    start_daemon: Callable[..., Daemon],
    scripted: Callable[..., ScriptedUpstream],
) -> None:
    upstream = scripted(addresses.take(), lambda query, _t: forged_replies(query, impostor))
    daemon = start_daemon([upstream.address], upstream_timeout=0.5)
    netns = make_netns()
    daemon.join(netns)

    with Client(netns) as client:
        answer = client.ask("target.test")
    assert answer.rcode == dns.rcode.SERVFAIL
    assert answer.addresses() == []
    assert upstream.count() == 1


def test_upstream_ids_and_source_ports_are_unpredictable(
    behind_scripted: Callable[[Handler], tuple[ScriptedUpstream, Daemon, str]],
) -> None:
    upstream, _daemon, netns = behind_scripted(answer_with([RIGHT]))

    client_ids = []
    with Client(netns) as client:
        for i in range(30):
            query = make_query(f"r{i}.test", qid=1000 + i)
            client_ids.append(query.id)
            assert client.exchange_udp(query).addresses() == [RIGHT]
    seen = upstream.queries()
    assert len(seen) == 30
    ids = [q.qid for q in seen]
    ports = [q.source[1] for q in seen]
    assert len(set(ids)) >= 28, ids
    assert len(set(ports)) >= 28, ports
    assert ids != client_ids  # not the client's ids passed through
    assert sorted(ids) != ids  # not a counter
    assert [q.qname for q in seen] == [f"r{i}.test." for i in range(30)]


def random_case(name: str, rng: random.Random) -> str:
    return "".join(c.upper() if rng.random() < 0.5 else c.lower() for c in name)


def test_identical_concurrent_questions_share_one_upstream_query(
    behind_scripted: Callable[[Handler], tuple[ScriptedUpstream, Daemon, str]],
) -> None:
    upstream, _daemon, netns = behind_scripted(answer_with([RIGHT], delay=0.3))

    rng = random.Random(4)
    ids = rng.sample(range(65536), 50)
    spelling = {qid: random_case("together.example.test", rng) for qid in ids}
    replies: dict[int, dns.message.Message] = {}
    with Client(netns) as client:
        for qid in ids:
            client.sock.send(make_query(spelling[qid], qid=qid).to_wire())
        deadline = time.monotonic() + 5
        while len(replies) < 50 and time.monotonic() < deadline:
            readable, _, _ = select.select([client.sock], [], [], 0.2)
            if readable:
                message = dns.message.from_wire(client.sock.recv(65535))
                assert message.id not in replies, f"two replies for id {message.id}"
                replies[message.id] = message
    assert sorted(replies) == sorted(ids)
    for qid, message in replies.items():
        assert message.rcode() == dns.rcode.NOERROR
        assert message.question[0].name.to_text() == spelling[qid] + "."
        assert [r.address for rrset in message.answer for r in rrset] == [RIGHT]
    assert upstream.count() == 1
