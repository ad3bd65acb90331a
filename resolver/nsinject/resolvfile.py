"""Reading, rewriting and restoring a sandbox's ``resolv.conf`` file (thin I/O around ``resolvconf``).

This module owns every read and write of a sandbox's ``resolv.conf``. Rules it keeps:

* Written in place, never replaced: the file is often a bind mount, which pins the inode, so a rename
  would leave the sandbox looking at the old file. The same descriptor that read the file writes it
  (rewind, write, truncate to the new length). No fsync: the file serves a live namespace, which a
  machine crash ends anyway, and a daemon crash loses nothing the kernel already holds.
* Only regular files are touched. The final component is opened with ``O_NOFOLLOW`` and ``O_NONBLOCK``
  (a FIFO cannot hang the daemon), and the descriptor must be a regular file (a device node cannot be
  written to). Under ``/proc/PID/root/`` the sandbox controls the tree, so every component below the
  root is opened with ``O_NOFOLLOW`` relative to its parent and ``..`` is refused: an absolute symlink
  inside the container can never make the daemon write a host file.
* Files larger than ``MAX_SIZE`` are refused (a sandbox could offer a huge file).
* A missing file is created (mode 0644, and its directory if needed) only for ``/etc/netns/NAME/``
  paths, or when the caller asks; its servers then come from ``fallback_text``, normally the host's
  ``/etc/resolv.conf``, which is what ``ip netns exec`` would have shown.
* A file that already carries our footer (a restarted daemon re-attaching) keeps its recorded original
  servers; the resolver's own address is never taken as an upstream.
* Restoring never overwrites a file the user edited after we wrote it (its digest changed).
* Text is bytes decoded as UTF-8 with ``surrogateescape``, so any original is restored byte for byte.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import stat
from dataclasses import dataclass
from typing import Any, Literal

from resolver.nsinject.resolvconf import RESOLVER_ADDRESS, parse, recover_original, render_plain, sandbox_file

MAX_SIZE = 64 * 1024
FILE_MODE = 0o644
DIR_MODE = 0o755
NETNS_ETC = "/etc/netns"

RestoreResult = Literal["restored", "removed", "user-modified", "missing"]

_PROC_ROOT = re.compile(r"(/proc/[^/]+/root)(/.*)")
_PROC_NETNS = re.compile(r"/proc/([0-9]+|self|thread-self)/ns/net")
_RUN_NETNS = re.compile(r"(?:/var)?/run/netns/([^/]+)")
_NETNS_FILE = re.compile(re.escape(NETNS_ETC) + r"/[^/]+/resolv\.conf")
_DIGEST = re.compile(r"[0-9a-f]{64}")
_OPEN_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafeFileError(OSError):
    """The path is not a regular file we may rewrite (FIFO, device, too large, ``..`` below a root)."""


# --- paths -----------------------------------------------------------------------------------------


def resolv_conf_path_for(netns: str, explicit: str | None = None) -> str:
    """Where the sandbox of ``netns`` reads its ``resolv.conf``; ``explicit`` wins when given.

    ``/run/netns/NAME`` or ``NAME`` -> ``/etc/netns/NAME/resolv.conf`` (what ``ip netns exec`` mounts);
    ``/proc/PID/ns/net`` -> ``/proc/PID/root/etc/resolv.conf``. Anything else needs ``explicit``.
    """
    if explicit:
        return explicit
    proc = _PROC_NETNS.fullmatch(netns)
    if proc:
        return f"/proc/{proc.group(1)}/root/etc/resolv.conf"
    named = _RUN_NETNS.fullmatch(netns)
    name = named.group(1) if named else netns
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"cannot tell the resolv.conf path of netns {netns!r}: pass it explicitly")
    return f"{NETNS_ETC}/{name}/resolv.conf"


def _is_netns_file(path: str) -> bool:
    return _NETNS_FILE.fullmatch(path) is not None


# --- the record ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rewrite:
    """What ``rewrite`` did to one file: enough to undo it, also after a daemon restart."""

    path: str
    original_text: str | None  # None: the file did not exist and we created it
    written_digest: str  # sha256 hex of the bytes we wrote
    created: bool = False
    created_dir: bool = False

    def __post_init__(self) -> None:
        if self.created != (self.original_text is None):
            raise ValueError("original_text must be None exactly when the file was created")
        if self.created_dir and not self.created:
            raise ValueError("created_dir requires created")
        if not _DIGEST.fullmatch(self.written_digest):
            raise ValueError(f"written_digest is not a sha256 hex digest: {self.written_digest!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "original_text": self.original_text,
            "written_digest": self.written_digest,
            "created": self.created,
            "created_dir": self.created_dir,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Rewrite:
        """Inverse of ``to_dict``; raises ValueError on a malformed record."""
        fields = {
            "path": (str,),
            "original_text": (str, type(None)),
            "written_digest": (str,),
            "created": (bool,),
            "created_dir": (bool,),
        }
        for name, types in fields.items():
            if not isinstance(data.get(name), types):
                raise ValueError(f"Rewrite record: bad or missing {name!r}")
        return cls(**{name: data[name] for name in fields})


# --- low-level file access -------------------------------------------------------------------------


def _decode(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _open_below(root: str, relative: str, flags: int, mode: int) -> int:
    """Open ``root/relative`` following no symlink below ``root`` (the sandbox's tree)."""
    parts = [part for part in relative.split("/") if part not in ("", ".")]
    if not parts or ".." in parts:
        raise UnsafeFileError(errno.EINVAL, "refusing path below a sandbox root", root + relative)
    dir_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts[:-1]:
            next_fd = os.open(part, _DIR_FLAGS, dir_fd=dir_fd)
            os.close(dir_fd)
            dir_fd = next_fd
        return os.open(parts[-1], flags, mode, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)


def _open_regular(path: str, flags: int) -> int:
    """A descriptor on the regular file ``path``; raises FileNotFoundError when it is missing."""
    flags |= _OPEN_FLAGS
    proc = _PROC_ROOT.fullmatch(path)
    fd = (
        _open_below(proc.group(1), proc.group(2), flags, FILE_MODE)
        if proc
        else os.open(path, flags, FILE_MODE)
    )
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UnsafeFileError(errno.EINVAL, "not a regular file", path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _read_fd(fd: int, path: str) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks: list[bytes] = []
    size = 0
    while chunk := os.read(fd, 65536):
        size += len(chunk)
        if size > MAX_SIZE:
            raise UnsafeFileError(errno.EFBIG, f"larger than {MAX_SIZE} bytes", path)
        chunks.append(chunk)
    return b"".join(chunks)


def _write_fd(fd: int, data: bytes) -> None:
    """Replace the contents of the open file in place (same inode): rewind, write, truncate."""
    os.lseek(fd, 0, os.SEEK_SET)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.ftruncate(fd, len(data))


def _read(path: str) -> bytes | None:
    try:
        fd = _open_regular(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        return _read_fd(fd, path)
    finally:
        os.close(fd)


def _make_dir(directory: str) -> bool:
    """Create ``directory`` (and its parents); True when ``directory`` itself was created here."""
    if os.path.isdir(directory):
        return False
    os.makedirs(os.path.dirname(directory) or "/", mode=DIR_MODE, exist_ok=True)
    try:
        os.mkdir(directory, DIR_MODE)
    except FileExistsError:
        return False
    return True


def _create(path: str) -> tuple[int, bool]:
    """Create ``path`` empty with mode 0644; returns the descriptor and whether its directory was made."""
    created_dir = _make_dir(os.path.dirname(path))
    try:
        fd = _open_regular(path, os.O_RDWR | os.O_CREAT | os.O_EXCL)
    except BaseException:
        if created_dir:
            _remove_dir(os.path.dirname(path))
        raise
    os.fchmod(fd, FILE_MODE)  # the umask may have narrowed it
    return fd, created_dir


def _remove_dir(directory: str) -> None:
    with contextlib.suppress(OSError):  # not empty any more: someone else uses it
        os.rmdir(directory)


# --- rewrite / restore -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """A rewrite worked out but not written yet (``plan_rewrite``); ``write_plan`` carries it out. The
    caller can persist ``record`` in between, so a crash never leaves a rewritten file it cannot undo."""

    record: Rewrite
    servers: tuple[str, ...]
    data: bytes
    seen_digest: str | None  # sha256 of the file when planned; None: it was missing and is created


def plan_rewrite(
    path: str,
    resolver_address: str = RESOLVER_ADDRESS,
    fallback_text: str | None = None,
    *,
    previous: Rewrite | None = None,
    create: bool | None = None,
) -> Plan:
    """Work out how to point the file at ``resolver_address``: the undo record, the upstream servers and
    the bytes to write. Reads only.

    ``create``: make a missing file (default: only for ``/etc/netns/NAME/resolv.conf``); its servers come
    from ``fallback_text``. ``previous``: the record persisted before a daemon restart; when the file still
    carries our footer, its original text and created flags are kept. Without it, the original of such a
    file is rebuilt from the footer (servers, search, options), not byte for byte.
    """
    current_bytes = _read(path)
    if current_bytes is None:
        if not (_is_netns_file(path) if create is None else create):
            raise FileNotFoundError(errno.ENOENT, "no such file", path)
        text, servers = sandbox_file(parse(fallback_text or ""), resolver_address)
        data = _encode(text)
        created_dir = not os.path.isdir(os.path.dirname(path))
        return Plan(Rewrite(path, None, _digest(data), True, created_dir), servers, data, None)
    current = _decode(current_bytes)
    recovered = recover_original(current)
    original_text: str | None
    if recovered is None:
        original, original_text = parse(current), current
        created = created_dir = False
    elif previous is not None and previous.path == path:
        original, original_text = recovered, previous.original_text
        created, created_dir = previous.created, previous.created_dir
    else:
        original, original_text = recovered, render_plain(recovered)
        created = created_dir = False
    text, servers = sandbox_file(original, resolver_address)
    data = _encode(text)
    record = Rewrite(path, original_text, _digest(data), created, created_dir)
    return Plan(record, servers, data, _digest(current_bytes))


def write_plan(plan: Plan) -> None:
    """Write a planned rewrite in place; raises OSError (``EAGAIN``) when the file changed since it was
    planned (created, removed or edited meanwhile), and then writes nothing."""
    path = plan.record.path
    if plan.seen_digest is None:
        fd, _created_dir = _create(path)
        try:
            _write_fd(fd, plan.data)
        finally:
            os.close(fd)
        return
    fd = _open_regular(path, os.O_RDWR)
    try:
        if _digest(_read_fd(fd, path)) != plan.seen_digest:
            raise OSError(errno.EAGAIN, "changed while the rewrite was prepared", path)
        _write_fd(fd, plan.data)
    finally:
        os.close(fd)


def rewrite(
    path: str,
    resolver_address: str = RESOLVER_ADDRESS,
    fallback_text: str | None = None,
    *,
    previous: Rewrite | None = None,
    create: bool | None = None,
) -> tuple[Rewrite, tuple[str, ...]]:
    """Point the file at ``resolver_address`` in place (``plan_rewrite`` then ``write_plan``); returns
    the undo record and the upstream servers."""
    plan = plan_rewrite(path, resolver_address, fallback_text, previous=previous, create=create)
    write_plan(plan)
    return plan.record, plan.servers


def still_ours(rw: Rewrite) -> bool:
    """True when the file still holds exactly what ``rewrite`` wrote."""
    data = _read(rw.path)
    return data is not None and _digest(data) == rw.written_digest


def restore(rw: Rewrite) -> RestoreResult:
    """Undo ``rw`` unless the user edited the file since: write the original back in place, or remove
    the file (and its ``/etc/netns/NAME`` directory, when empty) that ``rewrite`` created."""
    try:
        fd = _open_regular(rw.path, os.O_RDWR)
    except FileNotFoundError:
        if rw.created_dir:
            _remove_dir(os.path.dirname(rw.path))
        return "missing"
    try:
        if _digest(_read_fd(fd, rw.path)) != rw.written_digest:
            return "user-modified"
        if rw.original_text is not None:
            _write_fd(fd, _encode(rw.original_text))
            return "restored"
    finally:
        os.close(fd)
    os.unlink(rw.path)
    if rw.created_dir:
        _remove_dir(os.path.dirname(rw.path))
    return "removed"
