"""How global networks are laid out in a shared key-value store, and what a daemon must do to its local
registry to match what the store holds (pure: no I/O; the etcd backend does the talking).

Keys, all under the configured prefix:
- `networks/<network>`: the network (`Network.to_dict()` as JSON), no lease;
- `services/<network>/<service>`: a service of a global network, no lease;
- `endpoints/<network>/<host>/<endpoint id>`: an endpoint joined on `<host>`, attached to that host's
  lease, so a dead host's endpoints go when its lease expires.

Rules: values are canonical JSON (sorted keys), so "the same record" is "the same bytes"; a host writes
only its own endpoint keys (derived from its local state, see `own_endpoints`), and applies everybody
else's through registry events (`plan`). A key or value that cannot be read is reported, never applied.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from resolver.registry import model as m
from resolver.store import join_event, network_event, service_event

NETWORKS = "networks/"
SERVICES = "services/"
ENDPOINTS = "endpoints/"


def encode(record: dict[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":")).encode()


def endpoint_value(endpoint: m.Endpoint) -> bytes:
    record = endpoint.to_dict()
    record.pop("host", None)
    return encode(record)


@dataclass(frozen=True, slots=True)
class Key:
    """A parsed key: `kind` is network, service or endpoint; unused parts are empty."""

    kind: str
    network: str
    name: str = ""
    host: str = ""


@dataclass
class Plan:
    """Registry events that bring the local registry to the store's content, in an order that applies
    (endpoints leave before their network goes, networks come before their endpoints), and the records
    that could not be read."""

    events: list[m.Event] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


class Layout:
    def __init__(self, prefix: str, host: str) -> None:
        self.prefix = prefix if prefix.endswith("/") else prefix + "/"
        self.host = host

    # ---- keys ----

    def network_key(self, network: str) -> str:
        return f"{self.prefix}{NETWORKS}{network}"

    def service_key(self, network: str, name: str) -> str:
        return f"{self.prefix}{SERVICES}{network}/{name}"

    def endpoint_key(self, network: str, endpoint: str, host: str | None = None) -> str:
        return f"{self.prefix}{ENDPOINTS}{network}/{host or self.host}/{endpoint}"

    def endpoints_of(self, network: str) -> str:
        return f"{self.prefix}{ENDPOINTS}{network}/"

    def parse(self, key: str) -> Key | None:
        if not key.startswith(self.prefix):
            return None
        rest = key[len(self.prefix) :]
        for kind, head, parts in (
            ("network", NETWORKS, 1),
            ("service", SERVICES, 2),
            ("endpoint", ENDPOINTS, 3),
        ):
            if rest.startswith(head):
                fields = rest[len(head) :].split("/")
                if len(fields) != parts or not all(fields):
                    return None
                if kind == "network":
                    return Key(kind, fields[0])
                if kind == "service":
                    return Key(kind, fields[0], fields[1])
                return Key(kind, fields[0], fields[2], fields[1])
        return None

    def is_own(self, key: str) -> bool:
        parsed = self.parse(key)
        return parsed is not None and parsed.kind == "endpoint" and parsed.host == self.host

    # ---- what this host writes ----

    def own_endpoints(self, state: m.State) -> dict[str, bytes]:
        """The endpoint keys this host must hold in the store: its endpoints on global networks."""
        return {
            self.endpoint_key(ep.network, ep.id): endpoint_value(ep)
            for ep in state.endpoints.values()
            if ep.host is None and _is_global(state, ep.network)
        }

    # ---- what this host applies ----

    def _held(self, state: m.State) -> Iterable[str]:
        """Keys of the records in `state` that came from the store."""
        for network in state.networks.values():
            if network.scope == "global":
                yield self.network_key(network.name)
        for service in state.services.values():
            if _is_global(state, service.network):
                yield self.service_key(service.network, service.name)
        for ep in state.endpoints.values():
            if ep.host is not None:
                yield self.endpoint_key(ep.network, ep.id, ep.host)

    def plan(self, state: m.State, store: Mapping[str, bytes], keys: Iterable[str] | None = None) -> Plan:
        """Events that make `state` hold what `store` (key -> value) holds for `keys` (None: all)."""
        wanted = set(store) | set(self._held(state)) if keys is None else set(keys)
        steps: dict[str, list[m.Event]] = {k: [] for k in ("leave", "unsvc", "unnet", "net", "svc", "join")}
        plan = Plan()
        for key in sorted(wanted):
            parsed = self.parse(key)
            if parsed is None:
                if key in store:
                    plan.problems.append(f"unknown key {key!r} in the shared registry")
                continue
            if parsed.kind == "endpoint" and parsed.host == self.host:
                continue
            value = store.get(key)
            try:
                self._step(state, parsed, value, steps)
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                plan.problems.append(f"unreadable record {key!r} in the shared registry: {exc!r}")
        for kind in ("leave", "unsvc", "unnet", "net", "svc", "join"):
            plan.events += steps[kind]
        return plan

    def _step(self, state: m.State, key: Key, value: bytes | None, steps: dict[str, list[m.Event]]) -> None:
        record = json.loads(value) if value is not None else None
        if key.kind == "endpoint":
            have = state.endpoints.get((key.network, key.name))
            ours = have is not None and have.host == key.host
            if ours and value is not None and endpoint_value(have) == value:  # type: ignore[arg-type]
                return
            if ours:
                steps["leave"].append(m.LeaveEndpoint(key.name, key.network))
            if record is not None:
                _same(record, id=key.name, network=key.network)
                steps["join"].append(join_event(record, host=key.host))
        elif key.kind == "service":
            service = state.services.get((key.network, key.name))
            held = service if service is not None and _is_global(state, key.network) else None
            if held is not None and value is not None and encode(held.to_dict()) == value:
                return
            if held is not None:
                steps["unsvc"].append(m.RemoveService(key.network, key.name))
            if record is not None:
                _same(record, network=key.network, name=key.name)
                steps["svc"].append(service_event(record))
        else:
            network = state.networks.get(key.network)
            net_held = network if network is not None and network.scope == "global" else None
            if net_held is not None and value is not None and encode(net_held.to_dict()) == value:
                return
            if net_held is not None:
                steps["unnet"].append(m.RemoveNetwork(key.network))
            if record is not None:
                _same(record, name=key.network, scope="global")
                steps["net"].append(network_event(record))


def _is_global(state: m.State, network: str) -> bool:
    found = state.networks.get(network)
    return found is not None and found.scope == "global"


def _same(record: Any, **expected: str) -> None:
    """The record's fields agree with its key (a value copied under another key is refused)."""
    for name, value in expected.items():
        if record.get(name) != value:
            raise ValueError(f"{name} is {record.get(name)!r}, the key says {value!r}")
