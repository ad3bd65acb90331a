"""The registry: one function applies events to an immutable state.

Rules: `apply` validates the whole event before building anything, so a refused event raises a
`RegistryError` and the state is unchanged; every accepted event produces a new `State` with the
generation incremented. Nothing here performs I/O; persistence and namespaces are the daemon's business.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import Any, TypeVar

from resolver.registry import names
from resolver.registry.errors import Conflict, InvalidValue, NotFound
from resolver.registry.model import (
    Change,
    CreateNetwork,
    CreateService,
    Endpoint,
    Event,
    JoinEndpoint,
    LeaveEndpoint,
    NamedPort,
    Network,
    RemoveNetwork,
    RemoveSandbox,
    RemoveService,
    Sandbox,
    Scope,
    Service,
    SetSandboxUpstreams,
    State,
)

MAX_TTL = 2**31 - 1
MAX_ID_LENGTH = 128
K = TypeVar("K")
V = TypeVar("V")


def _copy(mapping: Mapping[K, V]) -> dict[K, V]:
    """A mutable copy; for the read-only proxies the state holds, a C copy of the dict underneath
    (`dict(proxy)` goes key by key: 1 ms for 2,000 endpoints, on every join)."""
    if isinstance(mapping, MappingProxyType):
        return mapping.copy()  # type: ignore[return-value]
    return dict(mapping)


def _with(mapping: Mapping[K, V], key: K, value: V | None) -> Mapping[K, V]:
    """A frozen copy of `mapping` with `key` set to `value`, or removed when `value` is None."""
    copy = _copy(mapping)
    if value is None:
        copy.pop(key, None)
    else:
        copy[key] = value
    return MappingProxyType(copy)


def _check_ttl(ttl: Any) -> int:
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 0 <= ttl <= MAX_TTL:
        raise InvalidValue(f"ttl {ttl!r} must be a whole number of seconds between 0 and {MAX_TTL}")
    return ttl


def _check_scope(scope: Any) -> Scope:
    if scope not in ("local", "global"):
        raise InvalidValue(f"network scope {scope!r} must be 'local' or 'global'")
    return scope  # type: ignore[no-any-return]


def _check_servers(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(str(names.check_ip(v)) for v in values)


def _check_netns(value: str) -> str:
    if not isinstance(value, str) or not value or "\x00" in value or len(value) > 4096:
        raise InvalidValue(f"netns {value!r} is not a namespace name or path")
    return value


def _check_endpoint_id(value: str) -> str:
    if (
        not isinstance(value, str)
        or not value
        or len(value) > MAX_ID_LENGTH
        or not value.isprintable()
        or any(c.isspace() or c == "/" for c in value)
    ):
        raise InvalidValue(
            f"endpoint id {value!r} must be 1-{MAX_ID_LENGTH} printable characters without spaces or '/'"
        )
    return value


def parse_port(text: str) -> NamedPort:
    """Parse `NAME:PROTO:NUMBER` (PROTO tcp or udp) into a NamedPort."""
    parts = text.split(":") if isinstance(text, str) else []
    if len(parts) != 3:
        raise InvalidValue(f"port {text!r} must look like NAME:PROTO:NUMBER, e.g. http:tcp:80")
    name, proto, number = parts
    names.check_label(name, "port name")
    if proto.lower() not in ("tcp", "udp"):
        raise InvalidValue(f"port {text!r}: protocol must be tcp or udp")
    if not (number.isascii() and number.isdigit() and len(number) <= 5) or not 0 < int(number) < 65536:
        raise InvalidValue(f"port {text!r}: number must be 1-65535")
    return NamedPort(name, proto.lower(), int(number))  # type: ignore[arg-type]


def _network_addresses(state: State, network: str) -> Mapping[str, str]:
    """Every address in use on `network`, mapped to a description of its owner."""
    return state.addresses.get(network, MappingProxyType({}))


def _with_addresses(
    state: State, network: str, owner: str | None, addresses: Iterable[object]
) -> Mapping[str, Mapping[str, str]]:
    """`state.addresses` with `addresses` given to `owner` on `network` (freed when `owner` is None)."""
    used = _copy(_network_addresses(state, network))
    for address in addresses:
        if owner is None:
            used.pop(str(address), None)
        else:
            used[str(address)] = owner
    return _with(state.addresses, network, MappingProxyType(used))


def _check_free(state: State, network: str, addresses: Iterable[object]) -> None:
    used = _network_addresses(state, network)
    for address in addresses:
        owner = used.get(str(address))
        if owner is not None:
            raise Conflict(f"address {address} is already used by {owner} on network {network!r}")


def _require_network(state: State, name: str) -> Network:
    network = state.networks.get(name)
    if network is None:
        raise NotFound(f"network {name!r} does not exist")
    return network


# ---- one function per event ---------------------------------------------------------------------------


def _create_network(state: State, ev: CreateNetwork) -> Change:
    names.check_label(ev.name, "network name")
    if ev.name in state.networks:
        raise Conflict(f"network {ev.name!r} already exists")
    network = Network(
        name=ev.name,
        internal=bool(ev.internal),
        domain=names.check_domain(ev.domain).lower() if ev.domain else None,
        upstreams=_check_servers(ev.upstreams),
        ttl=_check_ttl(ev.ttl),
        scope=_check_scope(ev.scope),
    )
    return Change(
        replace(state, networks=_with(state.networks, ev.name, network)),
        touched_networks=(ev.name,),
        records=(("networks", ev.name),),
    )


def _remove_network(state: State, ev: RemoveNetwork) -> Change:
    _require_network(state, ev.name)
    members = sorted(e.id for e in state.endpoints.values() if e.network == ev.name)
    if members:
        raise Conflict(f"network {ev.name!r} still has endpoints: {', '.join(members)}; leave them first")
    services = MappingProxyType({k: v for k, v in state.services.items() if v.network != ev.name})
    new = replace(
        state,
        networks=_with(state.networks, ev.name, None),
        services=services,
        addresses=_with(state.addresses, ev.name, None),
    )
    dropped = [("services", k) for k in state.services if k not in services]
    return Change(new, touched_networks=(ev.name,), records=(("networks", ev.name), *dropped))


def _build_endpoint(state: State, ev: JoinEndpoint) -> Endpoint:
    network = _require_network(state, ev.network)
    if ev.host is not None:
        names.check_label(ev.host, "host id")
        if network.scope != "global":
            raise InvalidValue(f"network {ev.network!r} is local to this host; no other host can join it")
    endpoint = Endpoint(
        id=_check_endpoint_id(ev.endpoint),
        network=ev.network,
        sandbox=_check_netns(ev.sandbox),
        name=names.check_label(ev.name, "name"),
        aliases=tuple(names.check_label(a, "alias") for a in ev.aliases),
        hostname=names.check_label(ev.hostname, "hostname") if ev.hostname else None,
        ipv4=tuple(dict.fromkeys(names.check_ipv4(a) for a in ev.ipv4)),
        ipv6=tuple(dict.fromkeys(names.check_ipv6(a) for a in ev.ipv6)),
        service=names.check_label(ev.service, "service") if ev.service else None,
        ports=tuple(parse_port(p) for p in ev.ports),
        upstreams=_check_servers(ev.upstreams),
        resolv_conf=ev.resolv_conf or None,
        host=ev.host,
    )
    if (ev.network, endpoint.id) in state.endpoints:
        raise Conflict(f"endpoint {endpoint.id!r} is already joined to network {ev.network!r}")
    _check_free(state, ev.network, (*endpoint.ipv4, *endpoint.ipv6))
    return endpoint


def _join(state: State, ev: JoinEndpoint) -> Change:
    endpoint = _build_endpoint(state, ev)
    key = (endpoint.network, endpoint.id)
    addresses = _with_addresses(
        state, endpoint.network, f"endpoint {endpoint.id!r}", (*endpoint.ipv4, *endpoint.ipv6)
    )
    if endpoint.host is not None:  # joined on another host: no sandbox here
        new = replace(state, endpoints=_with(state.endpoints, key, endpoint), addresses=addresses)
        return Change(
            new, touched_networks=(endpoint.network,), joined=endpoint, records=(("endpoints", key),)
        )
    sandbox = state.sandboxes.get(endpoint.sandbox)
    added = () if sandbox is not None else (endpoint.sandbox,)
    sandbox = sandbox or Sandbox(netns=endpoint.sandbox)
    sandbox = replace(sandbox, endpoints=(*sandbox.endpoints, key))
    new = replace(
        state,
        endpoints=_with(state.endpoints, key, endpoint),
        sandboxes=_with(state.sandboxes, sandbox.netns, sandbox),
        addresses=addresses,
    )
    return Change(
        new,
        added_sandboxes=added,
        touched_networks=(endpoint.network,),
        touched_sandboxes=(sandbox.netns,),
        joined=endpoint,
        records=(("endpoints", key), ("sandboxes", sandbox.netns)),
    )


def find_endpoint(state: State, endpoint_id: str, network: str | None = None) -> Endpoint:
    """The endpoint with this id (on `network` when given); raise when missing or ambiguous."""
    if network is not None:
        _require_network(state, network)
        found = state.endpoints.get((network, endpoint_id))
        if found is None:
            raise NotFound(f"endpoint {endpoint_id!r} is not joined to network {network!r}")
        return found
    matches = [e for (_, eid), e in state.endpoints.items() if eid == endpoint_id]
    if not matches:
        raise NotFound(f"endpoint {endpoint_id!r} is not joined to any network")
    if len(matches) > 1:
        nets = ", ".join(sorted(e.network for e in matches))
        raise InvalidValue(f"endpoint {endpoint_id!r} is on several networks ({nets}); name the network")
    return matches[0]


def _drop_endpoints(state: State, keys: Iterable[tuple[str, str]]) -> Change:
    endpoints = _copy(state.endpoints)
    sandboxes = _copy(state.sandboxes)
    removed: list[Sandbox] = []
    touched: list[str] = []
    left: list[str] = []
    keys_list = list(keys)
    for key in keys_list:
        endpoint = endpoints.pop(key)
        touched.append(endpoint.network)
        if endpoint.host is not None:
            continue
        left.append(endpoint.sandbox)
        sandbox = sandboxes[endpoint.sandbox]
        remaining = tuple(k for k in sandbox.endpoints if k != key)
        if remaining:
            sandboxes[sandbox.netns] = replace(sandbox, endpoints=remaining)
        else:
            removed.append(sandboxes.pop(sandbox.netns))
    new = replace(state, endpoints=MappingProxyType(endpoints), sandboxes=MappingProxyType(sandboxes))
    for key in keys_list:
        gone = state.endpoints[key]
        new = replace(new, addresses=_with_addresses(new, gone.network, None, (*gone.ipv4, *gone.ipv6)))
    return Change(
        new,
        removed_sandboxes=tuple(removed),
        touched_networks=tuple(dict.fromkeys(touched)),
        touched_sandboxes=tuple(dict.fromkeys(left)),
        records=(*(("endpoints", k) for k in keys_list), *(("sandboxes", n) for n in dict.fromkeys(left))),
    )


def _leave(state: State, ev: LeaveEndpoint) -> Change:
    endpoint = find_endpoint(state, ev.endpoint, ev.network)
    return _drop_endpoints(state, [(endpoint.network, endpoint.id)])


def _remove_sandbox(state: State, ev: RemoveSandbox) -> Change:
    sandbox = state.sandboxes.get(ev.sandbox)
    if sandbox is None:
        raise NotFound(f"sandbox {ev.sandbox!r} is not known")
    return _drop_endpoints(state, sandbox.endpoints)


def _create_service(state: State, ev: CreateService) -> Change:
    _require_network(state, ev.network)
    names.check_label(ev.name, "service name")
    if ev.mode not in ("vip", "dnsrr"):
        raise InvalidValue(f"service mode {ev.mode!r} must be 'vip' or 'dnsrr'")
    if (ev.network, ev.name) in state.services:
        raise Conflict(f"service {ev.name!r} already exists on network {ev.network!r}")
    vips = tuple(dict.fromkeys(names.check_ip(v) for v in ev.vips))
    _check_free(state, ev.network, vips)
    service = Service(network=ev.network, name=ev.name, vips=vips, mode=ev.mode)  # type: ignore[arg-type]
    new = replace(
        state,
        services=_with(state.services, (ev.network, ev.name), service),
        addresses=_with_addresses(state, ev.network, f"service {ev.name!r} (VIP)", vips),
    )
    return Change(new, touched_networks=(ev.network,), records=(("services", (ev.network, ev.name)),))


def _remove_service(state: State, ev: RemoveService) -> Change:
    _require_network(state, ev.network)
    service = state.services.get((ev.network, ev.name))
    if service is None:
        raise NotFound(f"service {ev.name!r} does not exist on network {ev.network!r}")
    new = replace(
        state,
        services=_with(state.services, (ev.network, ev.name), None),
        addresses=_with_addresses(state, ev.network, None, service.vips),
    )
    return Change(new, touched_networks=(ev.network,), records=(("services", (ev.network, ev.name)),))


def _set_upstreams(state: State, ev: SetSandboxUpstreams) -> Change:
    sandbox = state.sandboxes.get(ev.sandbox)
    if sandbox is None:
        raise NotFound(f"sandbox {ev.sandbox!r} is not known")
    servers = _check_servers(ev.upstreams)
    sandbox = replace(sandbox, original_upstreams=servers)
    new = replace(state, sandboxes=_with(state.sandboxes, sandbox.netns, sandbox))
    return Change(new, touched_sandboxes=(sandbox.netns,), records=(("sandboxes", sandbox.netns),))


_HANDLERS: dict[type, Callable[[State, Any], Change]] = {
    CreateNetwork: _create_network,
    RemoveNetwork: _remove_network,
    JoinEndpoint: _join,
    LeaveEndpoint: _leave,
    CreateService: _create_service,
    RemoveService: _remove_service,
    SetSandboxUpstreams: _set_upstreams,
    RemoveSandbox: _remove_sandbox,
}


def apply(state: State, event: Event) -> Change:
    """Apply one event to `state`; raise RegistryError (state untouched) if it is refused."""
    handler = _HANDLERS.get(type(event))
    if handler is None:
        raise InvalidValue(f"unknown event {type(event).__name__}")
    change = handler(state, event)
    return replace(change, state=replace(change.state, generation=state.generation + 1))


class Registry:
    """Holds the current state; `apply` swaps it whole, so readers never see a half-applied event."""

    def __init__(self, state: State | None = None) -> None:
        self.state = state or State()

    def apply(self, event: Event) -> Change:
        change = apply(self.state, event)
        self.state = change.state
        return change
