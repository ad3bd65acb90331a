"""Entering network namespaces and creating sockets inside them.

This module owns every namespace switch in the daemon. Rules it keeps:

* Only the single thread of a `NamespaceWorker` ever calls setns(2). The asyncio loop thread never
  changes namespace; it awaits `NamespaceWorker.arun_in`.
* That thread is created eagerly, in the constructing thread's (host) namespace, before anything switches,
  and the executor never spawns another one (max_workers=1). A thread born while switched would stay in the
  container's namespace for good.
* The home namespace is saved through ``/proc/thread-self/ns/net`` (never ``/proc/self``, which is the
  thread-group leader). After every call the thread switches back in a ``finally`` and checks that it is
  home; if that fails the worker is marked broken and refuses further work.
* Target namespaces are only opened, never created (no O_CREAT, unlike pyroute2's default).
* Functions run inside a namespace must be plain, short, blocking callables: nothing may ``await`` or start
  threads while switched.
* Sockets keep their namespace alive: callers must close `Listeners` when a sandbox leaves.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import errno
import fcntl
import inspect
import ipaddress
import os
import socket
import struct
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = [
    "CLONE_NEWNET",
    "NETNS_RUN_DIR",
    "Listeners",
    "NamespaceError",
    "NamespaceWorker",
    "WorkerBrokenError",
    "aopen_listeners_in",
    "current_netns_identity",
    "ensure_loopback_up",
    "netns_identity",
    "netns_path",
    "open_listeners",
    "open_listeners_in",
    "socket_netns_identity",
]

T = TypeVar("T")
Identity = tuple[int, int]

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = "/run/netns"
THREAD_NETNS = "/proc/thread-self/ns/net"

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
SIOCGSKNS = 0x894C
IFF_UP = 0x1
_IFREQ = struct.Struct("16sH22x")  # struct ifreq: name[16] + ifr_flags (short) padded to 40 bytes

_NAME_MAX = 255
_PORT_ATTEMPTS = 8

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.setns.argtypes = (ctypes.c_int, ctypes.c_int)
_libc.setns.restype = ctypes.c_int


class NamespaceError(Exception):
    """A network namespace could not be opened or entered."""


class WorkerBrokenError(NamespaceError):
    """The worker thread could not return to its home namespace; the worker is unusable."""


# ---------------------------------------------------------------------------------------------------------
# Paths and identities


def netns_path(netns: str) -> str:
    """Map a bare ``ip netns`` name to ``/run/netns/NAME``; keep an absolute path as it is.

    Raises ValueError for names that could escape /run/netns or are not valid ``ip netns`` names.
    """
    if not isinstance(netns, str) or not netns:
        raise ValueError(f"network namespace must be a non-empty string, got {netns!r}")
    if "\0" in netns:
        raise ValueError(f"network namespace {netns!r} contains a NUL byte")
    if netns.startswith("/"):
        if ".." in netns.split("/"):
            raise ValueError(f"network namespace path {netns!r} must not contain '..'")
        return netns
    if "/" in netns:
        raise ValueError(f"network namespace name {netns!r} must not contain '/' (use an absolute path)")
    if netns in (".", ".."):
        raise ValueError(f"network namespace name {netns!r} is not allowed")
    if len(netns) > _NAME_MAX:
        raise ValueError(f"network namespace name is longer than {_NAME_MAX} characters")
    return f"{NETNS_RUN_DIR}/{netns}"


def netns_identity(path: str) -> Identity | None:
    """(st_dev, st_ino) of a namespace file, or None when it is gone.

    Two namespaces alive at the same time never share an identity. A freed namespace's inode number can be
    reused, so compare identities while something (our sockets) still pins the old namespace.
    """
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError, ProcessLookupError):
        return None
    return (st.st_dev, st.st_ino)


def current_netns_identity() -> Identity:
    """(st_dev, st_ino) of the calling thread's network namespace."""
    st = os.stat(THREAD_NETNS)
    return (st.st_dev, st.st_ino)


def socket_netns_identity(sock: socket.socket) -> Identity:
    """(st_dev, st_ino) of the namespace a socket lives in (ioctl SIOCGSKNS)."""
    ns_fd = fcntl.ioctl(sock.fileno(), SIOCGSKNS)
    try:
        st = os.fstat(ns_fd)
    finally:
        os.close(ns_fd)
    return (st.st_dev, st.st_ino)


# ---------------------------------------------------------------------------------------------------------
# setns


def _setns(fd: int) -> None:
    """Move the calling thread into the network namespace behind fd; OSError on failure."""
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _open_netns(path: str) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NamespaceError(f"network namespace {path} does not exist") from None
    except OSError as exc:
        raise NamespaceError(f"cannot open network namespace {path}: {exc.strerror}") from exc


def _enter_netns(fd: int, path: str) -> None:
    try:
        _setns(fd)
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            raise NamespaceError(f"{path} is not a network namespace (setns: EINVAL)") from exc
        raise NamespaceError(f"setns into network namespace {path} failed: {exc.strerror}") from exc


class NamespaceWorker:
    """One dedicated thread that runs callables inside a target network namespace and switches back.

    Construct it from a thread that is in the host namespace (normally the main thread at startup).
    Calls are serialised: one namespace operation at a time.
    """

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="netns-worker")
        self._broken: str | None = None
        self._closed = False
        self._thread_ident = 0
        self._home_fd = -1
        self._home: Identity = (0, 0)
        # Submitting once forces the executor to create its only thread now, in our namespace.
        try:
            self._executor.submit(self._bootstrap).result()
        except BaseException:
            self._executor.shutdown(wait=True)
            raise

    def _bootstrap(self) -> None:
        self._thread_ident = threading.get_ident()
        self._home_fd = os.open(THREAD_NETNS, os.O_RDONLY | os.O_CLOEXEC)
        self._home = current_netns_identity()

    @property
    def home_identity(self) -> Identity:
        """Identity of the namespace the worker thread returns to after every call."""
        return self._home

    @property
    def broken(self) -> bool:
        return self._broken is not None

    def thread_netns_identity(self) -> Identity:
        """Identity of the worker thread's namespace right now, measured inside the worker thread."""
        self._check_usable()
        return self._executor.submit(current_netns_identity).result()

    def run_in(self, netns: str, fn: Callable[..., T], *args: Any) -> T:
        """Run fn(*args) inside netns (a name or a path) and return its result. Blocks."""
        self._check_usable(fn)
        if threading.get_ident() == self._thread_ident:
            raise RuntimeError("NamespaceWorker.run_in called from its own thread (would deadlock)")
        return self._executor.submit(self._call, netns_path(netns), fn, args).result()

    async def arun_in(self, netns: str, fn: Callable[..., T], *args: Any) -> T:
        """Run fn(*args) inside netns from the asyncio loop without blocking it.

        If the awaiting task is cancelled, fn still runs to completion and its result is dropped.
        """
        self._check_usable(fn)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._call, netns_path(netns), fn, args)

    def close(self) -> None:
        """Wait for queued calls, stop the thread, release the home namespace fd. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._executor.shutdown(wait=True)
        if self._home_fd >= 0:
            os.close(self._home_fd)
            self._home_fd = -1

    def __enter__(self) -> NamespaceWorker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- worker-thread side ---------------------------------------------------------------------------

    def _check_usable(self, fn: Callable[..., Any] | None = None) -> None:
        if fn is not None and inspect.iscoroutinefunction(fn):
            raise TypeError("functions run inside a namespace must be plain callables, not coroutines")
        if self._closed:
            raise RuntimeError("NamespaceWorker is closed")
        if self._broken is not None:
            raise WorkerBrokenError(self._broken)

    def _call(self, path: str, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        if self._broken is not None:
            raise WorkerBrokenError(self._broken)
        target = _open_netns(path)
        try:
            _enter_netns(target, path)
        finally:
            os.close(target)
        try:
            return fn(*args)
        finally:
            self._return_home(path)

    def _return_home(self, path: str) -> None:
        try:
            _setns(self._home_fd)
            ok = current_netns_identity() == self._home
            reason = "thread is not in its home namespace after setns"
        except OSError as exc:
            ok, reason = False, f"setns back to the home namespace failed: {exc.strerror}"
        if not ok:
            self._broken = f"namespace worker is broken: after running in {path}, {reason}"
            raise WorkerBrokenError(self._broken)


# ---------------------------------------------------------------------------------------------------------
# Work done inside a namespace (call these through NamespaceWorker.run_in / arun_in)


def ensure_loopback_up() -> bool:
    """Bring ``lo`` up in the calling thread's namespace. Returns True if it was down."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as ctl:
        req = fcntl.ioctl(ctl.fileno(), SIOCGIFFLAGS, _IFREQ.pack(b"lo", 0))
        flags = _IFREQ.unpack(req)[1]
        if flags & IFF_UP:
            return False
        fcntl.ioctl(ctl.fileno(), SIOCSIFFLAGS, _IFREQ.pack(b"lo", flags | IFF_UP))
        return True


@dataclass
class Listeners:
    """The UDP and TCP listening sockets of one sandbox (both on the same port)."""

    udp: socket.socket
    tcp: socket.socket
    port: int

    def close(self) -> None:
        self.udp.close()
        self.tcp.close()


def _family(address: str) -> socket.AddressFamily:
    version = ipaddress.ip_address(address).version
    return socket.AF_INET6 if version == 6 else socket.AF_INET


def _udp_socket(family: socket.AddressFamily, address: str, port: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
    try:
        sock.bind((address, port))
    except BaseException:
        sock.close()
        raise
    return sock


def _tcp_socket(family: socket.AddressFamily, address: str, port: int, backlog: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def _bind_pair(family: socket.AddressFamily, address: str, port: int, backlog: int) -> Listeners:
    udp = _udp_socket(family, address, port)
    try:
        bound = udp.getsockname()[1]
        tcp = _tcp_socket(family, address, bound, backlog)
    except BaseException:
        udp.close()
        raise
    return Listeners(udp=udp, tcp=tcp, port=bound)


def open_listeners(address: str = "127.0.0.11", port: int = 53, tcp_backlog: int = 128) -> Listeners:
    """Bring lo up, then bind UDP and TCP on address:port in the calling thread's namespace.

    With port=0 (redirect mode) UDP gets an ephemeral port and TCP binds the same number; if TCP's is
    taken, both are retried with a new ephemeral port. Sockets are non-blocking and close-on-exec.
    """
    family = _family(address)
    ensure_loopback_up()
    if port != 0:
        return _bind_pair(family, address, port, tcp_backlog)
    for _ in range(_PORT_ATTEMPTS - 1):
        try:
            return _bind_pair(family, address, 0, tcp_backlog)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
    return _bind_pair(family, address, 0, tcp_backlog)


def open_listeners_in(
    worker: NamespaceWorker,
    netns: str,
    address: str = "127.0.0.11",
    port: int = 53,
    tcp_backlog: int = 128,
) -> Listeners:
    """open_listeners() inside netns (a name or a path). Blocks."""
    return worker.run_in(netns, open_listeners, address, port, tcp_backlog)


async def aopen_listeners_in(
    worker: NamespaceWorker,
    netns: str,
    address: str = "127.0.0.11",
    port: int = 53,
    tcp_backlog: int = 128,
) -> Listeners:
    """open_listeners() inside netns, from the asyncio loop. Sockets are closed if the caller is cancelled."""
    fut = asyncio.ensure_future(worker.arun_in(netns, open_listeners, address, port, tcp_backlog))
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        fut.add_done_callback(_close_orphaned)
        raise


def _close_orphaned(fut: asyncio.Future[Listeners]) -> None:
    if not fut.cancelled() and fut.exception() is None:
        fut.result().close()
