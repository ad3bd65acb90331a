"""The registry's records and the events that change them.

Records are frozen: a change builds new records and a new `State`; readers keep whatever state they
hold. Events carry raw user input (strings); `Registry.apply` validates them, so a refused event never
leaves a half-made record behind.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

ServiceMode = Literal["vip", "dnsrr"]
Scope = Literal["local", "global"]
Protocol = Literal["tcp", "udp"]
DEFAULT_LOCAL_TTL = 5
_SHORT_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*$")


@dataclass(frozen=True, slots=True)
class Upstream:
    """An upstream DNS server and the namespace to query it from (`sandbox` True: from inside)."""

    address: str
    port: int = 53
    from_sandbox: bool = False

    def to_dict(self) -> dict[str, object]:
        return {"address": self.address, "port": self.port, "from_sandbox": self.from_sandbox}


@dataclass(frozen=True, slots=True)
class NamedPort:
    """A named port of an endpoint, published as `_name._proto.<endpoint>` SRV records."""

    name: str
    protocol: Protocol
    number: int

    def text(self) -> str:
        return f"{self.name}:{self.protocol}:{self.number}"


@dataclass(frozen=True, slots=True)
class Network:
    name: str
    internal: bool = False
    domain: str | None = None
    upstreams: tuple[str, ...] = ()
    ttl: int = DEFAULT_LOCAL_TTL
    scope: Scope = "local"
    """`global`: the network spans hosts and its registry is shared (see resolver/backends)."""

    def to_dict(self) -> dict[str, object]:
        """`scope` appears for global networks only, so a local network's form is what it always was."""
        record: dict[str, object] = {
            "name": self.name,
            "internal": self.internal,
            "domain": self.domain,
            "dns": list(self.upstreams),
            "ttl": self.ttl,
        }
        if self.scope != "local":
            record["scope"] = self.scope
        return record


@dataclass(frozen=True, slots=True)
class Endpoint:
    id: str
    network: str
    sandbox: str
    name: str
    aliases: tuple[str, ...] = ()
    hostname: str | None = None
    ipv4: tuple[ipaddress.IPv4Address, ...] = ()
    ipv6: tuple[ipaddress.IPv6Address, ...] = ()
    service: str | None = None
    ports: tuple[NamedPort, ...] = ()
    upstreams: tuple[str, ...] = ()
    resolv_conf: str | None = None
    host: str | None = None
    """The host whose daemon joined it; None for this host. A remote endpoint has no local sandbox."""

    @property
    def short_id(self) -> str | None:
        """The id's first 12 characters (Docker's short container id), for ids of at least 12
        characters that start with a DNS label; shorter ids are not published as names."""
        short = self.id[:12]
        return short if len(short) == 12 and _SHORT_ID.match(short) else None

    def dns_names(self) -> tuple[str, ...]:
        """Primary name, aliases, short id and hostname, de-duplicated case-insensitively, in that order."""
        seen: dict[str, str] = {}
        for value in (self.name, *self.aliases, self.short_id, self.hostname):
            if value and value.lower() not in seen:
                seen[value.lower()] = value
        return tuple(seen.values())

    def to_dict(self) -> dict[str, object]:
        """`host` appears for endpoints joined on another host only."""
        record: dict[str, object] = {
            "id": self.id,
            "network": self.network,
            "netns": self.sandbox,
            "name": self.name,
            "aliases": list(self.aliases),
            "hostname": self.hostname,
            "ipv4": [str(a) for a in self.ipv4],
            "ipv6": [str(a) for a in self.ipv6],
            "service": self.service,
            "ports": [p.text() for p in self.ports],
            "dns": list(self.upstreams),
            "resolv_conf": self.resolv_conf,
        }
        if self.host is not None:
            record["host"] = self.host
        return record


@dataclass(frozen=True, slots=True)
class Service:
    network: str
    name: str
    vips: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...] = ()
    mode: ServiceMode = "vip"

    def to_dict(self) -> dict[str, object]:
        return {
            "network": self.network,
            "name": self.name,
            "vips": [str(v) for v in self.vips],
            "mode": self.mode,
        }


EndpointKey = tuple[str, str]
"""(network, endpoint id): unique within the registry."""


@dataclass(frozen=True, slots=True)
class Sandbox:
    """A network namespace with at least one endpoint; `endpoints` in join order."""

    netns: str
    endpoints: tuple[EndpointKey, ...] = ()
    original_upstreams: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, object]:
        return {
            "netns": self.netns,
            "endpoints": [{"network": n, "id": e} for n, e in self.endpoints],
            "original_dns": list(self.original_upstreams),
        }


def _frozen(mapping: Mapping | None = None) -> Mapping:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True, slots=True)
class State:
    """One immutable generation of the registry."""

    generation: int = 0
    networks: Mapping[str, Network] = field(default_factory=_frozen)
    endpoints: Mapping[EndpointKey, Endpoint] = field(default_factory=_frozen)
    services: Mapping[tuple[str, str], Service] = field(default_factory=_frozen)
    sandboxes: Mapping[str, Sandbox] = field(default_factory=_frozen)
    addresses: Mapping[str, Mapping[str, str]] = field(default_factory=_frozen)
    """Per network, every address in use (endpoint addresses and service VIPs) and its owner."""


# ---- events -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CreateNetwork:
    name: str
    internal: bool = False
    domain: str | None = None
    upstreams: tuple[str, ...] = ()
    ttl: int = DEFAULT_LOCAL_TTL
    scope: str = "local"


@dataclass(frozen=True, slots=True)
class RemoveNetwork:
    name: str


@dataclass(frozen=True, slots=True)
class JoinEndpoint:
    network: str
    sandbox: str
    endpoint: str
    name: str
    aliases: tuple[str, ...] = ()
    hostname: str | None = None
    ipv4: tuple[str, ...] = ()
    ipv6: tuple[str, ...] = ()
    service: str | None = None
    ports: tuple[str, ...] = ()
    upstreams: tuple[str, ...] = ()
    resolv_conf: str | None = None
    rewrite_resolv_conf: bool = True  # false: serve the sandbox but leave its resolv.conf alone
    host: str | None = None


@dataclass(frozen=True, slots=True)
class LeaveEndpoint:
    endpoint: str
    network: str | None = None


@dataclass(frozen=True, slots=True)
class CreateService:
    network: str
    name: str
    vips: tuple[str, ...] = ()
    mode: str = "vip"


@dataclass(frozen=True, slots=True)
class RemoveService:
    network: str
    name: str


@dataclass(frozen=True, slots=True)
class SetSandboxUpstreams:
    """Record the servers of a sandbox's original resolv.conf (learnt when it is rewritten)."""

    sandbox: str
    upstreams: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RemoveSandbox:
    """Forget a sandbox and all its endpoints (its namespace is gone)."""

    sandbox: str


Event = (
    CreateNetwork
    | RemoveNetwork
    | JoinEndpoint
    | LeaveEndpoint
    | CreateService
    | RemoveService
    | SetSandboxUpstreams
    | RemoveSandbox
)


@dataclass(frozen=True, slots=True)
class Change:
    """What one applied event did: the new state and the sandboxes it touched."""

    state: State
    added_sandboxes: tuple[str, ...] = ()
    removed_sandboxes: tuple[Sandbox, ...] = ()
    touched_networks: tuple[str, ...] = ()
    touched_sandboxes: tuple[str, ...] = ()
    """Sandboxes whose own record changed (endpoints or upstreams), beyond what the networks say."""
    joined: Endpoint | None = None
    """The endpoint a join added, so views can extend a table instead of rebuilding it."""
    records: tuple[tuple[str, Any], ...] = ()
    """(kind, key) of every record the event put or deleted: "networks", "services", "endpoints" or
    "sandboxes", keyed as in `State`; what a store needs to write, without comparing whole states."""
