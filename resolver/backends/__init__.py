"""Where the registries of global networks live: the backend a daemon shares them through.

A backend sits beside the daemon's local `Registry`, which stays the one source of answers: the daemon
applies every change locally first (and persists it), and the backend
- `publish`es a network or service change of a global network before the daemon commits it (so the
  shared store decides conflicts between hosts; a store that cannot be reached refuses the change);
- hears `local_changed` after each persisted change and brings the store to this host's endpoints,
  whenever the store is reachable (what is still to write is derived from local state, never queued
  in memory only);
- feeds the records of other hosts into the daemon through `Replica.apply_remote`.

`MemoryBackend` (the default) shares nothing: every network is local to the daemon. `create` picks
the backend named by the `registry.backend` setting.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from resolver.config import Settings
from resolver.registry import model as m
from resolver.registry.errors import InvalidValue
from resolver.registry.names import check_label

log = logging.getLogger("resolver.backend")
HOST_ID_FILE = "host-id"


class Replica(Protocol):
    """What a backend sees of the daemon."""

    def local_state(self) -> m.State: ...

    async def apply_remote(self, plan: Callable[[m.State], Sequence[m.Event]]) -> list[str]:
        """Apply the events `plan` gives for the current state (other hosts' changes), serialised with
        local changes; returns why each refused event was refused."""
        ...


class RegistryBackend(Protocol):
    async def start(self, replica: Replica) -> None: ...

    async def publish(self, event: m.Event, state: m.State) -> None:
        """Share a network or service change (`state`: before it) or raise RegistryError."""
        ...

    def local_changed(self) -> None: ...

    async def close(self) -> None: ...

    def status(self) -> dict[str, Any]: ...


class MemoryBackend:
    """The registry lives in this daemon only; global networks are refused."""

    async def start(self, replica: Replica) -> None:
        return None

    async def publish(self, event: m.Event, state: m.State) -> None:
        if isinstance(event, m.CreateNetwork) and event.scope == "global":
            raise InvalidValue(
                'a global network needs a shared registry: set registry.backend = "etcd" in the settings'
            )

    def local_changed(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def status(self) -> dict[str, Any]:
        return {"backend": "memory"}


def host_id(settings: Settings) -> str:
    """The configured host id, or the one kept in the state directory (made on first use from the
    host name and random characters, so two daemons on one machine never share it)."""
    if settings.registry_host_id:
        return check_label(settings.registry_host_id, "registry.host_id")
    path = Path(settings.state_dir) / HOST_ID_FILE
    try:
        return check_label(path.read_text().strip(), f"host id in {path}")
    except FileNotFoundError:
        pass
    label = "".join(c if c.isalnum() or c in "-_" else "-" for c in socket.gethostname().split(".")[0])
    made = f"{label.strip('-')[:40] or 'host'}-{secrets.token_hex(4)}"
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(made + "\n")
    os.replace(tmp, path)
    return made


def create(settings: Settings) -> RegistryBackend:
    if settings.registry_backend == "etcd":
        try:
            from resolver.backends.etcd import EtcdBackend
        except ImportError as exc:
            raise RuntimeError(
                f"registry.backend = \"etcd\" needs the etcd extra (pip install 'resolver[etcd]'): {exc}"
            ) from None
        return EtcdBackend(settings, host_id(settings))
    return MemoryBackend()
