"""Persistence of registrations and sandboxes in the state directory.

Rules:
- a snapshot (`state.json`) holds the whole state and is written atomically (temporary file, fsync,
  rename, fsync of the directory); a journal (`journal.jsonl`) holds one line per change since the
  snapshot: the records the change put and the keys it deleted. A change is durable once its line is
  on disk (fdatasync), so a save costs the size of the change, not of the state;
- lines that only join or leave endpoints are written without fsync: they describe namespaces, which
  do not outlive the machine, and the kernel keeps what was written when the daemon dies (SIGKILL
  included). Lines that change networks or services, which do outlive a reboot, and snapshots are
  fsynced before the change is acknowledged;
- a save that fails (full or read-only file system) raises OSError and leaves the files as they were:
  a partial snapshot is removed, a partial journal line cut off;
- when the journal outgrows the snapshot, the state is written as a new snapshot and the journal
  starts again; each line carries a sequence number and the snapshot the last one it includes, so a
  crash between the two steps replays nothing twice;
- after a crash - SIGKILL included - loading gives the state of the last complete line; a torn last
  line was never acknowledged and is dropped; an unreadable line elsewhere is reported and skipped
  (each line is a set of upserts and deletes, so the others still apply);
- loading replays the records as registry events, so saved data is validated exactly like live
  requests; a record that no longer validates is reported and skipped, never fatal;
- endpoints joined on other hosts are saved too, as the last known state of the shared registry (a
  daemon restarted while etcd is unreachable still answers them); the shared registry corrects them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from resolver.registry import model as m
from resolver.registry.errors import RegistryError
from resolver.registry.registry import Registry

log = logging.getLogger("resolver.store")
STATE_FILE = "state.json"
FORMAT_VERSION = 1


@dataclass
class SandboxRecord:
    """Daemon-side facts about an attached sandbox that the registry does not hold."""

    identity: tuple[int, int] | None = None
    rewrite: dict[str, Any] | None = None
    resolv_conf: str | None = None
    keep_resolv_conf: bool = False  # joined with rewrite_resolv_conf=false: never rewritten

    def to_dict(self) -> dict[str, Any]:
        return {
            "identity": list(self.identity) if self.identity else None,
            "rewrite": self.rewrite,
            "resolv_conf": self.resolv_conf,
            "keep_resolv_conf": self.keep_resolv_conf,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SandboxRecord:
        identity = data.get("identity")
        return cls(
            tuple(identity) if identity else None,
            data.get("rewrite"),
            data.get("resolv_conf"),
            bool(data.get("keep_resolv_conf", False)),
        )


@dataclass
class Saved:
    registry: Registry
    sandboxes: dict[str, SandboxRecord] = field(default_factory=dict)


def encode(state: m.State, sandboxes: dict[str, SandboxRecord]) -> dict[str, Any]:
    return {
        "version": FORMAT_VERSION,
        "networks": [n.to_dict() for n in state.networks.values()],
        "services": [s.to_dict() for s in state.services.values()],
        "endpoints": [e.to_dict() for e in state.endpoints.values()],
        "sandboxes": {
            netns: {
                **sandboxes.get(netns, SandboxRecord()).to_dict(),
                "original_dns": list(sb.original_upstreams),
            }
            for netns, sb in state.sandboxes.items()
        },
    }


def network_event(n: dict[str, Any]) -> m.CreateNetwork:
    """The event that recreates a network from its `to_dict()` form."""
    return m.CreateNetwork(
        n["name"], n["internal"], n["domain"], tuple(n["dns"]), n["ttl"], n.get("scope", "local")
    )


def service_event(s: dict[str, Any]) -> m.CreateService:
    return m.CreateService(s["network"], s["name"], tuple(s["vips"]), s["mode"])


def join_event(e: dict[str, Any], host: str | None = None) -> m.JoinEndpoint:
    """The event that rejoins an endpoint from its `to_dict()` form (on `host`, None: this one)."""
    return m.JoinEndpoint(
        network=e["network"],
        sandbox=e["netns"],
        endpoint=e["id"],
        name=e["name"],
        aliases=tuple(e["aliases"]),
        hostname=e["hostname"],
        ipv4=tuple(e["ipv4"]),
        ipv6=tuple(e["ipv6"]),
        service=e["service"],
        ports=tuple(e["ports"]),
        upstreams=tuple(e["dns"]),
        resolv_conf=e["resolv_conf"],
        host=host,
    )


def _events(doc: dict[str, Any]) -> list[m.Event]:
    events: list[m.Event] = [network_event(n) for n in doc.get("networks", [])]
    events += [service_event(s) for s in doc.get("services", [])]
    events += [join_event(e, e.get("host")) for e in doc.get("endpoints", [])]
    for netns, sb in doc.get("sandboxes", {}).items():
        if sb.get("original_dns"):
            events.append(m.SetSandboxUpstreams(netns, tuple(sb["original_dns"])))
    return events


def decode(doc: dict[str, Any]) -> Saved:
    if doc.get("version") != FORMAT_VERSION:
        raise ValueError(f"unsupported state format version {doc.get('version')!r}")
    registry = Registry()
    for event in _events(doc):
        try:
            registry.apply(event)
        except RegistryError as exc:
            log.warning("skipping a saved record that no longer validates: %s", exc.message)
    sandboxes = {k: SandboxRecord.from_dict(v) for k, v in doc.get("sandboxes", {}).items()}
    return Saved(registry, sandboxes)


Doc = dict[str, Any]
KINDS = ("networks", "services", "endpoints", "sandboxes")
DURABLE_KINDS = ("networks", "services")


def _keyed(doc: Doc) -> dict[str, dict[str, Any]]:
    """The document's records by kind and key (a string, so that it survives JSON)."""
    return {
        "networks": {n["name"]: n for n in doc.get("networks", [])},
        "services": {f"{s['network']}/{s['name']}": s for s in doc.get("services", [])},
        "endpoints": {f"{e['network']}/{e['id']}": e for e in doc.get("endpoints", [])},
        "sandboxes": dict(doc.get("sandboxes", {})),
    }


def _unkeyed(keyed: dict[str, dict[str, Any]]) -> Doc:
    return {
        "version": FORMAT_VERSION,
        "networks": list(keyed["networks"].values()),
        "services": list(keyed["services"].values()),
        "endpoints": list(keyed["endpoints"].values()),
        "sandboxes": keyed["sandboxes"],
    }


@dataclass
class _Saved:
    """What the files hold now, as objects: a change is found by identity against it."""

    state: m.State
    sandboxes: dict[str, dict[str, Any]]


def _diff_mapping(
    old: Any, new: Any, key: Any, encode_one: Any, put: dict[str, Any], deleted: list[str]
) -> None:
    if old is new:
        return
    for k, value in new.items():
        if old.get(k) is not value:
            put[key(k)] = encode_one(value)
    deleted.extend(key(k) for k in old if k not in new)


def _sandbox_doc(state: m.State, netns: str, records: dict[str, SandboxRecord]) -> dict[str, Any]:
    return {
        **records.get(netns, SandboxRecord()).to_dict(),
        "original_dns": list(state.sandboxes[netns].original_upstreams),
    }


def _delta(
    saved: _Saved,
    state: m.State,
    records: dict[str, SandboxRecord],
    dirty: Iterable[str] | None,
    touched: Iterable[tuple[str, Any]] | None,
) -> tuple[dict[str, dict[str, Any]], dict[str, list[str]]]:
    if touched is not None and dirty is not None:
        return _targeted_delta(saved, state, records, [*touched, *(("sandboxes", n) for n in dirty)])
    put: dict[str, dict[str, Any]] = {kind: {} for kind in KINDS}
    deleted: dict[str, list[str]] = {kind: [] for kind in KINDS}
    old = saved.state
    slash = "/".join
    tables = (
        ("networks", old.networks, state.networks, str, m.Network.to_dict),
        ("services", old.services, state.services, slash, m.Service.to_dict),
        ("endpoints", old.endpoints, state.endpoints, slash, m.Endpoint.to_dict),
    )
    for kind, before, after, key, encode_one in tables:
        _diff_mapping(before, after, key, encode_one, put[kind], deleted[kind])
    candidates = list(state.sandboxes if dirty is None else (n for n in dirty if n in state.sandboxes))
    if old.sandboxes is not state.sandboxes:
        candidates += [n for n, sb in state.sandboxes.items() if old.sandboxes.get(n) is not sb]
    for netns in dict.fromkeys(candidates):
        _sandbox_delta(saved, state, records, netns, put, deleted)
    for netns in [n for n in saved.sandboxes if n not in state.sandboxes]:
        _sandbox_delta(saved, state, records, netns, put, deleted)
    saved.state = state
    return put, deleted


_ENCODERS: dict[str, Any] = {
    "networks": (str, m.Network.to_dict),
    "services": ("/".join, m.Service.to_dict),
    "endpoints": ("/".join, m.Endpoint.to_dict),
}


def _targeted_delta(
    saved: _Saved, state: m.State, records: dict[str, SandboxRecord], touched: list[tuple[str, Any]]
) -> tuple[dict[str, dict[str, Any]], dict[str, list[str]]]:
    """The delta when the records that may have changed are known: each is written as it is now (or
    deleted), so a key named twice or needlessly costs a few bytes, never a wrong state."""
    put: dict[str, dict[str, Any]] = {kind: {} for kind in KINDS}
    deleted: dict[str, list[str]] = {kind: [] for kind in KINDS}
    for kind, key in dict.fromkeys(touched):
        if kind == "sandboxes":
            _sandbox_delta(saved, state, records, key, put, deleted)
            continue
        encode_key, encode_one = _ENCODERS[kind]
        value = getattr(state, kind).get(key)
        if value is None:
            deleted[kind].append(encode_key(key))
        else:
            put[kind][encode_key(key)] = encode_one(value)
    saved.state = state
    return put, deleted


def _sandbox_delta(
    saved: _Saved,
    state: m.State,
    records: dict[str, SandboxRecord],
    netns: str,
    put: dict[str, dict[str, Any]],
    deleted: dict[str, list[str]],
) -> None:
    if netns not in state.sandboxes:
        if saved.sandboxes.pop(netns, None) is not None:
            deleted["sandboxes"].append(netns)
        return
    doc = _sandbox_doc(state, netns, records)
    if saved.sandboxes.get(netns) != doc:
        put["sandboxes"][netns] = saved.sandboxes[netns] = doc


def _replay(keyed: dict[str, dict[str, Any]], line: Doc) -> None:
    for kind in KINDS:
        for key in line.get("del", {}).get(kind, []):
            keyed[kind].pop(key, None)
        keyed[kind].update(line.get("put", {}).get(kind, {}))


def _write_all(fd: int, data: bytes) -> None:
    """Write all of `data`: a write may be short (a nearly full file system); the rest follows or fails."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class Store:
    JOURNAL_FILE = "journal.jsonl"
    MIN_COMPACT_BYTES = 64 * 1024

    def __init__(self, directory: str) -> None:
        self.directory = Path(directory)
        self.path = self.directory / STATE_FILE
        self.journal_path = self.directory / self.JOURNAL_FILE
        self._saved: _Saved | None = None
        self._seq = 0
        self._snapshot_bytes = 0
        self._journal_bytes = 0
        self._lock = threading.Lock()

    # ---- loading ------------------------------------------------------------------------------------

    def load(self) -> Saved:
        self._saved = None
        try:
            doc = self._read_snapshot()
            lines = self._read_journal(doc.get("journal_seq", 0))
        except (ValueError, KeyError, TypeError) as exc:
            return self._broken(exc)
        keyed = _keyed(doc)
        for line in lines:
            _replay(keyed, line)
        try:
            return decode(_unkeyed(keyed))
        except (ValueError, KeyError, TypeError) as exc:
            return self._broken(exc)

    def _read_snapshot(self) -> Doc:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return {"version": FORMAT_VERSION}
        self._snapshot_bytes = len(text)
        doc = json.loads(text)
        if not isinstance(doc, dict) or doc.get("version") != FORMAT_VERSION:
            raise ValueError(f"unsupported state format {str(doc)[:40]!r}")
        self._seq = int(doc.get("journal_seq", 0))
        return doc

    def _read_journal(self, after: int) -> list[Doc]:
        try:
            data = self.journal_path.read_bytes()
        except FileNotFoundError:
            return []
        self._journal_bytes = len(data)
        lines: list[Doc] = []
        raw = data.split(b"\n")
        for number, text in enumerate(raw, 1):
            if not text.strip():
                continue
            try:
                line = json.loads(text)
                seq = int(line["seq"])
            except (ValueError, KeyError, TypeError):
                if number == len(raw) or not any(r.strip() for r in raw[number:]):
                    log.warning("dropping the torn last line of %s (never acknowledged)", self.journal_path)
                else:
                    log.error("skipping unreadable line %d of %s", number, self.journal_path)
                continue
            if seq > after:
                lines.append(line)
                self._seq = max(self._seq, seq)
        return lines

    def _broken(self, exc: Exception) -> Saved:
        for path in (self.path, self.journal_path):
            if path.exists():
                os.replace(path, path.with_suffix(path.suffix + ".broken"))
        log.error(
            "state in %s is unreadable (%s); moved aside as *.broken, starting empty", self.directory, exc
        )
        self._seq = self._snapshot_bytes = self._journal_bytes = 0
        return Saved(Registry())

    # ---- saving -------------------------------------------------------------------------------------

    def save(
        self,
        state: m.State,
        sandboxes: dict[str, SandboxRecord],
        dirty: Iterable[str] | None = None,
        touched: Iterable[tuple[str, Any]] | None = None,
    ) -> None:
        """Persist `state`; see `prepare` for `dirty` and `touched`."""
        self.write(self.prepare(state, sandboxes, dirty, touched))

    def prepare(
        self,
        state: m.State,
        sandboxes: dict[str, SandboxRecord],
        dirty: Iterable[str] | None = None,
        touched: Iterable[tuple[str, Any]] | None = None,
    ) -> bytes | None:
        """The journal line for what changed since the last save (None when nothing did), or a whole
        snapshot's worth of work when the journal is due for compaction. Call from one thread only.

        `dirty` names the sandboxes whose daemon records may have changed, `touched` the registry
        records the applied changes named (`Change.records`); given both, only those are looked at
        (a join then costs the same whatever the size of the state), otherwise the whole state is
        compared with the last save."""
        if self._saved is None or self._journal_bytes > max(self.MIN_COMPACT_BYTES, self._snapshot_bytes):
            doc = encode(state, sandboxes)
            self._saved = _Saved(state, {k: dict(v) for k, v in doc["sandboxes"].items()})
            doc["journal_seq"] = self._seq
            return b"S" + json.dumps(doc, separators=(",", ":")).encode()
        put, deleted = _delta(self._saved, state, sandboxes, dirty, touched)
        if not any(put.values()) and not any(deleted.values()):
            return None
        self._seq += 1
        line: Doc = {"seq": self._seq, "put": {k: v for k, v in put.items() if v}}
        if any(deleted.values()):
            line["del"] = {k: v for k, v in deleted.items() if v}
        durable = any(put[k] or deleted[k] for k in DURABLE_KINDS)
        return (b"J" if durable else b"j") + json.dumps(line, separators=(",", ":")).encode() + b"\n"

    @staticmethod
    def needs_sync(prepared: bytes | None) -> bool:
        """Whether writing `prepared` waits for the disk (then run it off the event loop)."""
        return prepared is not None and prepared[:1] != b"j"

    def write(self, prepared: bytes | None) -> None:
        """Put a prepared change on disk (may block on fsync: run it off the event loop)."""
        if prepared is None:
            return
        with self._lock:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            try:
                if prepared[:1] == b"S":
                    self._write_snapshot(prepared[1:])
                else:
                    self._append(prepared[1:], sync=prepared[:1] == b"J")
            except OSError:
                self._saved = None  # the next save writes a whole snapshot, whatever this one left
                raise

    def _write_snapshot(self, data: bytes) -> None:
        tmp = self.path.with_suffix(".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                _write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)  # a partial file would hold the space the next save needs
            raise
        self._fsync_directory()
        with contextlib.suppress(FileNotFoundError):
            os.truncate(self.journal_path, 0)
        self._snapshot_bytes, self._journal_bytes = len(data), 0

    def _append(self, line: bytes, sync: bool) -> None:
        created = not self.journal_path.exists()
        fd = os.open(self.journal_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            end = os.fstat(fd).st_size
            try:
                _write_all(fd, line)
            except OSError:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, end)  # no torn line in front of the next one
                raise
            if sync:
                os.fdatasync(fd)
        finally:
            os.close(fd)
        if created and sync:
            self._fsync_directory()
        self._journal_bytes += len(line)

    def _fsync_directory(self) -> None:
        dir_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
