"""Persistence of registrations and sandboxes in the state directory.

Rules: the whole state is one JSON document written atomically (temporary file, fsync, rename, fsync of
the directory), so after a crash - SIGKILL included - the file is either the previous or the new
state, never a mix. Loading replays the records as registry events, so saved data is validated exactly
like live requests; a record that no longer validates is reported and skipped, never fatal. Endpoints
joined on other hosts are saved too, as the last known state of the shared registry (a daemon restarted
while etcd is unreachable still answers them); the shared registry corrects them once reachable.
"""

from __future__ import annotations

import json
import logging
import os
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

    def to_dict(self) -> dict[str, Any]:
        return {
            "identity": list(self.identity) if self.identity else None,
            "rewrite": self.rewrite,
            "resolv_conf": self.resolv_conf,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SandboxRecord:
        identity = data.get("identity")
        return cls(tuple(identity) if identity else None, data.get("rewrite"), data.get("resolv_conf"))


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


class Store:
    def __init__(self, directory: str) -> None:
        self.directory = Path(directory)
        self.path = self.directory / STATE_FILE

    def load(self) -> Saved:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return Saved(Registry())
        try:
            return decode(json.loads(text))
        except (ValueError, KeyError, TypeError) as exc:
            broken = self.path.with_suffix(".broken")
            os.replace(self.path, broken)
            log.error("state file %s is unreadable (%s); moved to %s, starting empty", self.path, exc, broken)
            return Saved(Registry())

    def save(self, state: m.State, sandboxes: dict[str, SandboxRecord]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        data = json.dumps(encode(state, sandboxes), indent=1).encode()
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        dir_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
