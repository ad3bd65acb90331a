"""Helpers of the forwarding tests: sockets made inside network namespaces, a DNS client that talks to
127.0.0.11 from inside a sandbox, a scripted upstream server whose behaviour each test controls (and
which records every query it receives), and builders of upstream replies.

Namespaces are entered by a short-lived thread that calls setns(2) and creates the socket there; a socket
keeps the namespace it was created in, so the test thread uses it afterwards without switching.
"""

from __future__ import annotations

import contextlib
import ctypes
import heapq
import itertools
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
RESOLVER = ("127.0.0.11", 53)
SO_RCVBUFFORCE = 33
_libc = ctypes.CDLL(None, use_errno=True)


# ---- namespaces ---------------------------------------------------------------------------------------


def in_netns(netns: str | None, fn: Callable[[], T]) -> T:
    """Run `fn` in a fresh thread that has joined network namespace `netns` (None: the current one)."""
    if netns is None:
        return fn()
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            fd = os.open(f"/run/netns/{netns}", os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    errno = ctypes.get_errno()
                    raise OSError(errno, f"setns({netns}): {os.strerror(errno)}")
            finally:
                os.close(fd)
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=run, name=f"netns-{netns}")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def netns_socket(netns: str | None, kind: int, family: int = socket.AF_INET) -> socket.socket:
    """A socket created inside `netns` (None: the test's own namespace)."""
    return in_netns(netns, lambda: socket.socket(family, kind))


def big_receive_buffer(sock: socket.socket, size: int = 8 << 20) -> None:
    """Raise the receive buffer past rmem_max (we are root), so bursts of replies are not dropped."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


# ---- client -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """A reply as the client saw it: the parsed message, its raw bytes and the round-trip time."""

    message: dns.message.Message
    wire: bytes
    elapsed: float

    @property
    def rcode(self) -> int:
        return self.message.rcode()

    def addresses(self) -> list[str]:
        """The A/AAAA addresses of the answer section, in order."""
        return [
            rdata.address
            for rrset in self.message.answer
            if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA)
            for rdata in rrset
        ]

    def ttls(self) -> list[int]:
        return [rrset.ttl for rrset in self.message.answer]


def make_query(
    name: str, rdtype: str = "A", *, edns: bool = False, qid: int | None = None
) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype, use_edns=0 if edns else False, payload=1232)
    if qid is not None:
        query.id = qid
    return query


class Client:
    """A DNS client inside a sandbox, asking 127.0.0.11:53 over UDP (one socket) or TCP (per query)."""

    def __init__(self, netns: str, server: tuple[str, int] = RESOLVER) -> None:
        self.netns = netns
        self.server = server
        self.sock = netns_socket(netns, socket.SOCK_DGRAM)
        self.sock.connect(server)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def ask(
        self, name: str, rdtype: str = "A", *, tcp: bool = False, edns: bool = False, timeout: float = 5.0
    ) -> Answer:
        query = make_query(name, rdtype, edns=edns)
        return self.exchange_tcp(query, timeout) if tcp else self.exchange_udp(query, timeout)

    def exchange_udp(self, query: dns.message.Message, timeout: float = 5.0) -> Answer:
        started = time.monotonic()
        deadline = started + timeout
        self.sock.send(query.to_wire())
        while True:
            remaining = deadline - time.monotonic()
            readable, _, _ = select.select([self.sock], [], [], max(0.0, remaining))
            if not readable:
                raise TimeoutError(f"no UDP reply to {query.question[0]} from {self.netns} in {timeout} s")
            wire = self.sock.recv(65535)
            if wire[:2] == struct.pack("!H", query.id):
                return Answer(dns.message.from_wire(wire), wire, time.monotonic() - started)

    def exchange_tcp(self, query: dns.message.Message, timeout: float = 5.0) -> Answer:
        started = time.monotonic()
        with contextlib.closing(netns_socket(self.netns, socket.SOCK_STREAM)) as sock:
            sock.settimeout(timeout)
            sock.connect(self.server)
            data = query.to_wire()
            sock.sendall(struct.pack("!H", len(data)) + data)
            size = struct.unpack("!H", recv_exactly(sock, 2))[0]
            wire = recv_exactly(sock, size)
        return Answer(dns.message.from_wire(wire), wire, time.monotonic() - started)


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("connection closed before the whole message arrived")
        data += chunk
    return data


# ---- scripted upstream --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Send:
    """One datagram (or TCP message) the scripted server sends in reply, `delay` seconds after the query
    arrived; `from_other_port` sends it from a second socket on the same address but another port, `via`
    from a socket of the test's own (another address, say)."""

    wire: bytes
    delay: float = 0.0
    from_other_port: bool = False
    via: socket.socket | None = None


@dataclass(frozen=True)
class Received:
    """One query as the scripted server received it."""

    transport: str
    qname: str
    qtype: int
    qid: int
    source: tuple[str, int]
    when: float


Handler = Callable[[dns.message.Message, str], list[Send]]


class _Scheduler:
    """Sends delayed datagrams from one thread, in time order."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, socket.socket, bytes, tuple[str, int]]] = []
        self._seq = itertools.count()
        self._cv = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="scripted-scheduler", daemon=True)
        self._thread.start()

    def at(self, when: float, sock: socket.socket, wire: bytes, dest: tuple[str, int]) -> None:
        with self._cv:
            heapq.heappush(self._heap, (when, next(self._seq), sock, wire, dest))
            self._cv.notify()

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._stopped and (not self._heap or self._heap[0][0] > time.monotonic()):
                    wait = self._heap[0][0] - time.monotonic() if self._heap else None
                    self._cv.wait(wait)
                if self._stopped:
                    return
                _, _, sock, wire, dest = heapq.heappop(self._heap)
            with contextlib.suppress(OSError):
                sock.sendto(wire, dest)

    def stop(self) -> None:
        with self._cv:
            self._stopped = True
            self._cv.notify()
        self._thread.join(5)


class ScriptedUpstream:
    """A DNS server on `address`:53 (UDP and TCP), optionally inside a namespace, that answers each
    query with what `handler(query, transport)` returns and records every query it receives."""

    def __init__(self, address: str, handler: Handler, netns: str | None = None) -> None:
        self.address = address
        self.netns = netns
        self.handler = handler
        self.received: list[Received] = []
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.udp = netns_socket(netns, socket.SOCK_DGRAM)
        self.alt = netns_socket(netns, socket.SOCK_DGRAM)
        self.tcp = netns_socket(netns, socket.SOCK_STREAM)
        try:
            big_receive_buffer(self.udp)
            self.udp.bind((address, 53))
            self.alt.bind((address, 0))
            self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.tcp.bind((address, 53))
            self.tcp.listen(64)
        except OSError:
            self._close_sockets()
            raise
        self.alt_port = self.alt.getsockname()[1]
        self._scheduler = _Scheduler()
        self._threads = [
            threading.Thread(target=self._serve_udp, name=f"scripted-udp-{address}", daemon=True),
            threading.Thread(target=self._serve_tcp, name=f"scripted-tcp-{address}", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    # what the tests read

    def count(self, transport: str | None = None) -> int:
        with self._lock:
            return sum(1 for r in self.received if transport is None or r.transport == transport)

    def queries(self) -> list[Received]:
        with self._lock:
            return list(self.received)

    def reset(self) -> None:
        with self._lock:
            self.received.clear()

    # serving

    def _record(self, query: dns.message.Message, transport: str, source: tuple[str, int]) -> None:
        question = query.question[0]
        with self._lock:
            self.received.append(
                Received(
                    transport, question.name.to_text(), question.rdtype, query.id, source, time.monotonic()
                )
            )

    def _plan(self, data: bytes, transport: str, source: tuple[str, int]) -> list[Send]:
        try:
            query = dns.message.from_wire(data)
        except Exception as exc:
            self.errors.append(exc)
            return []
        if not query.question:
            return []
        self._record(query, transport, source)
        try:
            return self.handler(query, transport)
        except Exception as exc:
            self.errors.append(exc)
            return []

    def _serve_udp(self) -> None:
        while not self._stop.is_set():
            readable, _, _ = select.select([self.udp], [], [], 0.1)
            if not readable:
                continue
            try:
                data, source = self.udp.recvfrom(65535)
            except OSError:
                return
            arrived = time.monotonic()
            for step in self._plan(data, "udp", source):
                sock = step.via or (self.alt if step.from_other_port else self.udp)
                if step.delay <= 0:
                    with contextlib.suppress(OSError):
                        sock.sendto(step.wire, source)
                else:
                    self._scheduler.at(arrived + step.delay, sock, step.wire, source)

    def _serve_tcp(self) -> None:
        while not self._stop.is_set():
            readable, _, _ = select.select([self.tcp], [], [], 0.1)
            if not readable:
                continue
            try:
                conn, source = self.tcp.accept()
            except OSError:
                return
            threading.Thread(target=self._serve_connection, args=(conn, source), daemon=True).start()

    def _serve_connection(self, conn: socket.socket, source: tuple[str, int]) -> None:
        with contextlib.closing(conn):
            conn.settimeout(5)
            try:
                while not self._stop.is_set():
                    size = struct.unpack("!H", recv_exactly(conn, 2))[0]
                    data = recv_exactly(conn, size)
                    arrived = time.monotonic()
                    for step in self._plan(data, "tcp", source):
                        pause = arrived + step.delay - time.monotonic()
                        if pause > 0:
                            time.sleep(pause)
                        conn.sendall(struct.pack("!H", len(step.wire)) + step.wire)
            except (OSError, ConnectionError, struct.error):
                return

    def _close_sockets(self) -> None:
        for sock in (self.udp, self.alt, self.tcp):
            sock.close()

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5)
        self._scheduler.stop()
        self._close_sockets()


# ---- reply builders -----------------------------------------------------------------------------------


def response(query: dns.message.Message, rcode: int = dns.rcode.NOERROR) -> dns.message.Message:
    """A response to `query` (its id and question), RA set, EDNS mirrored as dnspython does."""
    reply = dns.message.make_response(query)
    reply.flags |= dns.flags.RA
    reply.set_rcode(rcode)
    return reply


def a_reply(query: dns.message.Message, addresses: Iterable[str], ttl: int = 300) -> bytes:
    """A NOERROR answer to `query` with one A rrset owned by the question name."""
    reply = response(query)
    addresses = list(addresses)
    if addresses:
        reply.answer.append(dns.rrset.from_text(query.question[0].name, ttl, "IN", "A", *addresses))
    return reply.to_wire()


def soa_rrset(zone: str, ttl: int, minimum: int) -> dns.rrset.RRset:
    return dns.rrset.from_text(
        zone, ttl, "IN", "SOA", f"ns1.{zone} hostmaster.{zone} 2024010101 3600 600 86400 {minimum}"
    )


def nxdomain_reply(query: dns.message.Message, zone: str, ttl: int, minimum: int) -> bytes:
    reply = response(query, dns.rcode.NXDOMAIN)
    reply.authority.append(soa_rrset(zone, ttl, minimum))
    return reply.to_wire()


def answer_with(addresses: Iterable[str], ttl: int = 300, delay: float = 0.0) -> Handler:
    """A handler answering every query with the same A addresses (after `delay` seconds)."""
    fixed = list(addresses)

    def handle(query: dns.message.Message, _transport: str) -> list[Send]:
        return [Send(a_reply(query, fixed, ttl), delay)]

    return handle


def silent(_query: dns.message.Message, _transport: str) -> list[Send]:
    """A handler that reads every query and never answers: a blackholed server."""
    return []


# ---- daemon state -------------------------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    """Resident set size of process `pid`, from /proc/PID/status (VmRSS, in KiB)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise LookupError(f"no VmRSS in /proc/{pid}/status")


def metric_sum(text: str, name: str) -> float:
    """The sum of every sample of metric `name` (all label sets) in Prometheus text `text`."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        sample, _, value = line.rpartition(" ")
        if sample.split("{", 1)[0] == name:
            total += float(value)
    return total


@dataclass
class LoadResult:
    """What a burst of queries got back: replies by rcode, and the ids that never got one."""

    rcodes: dict[int, int] = field(default_factory=dict)
    lost: list[int] = field(default_factory=list)
    mismatched: int = 0
    elapsed: float = 0.0

    @property
    def answered(self) -> int:
        return sum(self.rcodes.values())


def load(
    netns: str, names: list[str], window: int, timeout: float = 10.0, expect_address: str | None = None
) -> LoadResult:
    """Send one A query per name from inside `netns` over one UDP socket, keeping at most `window`
    unanswered at a time; wait up to `timeout` seconds without progress before calling the rest lost.
    Replies are matched by id (the query's index); a NOERROR reply must carry `expect_address`."""
    if len(names) > 65536:
        raise ValueError("at most 65536 queries per load run (one id each)")
    result = LoadResult()
    sock = netns_socket(netns, socket.SOCK_DGRAM)
    with contextlib.closing(sock):
        big_receive_buffer(sock)
        sock.connect(RESOLVER)
        pending: set[int] = set()
        sent = 0
        started = time.monotonic()
        last_progress = started
        while sent < len(names) or pending:
            while sent < len(names) and len(pending) < window:
                sock.send(make_query(names[sent], qid=sent).to_wire())
                pending.add(sent)
                sent += 1
            readable, _, _ = select.select([sock], [], [], 0.5)
            if not readable:
                if time.monotonic() - last_progress > timeout:
                    break
                continue
            while True:
                try:
                    wire = sock.recv(65535, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    break
                reply = dns.message.from_wire(wire)
                question_ok = (
                    reply.id < len(names)
                    and bool(reply.question)
                    and reply.question[0].name == dns.name.from_text(names[reply.id])
                )
                if reply.id not in pending or not question_ok:
                    result.mismatched += 1
                    continue
                if (
                    expect_address is not None
                    and reply.rcode() == dns.rcode.NOERROR
                    and [r.address for rr in reply.answer for r in rr] != [expect_address]
                ):
                    result.mismatched += 1
                pending.discard(reply.id)
                result.rcodes[reply.rcode()] = result.rcodes.get(reply.rcode(), 0) + 1
                last_progress = time.monotonic()
        result.lost = sorted(pending)
        result.elapsed = time.monotonic() - started
    return result
