"""TCP abuse against the running daemon (RFC 7766 sections 6.2.3 and 10; aardvark-dns CVE-2026-35406):
connections that send nothing, half a length prefix, a zero length, a length larger than what follows
(then silence, or a reset), thousands of idle connections, and more connections than a sandbox may hold.

For each: the daemon closes the connection by its idle timeout (or at once, for a zero length or a
connection over the cap), keeps answering other clients over UDP and TCP meanwhile, its open file count
returns to where it was, and its CPU time stops growing once the abuse ends (the CVE was a 100 % CPU loop
after a truncated frame and a reset).

The per-sandbox cap (`tcp.max_connections`, 64 by default) is enforced by accepting and closing at once:
the client sees EOF right away (and retries or falls back) instead of waiting in the listen backlog, and
the daemon holds at most the cap of connections per sandbox.

A client that pipelines queries and never reads the replies is not read from once its unsent replies
pass the transport's high-water mark, and is reset when it has not taken them within the idle timeout
(before, the daemon read on and buffered replies without bound: about 1.5 MiB more per second).
"""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import dns.flags
import dns.message
import dns.rcode
import pytest
from forwarding.conftest import Daemon
from forwarding.helpers import RESOLVER, Client, in_netns, rss_kib

IDLE = 1.0
GRACE = 5.0
QUIET_CPU = 0.2  # CPU seconds a quiet daemon may use in one second (a busy loop uses 1.0)
CLK_TCK = os.sysconf("SC_CLK_TCK")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (all threads), from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def cpu_while_quiet(pid: int, seconds: float = 1.0) -> float:
    before = cpu_seconds(pid)
    time.sleep(seconds)
    return cpu_seconds(pid) - before


def wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def accept_queue(netns: str) -> int:
    """Connections waiting in the resolver's TCP listen queue in `netns` (Recv-Q of the listener)."""
    result = subprocess.run(
        ["ip", "netns", "exec", netns, "ss", "-Hltn", "sport = :53"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    return sum(int(line.split()[1]) for line in result.stdout.splitlines() if line.strip())


def connect_many(netns: str, count: int, wave: int = 64) -> list[socket.socket]:
    """`count` TCP connections to the resolver from inside `netns`, in waves smaller than the listen
    backlog, each once the daemon has accepted the one before (a full backlog drops SYNs, and the
    client's retransmission, a second later, would make the flood slow rather than large)."""
    socks = in_netns(netns, lambda: [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)])
    try:
        for start in range(0, count, wave):
            for sock in socks[start : start + wave]:
                sock.settimeout(5)
                sock.connect(RESOLVER)
            assert wait_for(lambda: accept_queue(netns) == 0, GRACE), "the daemon stopped accepting"
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


def closed_within(socks: list[socket.socket], timeout: float) -> list[bool]:
    """For each socket: did the server close it (EOF or reset) within `timeout` seconds? Replies that
    arrive first are read and skipped. (epoll: there may be more sockets than select() takes.)"""
    closed = dict.fromkeys(socks, False)
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        for sock in socks:
            selector.register(sock, selectors.EVENT_READ)
        while selector.get_map() and (remaining := deadline - time.monotonic()) > 0:
            for key, _ in selector.select(remaining):
                sock = key.fileobj
                try:
                    data = sock.recv(65535, socket.MSG_DONTWAIT)  # type: ignore[union-attr]
                except BlockingIOError:
                    continue
                except ConnectionResetError:
                    data = b""
                if not data:
                    closed[sock] = True  # type: ignore[index]
                    selector.unregister(sock)
    return [closed[sock] for sock in socks]


def reset(sock: socket.socket) -> None:
    """Close with an RST (SO_LINGER 0) instead of a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@contextlib.contextmanager
def closing_all(socks: list[socket.socket]) -> Iterator[list[socket.socket]]:
    try:
        yield socks
    finally:
        for sock in socks:
            sock.close()


def served(client: Client, name: str, *, tcp: bool) -> bool:
    """The daemon answers `name A` to `client` (locally: NOERROR, authoritative)."""
    answer = client.ask(name, tcp=tcp, timeout=3)
    return answer.rcode == dns.rcode.NOERROR and bool(answer.message.flags & dns.flags.AA)


# (pattern, what the client sends before going quiet, reset after sending)
PATTERNS = [
    ("nothing", b"", False),
    ("half a length prefix", b"\x00", False),
    ("a zero length", b"\x00\x00", False),
    ("a length under a header", b"\x00\x05hello", False),
    ("a length larger than what follows", b"\x01\x00" + bytes(40), False),
    ("a length larger than what follows, then a reset", b"\x01\x00" + bytes(40), True),
    ("half a length prefix, then a reset", b"\x00", True),
    ("a whole query, then silence", None, False),
]


@dataclass
class World:
    """A daemon, the abused sandbox and a bystander sandbox on one network, with a client in each (made
    before any flood, so their sockets have low numbers) that asks for the other sandbox's name."""

    daemon: Daemon
    abused: str
    inside: Client
    outside: Client
    inside_asks: str
    outside_asks: str

    def answered(self, *, inside: bool, tcp: bool) -> bool:
        if inside:
            return served(self.inside, self.inside_asks, tcp=tcp)
        return served(self.outside, self.outside_asks, tcp=tcp)

    def answered_everywhere(self) -> list[str]:
        """Which of UDP and TCP, inside and outside, got no answer."""
        return [
            f"{'inside' if inside else 'outside'} over {'TCP' if tcp else 'UDP'}"
            for inside in (True, False)
            for tcp in (False, True)
            if not self.answered(inside=inside, tcp=tcp)
        ]


@pytest.fixture
def world(start_daemon: Callable, make_netns: Callable[[], str]) -> Iterator[Callable[..., World]]:
    """`world(**settings)`: a World whose daemon has these settings (the idle timeout IDLE by default)."""
    clients: list[Client] = []

    def make(**settings: object) -> World:
        daemon = start_daemon(**{"tcp_idle_timeout": IDLE, **settings})
        abused, bystander = make_netns(), make_netns()
        abused_name = "c" + daemon.join(abused)[:6]
        bystander_name = "c" + daemon.join(bystander)[:6]
        inside, outside = Client(abused), Client(bystander)
        clients.extend((inside, outside))
        made = World(daemon, abused, inside, outside, bystander_name, abused_name)
        assert not made.answered_everywhere()
        return made

    yield make
    for client in clients:
        client.close()


def _query_frame(name: str) -> bytes:
    wire = dns.message.make_query(name, "A").to_wire()
    return struct.pack("!H", len(wire)) + wire


def test_malformed_and_idle_connections_are_closed_while_others_are_served(world: Callable) -> None:
    w = world()
    baseline = open_fds(w.daemon.pid)
    per_pattern = 6
    with closing_all(connect_many(w.abused, per_pattern * len(PATTERNS))) as socks:
        groups = {p: socks[i * per_pattern : (i + 1) * per_pattern] for i, p in enumerate(PATTERNS)}
        for (_, payload, do_reset), group in groups.items():
            for sock in group:
                sock.sendall(_query_frame(w.inside_asks) if payload is None else payload)
                if do_reset:
                    reset(sock)
        # while they sit there, everybody else is answered, in the abused sandbox too
        assert not w.answered_everywhere(), f"no answer during the abuse: {w.answered_everywhere()}"
        watched = [(label, sock) for (label, _, rst), group in groups.items() if not rst for sock in group]
        closed = closed_within([sock for _, sock in watched], IDLE + GRACE)
        not_closed = [label for (label, _), done in zip(watched, closed, strict=True) if not done]
        assert not not_closed, f"connections left open past the idle timeout: {sorted(set(not_closed))}"
    assert wait_for(lambda: open_fds(w.daemon.pid) <= baseline, GRACE), (
        f"daemon holds {open_fds(w.daemon.pid)} fds, {baseline} before the abuse"
    )
    assert cpu_while_quiet(w.daemon.pid) < QUIET_CPU, "daemon still burns CPU after the abuse ended"
    assert w.answered(inside=True, tcp=True)


def test_thousands_of_idle_connections(world: Callable) -> None:
    count, idle = 2000, 4.0
    w = world(tcp_max_connections=count + 100, tcp_idle_timeout=idle)
    baseline = open_fds(w.daemon.pid)
    with closing_all(connect_many(w.abused, count)) as socks:
        held = open_fds(w.daemon.pid) - baseline
        assert held >= count // 2, f"daemon holds {held} of {count} connections (cap raised above them)"
        assert not w.answered_everywhere(), f"no answer during the flood: {w.answered_everywhere()}"
        still_open = closed_within(socks, idle + GRACE).count(False)
        assert still_open == 0, f"{still_open} of {count} idle connections outlived the idle timeout"
    assert wait_for(lambda: open_fds(w.daemon.pid) <= baseline, GRACE), (
        f"daemon holds {open_fds(w.daemon.pid)} fds, {baseline} before"
    )
    assert cpu_while_quiet(w.daemon.pid) < QUIET_CPU, "daemon still burns CPU after the connections closed"


def test_connections_over_the_cap_are_closed_at_once(world: Callable) -> None:
    cap, extra = 64, 136
    # a long idle timeout: any connection closed during this test was closed by the cap, not by idleness
    w = world(tcp_max_connections=cap, tcp_idle_timeout=60)
    baseline = open_fds(w.daemon.pid)
    with closing_all(connect_many(w.abused, cap + extra)) as socks:
        closed = closed_within(socks, 2.0).count(True)
        assert closed == extra, f"{closed} connections closed at once; {extra} are over the cap of {cap}"
        assert open_fds(w.daemon.pid) <= baseline + cap, "the daemon holds more connections than its cap"
        assert w.answered(inside=True, tcp=False), "UDP not answered in the sandbox at its TCP cap"
        assert w.answered(inside=False, tcp=True), "TCP not answered in another sandbox"
        with closing_all(connect_many(w.abused, 1)) as (late,):
            assert closed_within([late], 2.0) == [True], "a connection over the cap was not closed at once"
    assert wait_for(lambda: open_fds(w.daemon.pid) <= baseline, GRACE)
    assert w.answered(inside=True, tcp=True), "TCP not answered once the connections closed"


def test_a_client_that_never_reads_its_replies_is_cut_off(world: Callable) -> None:
    idle, flood = 2.0, 8.0
    w = world(tcp_idle_timeout=idle)
    baseline, rss_before = open_fds(w.daemon.pid), rss_kib(w.daemon.pid)
    burst = _query_frame(w.inside_asks) * 1000
    with closing_all(connect_many(w.abused, 1)) as (sock,):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        sent = 0
        deadline = time.monotonic() + flood
        with contextlib.suppress(ConnectionError):
            while time.monotonic() < deadline:
                try:
                    sent += sock.send(burst)
                except BlockingIOError:
                    time.sleep(0.01)
        growth = (rss_kib(w.daemon.pid) - rss_before) / 1024
        # the client still holds its end: the daemon must have let go of its own
        assert wait_for(lambda: open_fds(w.daemon.pid) <= baseline, idle + GRACE), (
            f"the daemon still holds the connection after {sent} bytes of queries whose replies nobody read"
        )
        assert not w.answered_everywhere(), "others not answered next to the stalled connection"
    assert growth < 16, f"the daemon grew {growth:.1f} MiB for a client that reads nothing"
