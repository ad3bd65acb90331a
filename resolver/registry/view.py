"""Per-sandbox views: the immutable set of names a sandbox can see, built from the registry state.

A `NameTable` holds the names of one combination of networks (the union of their registries, the
first network in the sandbox's endpoint order winning a name both define); the reverse name of an
endpoint address answers its primary name, that of a service VIP the service name, both qualified with
the domain or else the network name. Sandboxes attached to the same networks share one table. A `View`
adds the sandbox's upstream servers. Tables are rebuilt only when one of their networks changed; a query
holds the view it started with for its whole life.

`NameTable.memo`, `fast` and `exact` are slots the answering core fills with prepared answers; they
belong to one table and are dropped with it, so a stale answer can never outlive a change.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from resolver.registry.model import Change, Endpoint, Network, Service, State, Upstream
from resolver.registry.names import IPAddress, reverse_key, wire_key

RESOLVER_ADDRESS = "127.0.0.11"


@dataclass(frozen=True, slots=True)
class Zone:
    """The zone a local name belongs to: its SOA owner and the TTL of its answers."""

    apex: str
    ttl: int
    authoritative: bool


@dataclass(frozen=True, slots=True)
class SrvTarget:
    port: int
    target: str
    ipv4: tuple[ipaddress.IPv4Address, ...]
    ipv6: tuple[ipaddress.IPv6Address, ...]


@dataclass(slots=True)
class NameData:
    """Everything registered under one name (key) in one table."""

    zone: Zone
    ipv4: list[ipaddress.IPv4Address] = field(default_factory=list)
    ipv6: list[ipaddress.IPv6Address] = field(default_factory=list)
    ptr: str | None = None
    srv: list[SrvTarget] = field(default_factory=list)
    apex: bool = False

    def add_addresses(self, ipv4: Iterable, ipv6: Iterable) -> None:
        self.ipv4.extend(a for a in ipv4 if a not in self.ipv4)
        self.ipv6.extend(a for a in ipv6 if a not in self.ipv6)


@dataclass(slots=True)
class NameTable:
    networks: tuple[str, ...]
    names: Mapping[bytes, NameData]
    domains: tuple[tuple[bytes, Zone], ...]
    may_forward: bool
    memo: dict = field(default_factory=dict)
    fast: dict = field(default_factory=dict)
    exact: dict = field(default_factory=dict)

    def authority_for(self, key: bytes) -> Zone | None:
        """The authoritative (domain) zone that `key` falls under, if any."""
        for domain_key, zone in self.domains:
            if key.endswith(domain_key) and _at_label_boundary(key, len(key) - len(domain_key)):
                return zone
        return None


def _at_label_boundary(key: bytes, offset: int) -> bool:
    position = 0
    while position < offset:
        position += key[position] + 1
    return position == offset


@dataclass(frozen=True, slots=True)
class View:
    """What one sandbox sees: its name table and where its other queries go."""

    sandbox: str
    table: NameTable
    upstreams: tuple[Upstream, ...]
    scope: str = ""
    """Identity of the upstream set for caches: servers reached from inside a sandbox are its own."""
    cached: dict = field(default_factory=dict)
    """Cache entries this view already served to plain queries; filled by the core's fast path. It
    dies with the view, so a name that became local is never answered from here."""
    cached_exact: dict = field(default_factory=dict)
    """Replies from `cached` by exact query spelling, each until its TTLs change; same life."""


# ---- building one network's table ---------------------------------------------------------------------


class _TableBuilder:
    """Fills one network's names. Starting from a published table, it copies a `NameData` before its
    first change (copy on write), so tables that views already hold never change under them."""

    def __init__(self, network: Network, names: dict[bytes, NameData] | None = None) -> None:
        self.network = network
        self.suffix = network.domain or network.name
        self.names: dict[bytes, NameData] = {} if names is None else dict(names)
        self.owned: set[bytes] = set()
        self.written: set[bytes] = set()
        self.from_services: set[bytes] = set()
        """Keys that services and the apex fill; a later endpoint touching one forces a rebuild."""
        self.local_zone = Zone(network.name, network.ttl, authoritative=False)
        self.domain_zone = Zone(network.domain, network.ttl, True) if network.domain else None

    def qualified(self, name: str) -> str:
        return f"{name}.{self.suffix}."

    def entries(self, name: str) -> Iterable[NameData]:
        """The NameData for `name` bare, qualified with the network name and with the domain."""
        bare_zone = self.domain_zone or self.local_zone
        forms = [((name,), bare_zone), ((name, self.network.name), self.local_zone)]
        if self.domain_zone:
            forms.append(((name, self.network.domain or ""), self.domain_zone))
        for parts, zone in forms:
            yield self._writable(wire_key(*parts), zone)

    def _writable(self, key: bytes, zone: Zone) -> NameData:
        self.written.add(key)
        data = self.names.get(key)
        if data is None:
            data = NameData(zone=zone)
        elif key not in self.owned:
            data = NameData(data.zone, list(data.ipv4), list(data.ipv6), data.ptr, list(data.srv), data.apex)
        else:
            return data
        self.names[key] = data
        self.owned.add(key)
        return data

    def touched_service_names(self) -> bool:
        return not self.written.isdisjoint(self.from_services)

    def add_endpoint(self, ep: Endpoint) -> None:
        for name in ep.dns_names():
            for data in self.entries(name):
                data.add_addresses(ep.ipv4, ep.ipv6)
        addresses: tuple[IPAddress, ...] = (*ep.ipv4, *ep.ipv6)
        for address in addresses:
            key = reverse_key(address)
            if key not in self.names:
                self.names[key] = NameData(zone=self.local_zone, ptr=self.qualified(ep.name))
                self.owned.add(key)
        for port in ep.ports:
            for name in ep.dns_names():
                self.add_srv(f"_{port.name}._{port.protocol}.{name}", ep, port.number)

    def add_srv(self, name: str, ep: Endpoint, number: int) -> None:
        target = SrvTarget(number, self.qualified(ep.name), ep.ipv4, ep.ipv6)
        for data in self.entries(name):
            data.srv.append(target)

    def add_service(self, name: str, service: Service | None, tasks: list[Endpoint]) -> None:
        self.written = set()
        self._add_service(name, service, tasks)
        self.from_services |= self.written

    def _add_service(self, name: str, service: Service | None, tasks: list[Endpoint]) -> None:
        task_v4 = [a for t in tasks for a in t.ipv4]
        task_v6 = [a for t in tasks for a in t.ipv6]
        for data in self.entries(f"tasks.{name}"):
            data.add_addresses(task_v4, task_v6)
        if service is not None and service.mode == "vip" and service.vips:
            vip_v4 = [v for v in service.vips if v.version == 4]
            vip_v6 = [v for v in service.vips if v.version == 6]
            for data in self.entries(name):
                data.add_addresses(vip_v4, vip_v6)
            for vip in service.vips:  # a VIP's reverse name is local too: answered, never forwarded
                self.names.setdefault(
                    reverse_key(vip), NameData(zone=self.local_zone, ptr=self.qualified(name))
                )
        else:
            for data in self.entries(name):
                data.add_addresses(task_v4, task_v6)
        for task in tasks:
            for port in task.ports:
                self.add_srv(f"_{port.name}._{port.protocol}.{name}", task, port.number)

    def add_apex(self) -> None:
        if self.network.domain and self.domain_zone:
            key = wire_key(self.network.domain)
            self._writable(key, self.domain_zone).apex = True
            self.from_services.add(key)


def build_network_names(state: State, network: Network) -> dict[bytes, NameData]:
    """All names one network defines, keyed by lower-cased wire name."""
    return _build_network(state, network).names


def _build_network(state: State, network: Network) -> _TableBuilder:
    builder = _TableBuilder(network)
    members = [ep for ep in state.endpoints.values() if ep.network == network.name]
    for ep in members:
        builder.add_endpoint(ep)
    services = {s.name: s for s in state.services.values() if s.network == network.name}
    service_names = dict.fromkeys([*services, *(ep.service for ep in members if ep.service)])
    for name in service_names:
        tasks = [ep for ep in members if ep.service == name]
        builder.add_service(name, services.get(name), tasks)
    builder.add_apex()
    return builder


def merge_tables(networks: tuple[Network, ...], per_network: Sequence[Mapping[bytes, NameData]]) -> NameTable:
    """Union of the networks' names; the first network (in sandbox order) wins a shared name."""
    names: Mapping[bytes, NameData]
    if len(per_network) == 1:
        names = per_network[0]  # published tables are never changed, so one network's is shared as is
    else:
        merged: dict[bytes, NameData] = {}
        for table in reversed(per_network):
            merged.update(table)
        names = merged
    domains = tuple(
        (wire_key(n.domain), Zone(n.domain, n.ttl, True)) for n in networks if n.domain is not None
    )
    return NameTable(
        networks=tuple(n.name for n in networks),
        names=MappingProxyType(names),
        domains=domains,
        may_forward=any(not n.internal for n in networks),
    )


# ---- upstreams ----------------------------------------------------------------------------------------


def sandbox_upstreams(state: State, netns: str, host_servers: tuple[str, ...]) -> tuple[Upstream, ...]:
    """Per-endpoint servers, then per-network servers (both from inside the sandbox), then the
    sandbox's original resolv.conf servers or, lacking those, the host's (from the daemon's namespace).
    The resolver's own address is never an upstream."""
    sandbox = state.sandboxes.get(netns)
    if sandbox is None:
        return ()
    endpoints = [state.endpoints[k] for k in sandbox.endpoints if k in state.endpoints]
    inside = [s for ep in endpoints for s in ep.upstreams]
    inside += [s for ep in endpoints for s in state.networks[ep.network].upstreams]
    outside = sandbox.original_upstreams or host_servers
    found = [Upstream(s, 53, True) for s in inside] + [Upstream(s, 53, False) for s in outside]
    unique = dict.fromkeys(u for u in found if u.address != RESOLVER_ADDRESS)
    return tuple(unique)


# ---- the cache of tables and views --------------------------------------------------------------------


class Views:
    """Builds and caches views; `invalidate` drops what a change touched."""

    def __init__(self) -> None:
        self._network_names: dict[str, dict[bytes, NameData]] = {}
        self._service_keys: dict[str, set[bytes]] = {}
        self._tables: dict[tuple[str, ...], NameTable] = {}

    def apply(self, change: Change) -> None:
        """Bring the cache up to `change`: a plain join extends its network's names (O(its names)),
        anything else drops what it touched, to be rebuilt on the next read."""
        joined = change.joined
        if joined is None or not self._extend(change.state, joined):
            self.invalidate(change.touched_networks)

    def _extend(self, state: State, endpoint: Endpoint) -> bool:
        names = self._network_names.get(endpoint.network)
        if names is None or endpoint.service is not None:
            return False
        builder = _TableBuilder(state.networks[endpoint.network], names)
        builder.from_services = self._service_keys[endpoint.network]
        builder.add_endpoint(endpoint)
        if builder.touched_service_names():
            return False
        self._network_names[endpoint.network] = builder.names
        self._drop_tables({endpoint.network})
        return True

    def invalidate(self, networks: Iterable[str]) -> None:
        touched = set(networks)
        for name in touched:
            self._network_names.pop(name, None)
        self._drop_tables(touched)

    def _drop_tables(self, networks: set[str]) -> None:
        for combo in [c for c in self._tables if networks.intersection(c)]:
            del self._tables[combo]

    def table(self, state: State, network_names: tuple[str, ...]) -> NameTable:
        table = self._tables.get(network_names)
        if table is None:
            networks = tuple(state.networks[n] for n in network_names)
            per_network = [self._names_of(state, n) for n in networks]
            table = self._tables[network_names] = merge_tables(networks, per_network)
        return table

    def _names_of(self, state: State, network: Network) -> dict[bytes, NameData]:
        names = self._network_names.get(network.name)
        if names is None:
            builder = _build_network(state, network)
            names = self._network_names[network.name] = builder.names
            self._service_keys[network.name] = builder.from_services
        return names

    def view(self, state: State, netns: str, host_servers: tuple[str, ...] = ()) -> View:
        sandbox = state.sandboxes.get(netns)
        networks: tuple[str, ...] = ()
        if sandbox is not None:
            networks = tuple(dict.fromkeys(net for net, _ in sandbox.endpoints))
        upstreams = sandbox_upstreams(state, netns, host_servers)
        return View(netns, self.table(state, networks), upstreams, upstream_scope(upstreams, netns))


def upstream_scope(upstreams: tuple[Upstream, ...], netns: str) -> str:
    """The identity of an upstream set for caches and shared queries: the servers in order, and the
    sandbox when any is reached from inside it (its 127.0.0.1 is its own). A string, so hashing it on
    every query costs nothing after the first time."""
    servers = " ".join(f"{u.address}#{u.port}{'@' if u.from_sandbox else ''}" for u in upstreams)
    return f"{servers} in {netns}" if any(u.from_sandbox for u in upstreams) else servers


def build_view(state: State, netns: str, host_servers: tuple[str, ...] = ()) -> View:
    """A fresh view, without caching (tests and one-off queries)."""
    return Views().view(state, netns, host_servers)
