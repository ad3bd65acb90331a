"""Tests of the pure registry: events, validation errors (state unchanged on refusal), sandboxes and views."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

import pytest
from dnscases import cid
from hypothesis import given, settings
from hypothesis import strategies as st

from resolver.registry.errors import Conflict, InvalidValue, NotFound, RegistryError
from resolver.registry.model import (
    Change,
    CreateNetwork,
    CreateService,
    Event,
    JoinEndpoint,
    LeaveEndpoint,
    RemoveNetwork,
    RemoveSandbox,
    RemoveService,
    Sandbox,
    SetSandboxUpstreams,
    State,
)
from resolver.registry.names import reverse_key, wire_key
from resolver.registry.registry import Registry, apply
from resolver.registry.view import Views, build_view

A = "/run/netns/a"
B = "/run/netns/b"
C = "/run/netns/c"
LONG_DOMAIN_149 = ".".join(["d" * 49] * 3)
LONG_DOMAIN_254 = ".".join(["d" * 63] * 3 + ["d" * 62])


def base_events() -> list[Event]:
    """Two networks, one service, three endpoints (sandbox A on both networks)."""
    return [
        CreateNetwork("alpha"),
        CreateNetwork("beta", domain="beta.test"),
        CreateService("alpha", "svc", vips=("10.1.0.100",)),
        JoinEndpoint("alpha", A, cid("a1"), "web", ipv4=("10.1.0.2",), ipv6=("fd01::2",)),
        JoinEndpoint("beta", A, cid("a1"), "web", ipv4=("10.2.0.2",)),
        JoinEndpoint("alpha", B, cid("b1"), "db", ipv4=("10.1.0.3",)),
    ]


def registry_of(events: Sequence[Event]) -> Registry:
    registry = Registry()
    for event in events:
        registry.apply(event)
    return registry


# ---- refused events -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Refusal:
    event: Event
    error: type[RegistryError] | tuple[type[RegistryError], ...]
    kind: str | tuple[str, ...]


def _join(**kwargs: object) -> JoinEndpoint:
    fields: dict[str, object] = {
        "network": "alpha",
        "sandbox": C,
        "endpoint": cid("c1"),
        "name": "newbie",
        "ipv4": ("10.1.0.50",),
    }
    fields.update(kwargs)
    return JoinEndpoint(**fields)  # type: ignore[arg-type]


def _invalid(event: Event) -> Refusal:
    return Refusal(event, InvalidValue, "invalid")


BAD_LABELS = ["-web", "web-", "we b", "web.x", "", "a" * 64, "wéb", "web!", "web\x00"]
BAD_DOMAINS = ["bad..test", "-x.test", "x-.test", "a" * 64 + ".test", LONG_DOMAIN_254, "sp ace.test", "."]
BAD_V4 = ["10.0.0.256", "10.0.0", "fd00::1", "10.0.0.1/24", "", "abc", "1.2.3.4.5", "10.0.0.1 "]
BAD_V6 = ["fd00::g", "10.0.0.1", "fd00:::1", "1:2:3:4:5:6:7:8:9", "", "fd00::1/64"]

REFUSALS: dict[str, Refusal] = {
    # names that are not DNS labels, or too long
    **{f"network-name-{v!r}": _invalid(CreateNetwork(v)) for v in BAD_LABELS},
    **{f"endpoint-name-{v!r}": _invalid(_join(name=v)) for v in BAD_LABELS},
    **{f"alias-{v!r}": _invalid(_join(aliases=("ok", v))) for v in BAD_LABELS},
    **{f"hostname-{v!r}": _invalid(_join(hostname=v)) for v in BAD_LABELS if v},
    **{f"service-{v!r}": _invalid(CreateService("alpha", v)) for v in BAD_LABELS},
    **{f"join-service-{v!r}": _invalid(_join(service=v)) for v in BAD_LABELS if v},
    **{f"domain-{v[:20]!r}-{len(v)}": _invalid(CreateNetwork("gamma", domain=v)) for v in BAD_DOMAINS},
    # unparsable addresses
    **{f"ipv4-{v!r}": _invalid(_join(ipv4=(v,))) for v in BAD_V4},
    **{f"ipv6-{v!r}": _invalid(_join(ipv4=(), ipv6=(v,))) for v in BAD_V6},
    "vip": _invalid(CreateService("alpha", "svc2", vips=("10.1.0.300",))),
    "network-dns": _invalid(CreateNetwork("gamma", upstreams=("8.8.8",))),
    "endpoint-dns": _invalid(_join(upstreams=("not-an-ip",))),
    # other invalid settings
    "ttl-negative": _invalid(CreateNetwork("gamma", ttl=-1)),
    "ttl-text": _invalid(CreateNetwork("gamma", ttl="5")),  # type: ignore[arg-type]
    "service-mode": _invalid(CreateService("alpha", "svc2", mode="roundrobin")),
    "port-proto": _invalid(_join(ports=("http:sctp:80",))),
    "port-zero": _invalid(_join(ports=("http:tcp:0",))),
    "port-big": _invalid(_join(ports=("http:tcp:65536",))),
    "port-shape": _invalid(_join(ports=("http80",))),
    "port-name": _invalid(_join(ports=("-x:tcp:80",))),
    "endpoint-id-empty": _invalid(_join(endpoint="")),
    "endpoint-id-space": _invalid(_join(endpoint="a b")),
    "endpoint-id-slash": _invalid(_join(endpoint="a/b")),
    "endpoint-id-long": _invalid(_join(endpoint="x" * 129)),
    "netns-empty": _invalid(_join(sandbox="")),
    # duplicates and conflicts
    "duplicate-network": Refusal(CreateNetwork("alpha"), Conflict, "conflict"),
    "duplicate-service": Refusal(CreateService("alpha", "svc"), Conflict, "conflict"),
    "duplicate-endpoint-id": Refusal(_join(endpoint=cid("b1")), Conflict, "conflict"),
    "duplicate-endpoint-id-other-sandbox": Refusal(
        _join(endpoint=cid("a1"), sandbox=C), Conflict, "conflict"
    ),
    "address-used-v4": Refusal(_join(ipv4=("10.1.0.3",)), Conflict, "conflict"),
    "address-used-v6": Refusal(_join(ipv4=(), ipv6=("fd01::2",)), Conflict, "conflict"),
    "address-used-v6-other-spelling": Refusal(_join(ipv4=(), ipv6=("FD01:0::0002",)), Conflict, "conflict"),
    "address-is-a-vip": Refusal(_join(ipv4=("10.1.0.100",)), Conflict, "conflict"),
    "vip-is-an-address": Refusal(CreateService("alpha", "svc2", vips=("10.1.0.2",)), Conflict, "conflict"),
    "vip-is-another-vip": Refusal(CreateService("alpha", "svc2", vips=("10.1.0.100",)), Conflict, "conflict"),
    "remove-network-with-endpoints": Refusal(RemoveNetwork("alpha"), Conflict, "conflict"),
    # unknown things
    "join-unknown-network": Refusal(_join(network="nowhere"), NotFound, "not-found"),
    "service-unknown-network": Refusal(CreateService("nowhere", "svc"), NotFound, "not-found"),
    "remove-unknown-network": Refusal(RemoveNetwork("nowhere"), NotFound, "not-found"),
    "remove-unknown-service": Refusal(RemoveService("alpha", "nosuch"), NotFound, "not-found"),
    "leave-unknown-id": Refusal(LeaveEndpoint("nosuch"), NotFound, "not-found"),
    "leave-unknown-id-on-network": Refusal(LeaveEndpoint("nosuch", "alpha"), NotFound, "not-found"),
    "leave-id-on-wrong-network": Refusal(LeaveEndpoint(cid("b1"), "beta"), NotFound, "not-found"),
    "leave-on-unknown-network": Refusal(LeaveEndpoint(cid("b1"), "nowhere"), NotFound, "not-found"),
    "sandbox-upstreams-unparsable": _invalid(SetSandboxUpstreams(A, ("192.0.2.1", "not-an-ip"))),
    "sandbox-upstreams-partial-v4": _invalid(SetSandboxUpstreams(A, ("192.0.2",))),
    "upstreams-unknown-sandbox": Refusal(SetSandboxUpstreams(C, ("192.0.2.1",)), NotFound, "not-found"),
    "remove-unknown-sandbox": Refusal(RemoveSandbox(C), NotFound, "not-found"),
    # an id joined to two networks must be left with its network named (the request is ambiguous)
    "leave-ambiguous-id": Refusal(
        LeaveEndpoint(cid("a1")), (InvalidValue, Conflict), ("invalid", "conflict")
    ),
}


@pytest.mark.parametrize("refusal", REFUSALS.values(), ids=REFUSALS.keys())
def test_refused_event_leaves_state_unchanged(refusal: Refusal) -> None:
    registry = registry_of(base_events())
    before = registry.state
    snapshot = (before.generation, dict(before.endpoints), dict(before.sandboxes), dict(before.networks))
    with pytest.raises(RegistryError) as caught:
        registry.apply(refusal.event)
    assert isinstance(caught.value, refusal.error)
    kinds = refusal.kind if isinstance(refusal.kind, tuple) else (refusal.kind,)
    assert caught.value.kind in kinds
    assert str(caught.value), "the error says what is wrong"
    assert registry.state is before
    after = registry.state
    assert (after.generation, dict(after.endpoints), dict(after.sandboxes), dict(after.networks)) == snapshot
    with pytest.raises(RegistryError):
        apply(before, refusal.event)
    assert before.generation == snapshot[0]


def test_long_domain_fixtures() -> None:
    assert (len(LONG_DOMAIN_149), len(LONG_DOMAIN_254)) == (149, 254)


def test_error_kinds() -> None:
    assert (InvalidValue.kind, NotFound.kind, Conflict.kind) == ("invalid", "not-found", "conflict")


# ---- accepted events ----------------------------------------------------------------------------------


ACCEPTED: dict[str, Event] = {
    "label-63": CreateNetwork("n" * 63),
    "domain-149": CreateNetwork("gamma", domain=LONG_DOMAIN_149),
    "domain-trailing-dot": CreateNetwork("gamma", domain="Gamma.Test."),
    "underscore-label": CreateNetwork("my_net"),
    "same-id-other-network": _join(network="beta", endpoint=cid("b1"), ipv4=("10.2.0.50",)),
    "same-address-other-network": _join(network="beta", ipv4=("10.1.0.3",)),
    "same-v6-other-network": _join(network="beta", ipv4=(), ipv6=("fd01::2",)),
    "vip-address-of-other-network": CreateService("beta", "svc", vips=("10.1.0.2", "10.1.0.100")),
    "endpoint-name-63": _join(name="e" * 63, aliases=("x" * 63,), hostname="h" * 63),
    "dnsrr-service": CreateService("alpha", "svc2", mode="dnsrr"),
}


@pytest.mark.parametrize("event", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_accepted_event_increments_generation(event: Event) -> None:
    registry = registry_of(base_events())
    before = registry.state
    change = registry.apply(event)
    assert isinstance(change, Change)
    assert change.state is registry.state
    assert registry.state.generation == before.generation + 1
    assert before.generation == len(base_events()), "the old state is untouched"


def test_generation_counts_events() -> None:
    registry = Registry()
    assert registry.state.generation == 0
    for number, event in enumerate(base_events(), 1):
        registry.apply(event)
        assert registry.state.generation == number


def test_apply_is_pure() -> None:
    state = State()
    change = apply(state, CreateNetwork("alpha"))
    assert state.generation == 0 and "alpha" not in state.networks
    assert change.state.generation == 1 and "alpha" in change.state.networks


def test_sandbox_added_on_first_join_and_removed_on_last_leave() -> None:
    registry = registry_of(base_events()[:3])
    first = registry.apply(JoinEndpoint("alpha", C, "ep1", "one", ipv4=("10.1.0.9",)))
    assert first.added_sandboxes == (C,)
    assert C in registry.state.sandboxes
    second = registry.apply(JoinEndpoint("beta", C, "ep2", "two", ipv4=("10.2.0.9",)))
    assert second.added_sandboxes == ()
    assert registry.state.sandboxes[C].endpoints == (("alpha", "ep1"), ("beta", "ep2"))
    leave = registry.apply(LeaveEndpoint("ep1"))
    assert leave.removed_sandboxes == ()
    assert registry.state.sandboxes[C].endpoints == (("beta", "ep2"),)
    last = registry.apply(LeaveEndpoint("ep2", "beta"))
    assert [s.netns for s in last.removed_sandboxes] == [C]
    assert isinstance(last.removed_sandboxes[0], Sandbox)
    assert C not in registry.state.sandboxes
    assert ("beta", "ep2") not in registry.state.endpoints


def test_remove_sandbox_drops_all_its_endpoints() -> None:
    registry = registry_of(base_events())
    change = registry.apply(RemoveSandbox(A))
    assert [s.netns for s in change.removed_sandboxes] == [A]
    assert set(change.touched_networks) == {"alpha", "beta"}
    assert all(ep.sandbox != A for ep in registry.state.endpoints.values())
    assert A not in registry.state.sandboxes


def test_endpoint_order_is_stable() -> None:
    events: list[Event] = [CreateNetwork(n) for n in ("n1", "n2", "n3", "n4")]
    registry = registry_of(events)
    for i, net in enumerate(("n3", "n1", "n4", "n2"), 1):
        registry.apply(JoinEndpoint(net, C, f"e{i}", f"name{i}", ipv4=(f"10.9.0.{i}",)))
    assert registry.state.sandboxes[C].endpoints == (("n3", "e1"), ("n1", "e2"), ("n4", "e3"), ("n2", "e4"))
    registry.apply(LeaveEndpoint("e2"))
    assert registry.state.sandboxes[C].endpoints == (("n3", "e1"), ("n4", "e3"), ("n2", "e4"))
    with pytest.raises(Conflict):
        registry.apply(JoinEndpoint("n3", C, "e1", "again"))
    registry.apply(JoinEndpoint("n1", C, "e2", "name2", ipv4=("10.9.0.2",)))
    assert registry.state.sandboxes[C].endpoints == (("n3", "e1"), ("n4", "e3"), ("n2", "e4"), ("n1", "e2"))
    view = build_view(registry.state, C)
    assert view.table.networks == ("n3", "n4", "n2", "n1")


def test_remove_network_after_endpoints_leave() -> None:
    registry = registry_of(base_events())
    for ep, net in ((cid("a1"), "alpha"), (cid("b1"), "alpha")):
        registry.apply(LeaveEndpoint(ep, net))
    change = registry.apply(RemoveNetwork("alpha"))
    assert "alpha" not in change.state.networks
    assert not any(net == "alpha" for net, _ in change.state.services), "its services go with it"
    registry.apply(CreateNetwork("alpha"))
    registry.apply(CreateService("alpha", "svc", vips=("10.1.0.100",)))


def test_leave_frees_the_address_and_the_id() -> None:
    registry = registry_of(base_events())
    registry.apply(LeaveEndpoint(cid("b1")))
    registry.apply(_join(endpoint=cid("b1"), ipv4=("10.1.0.3",)))


def test_domain_is_stored_without_trailing_dot() -> None:
    registry = registry_of([CreateNetwork("gamma", domain="gamma.test.")])
    assert registry.state.networks["gamma"].domain == "gamma.test"


# ---- views --------------------------------------------------------------------------------------------


def test_view_isolation() -> None:
    registry = registry_of(
        [
            CreateNetwork("alpha"),
            CreateNetwork("beta", domain="beta.test"),
            JoinEndpoint("alpha", A, "ea", "aname", ipv4=("10.1.0.2",)),
            JoinEndpoint("beta", B, "eb", "bname", ipv4=("10.2.0.2",)),
        ]
    )
    names = build_view(registry.state, A).table.names
    assert wire_key("aname") in names
    assert wire_key("aname", "alpha") in names
    assert reverse_key(ipaddress.ip_address("10.1.0.2")) in names
    for hidden in (wire_key("bname"), wire_key("bname", "beta"), wire_key("bname", "beta.test")):
        assert hidden not in names
    assert reverse_key(ipaddress.ip_address("10.2.0.2")) not in names
    assert build_view(registry.state, A).table.networks == ("alpha",)
    assert build_view(registry.state, A).table.authority_for(wire_key("x", "beta.test")) is None


def test_view_union_of_two_networks() -> None:
    registry = registry_of(base_events())
    view = build_view(registry.state, A)
    assert view.table.networks == ("alpha", "beta")
    names = view.table.names
    for key in (wire_key("db"), wire_key("db", "alpha"), wire_key("svc"), wire_key("web", "beta.test")):
        assert key in names
    assert view.table.authority_for(wire_key("x", "beta.test")) is not None


def test_view_of_unknown_sandbox_is_empty() -> None:
    view = build_view(registry_of(base_events()).state, C)
    assert not view.table.names
    assert view.upstreams == ()


@pytest.mark.parametrize("order", [("alpha", "beta"), ("beta", "alpha")])
def test_first_network_wins_a_shared_name(order: tuple[str, str]) -> None:
    events: list[Event] = [
        CreateNetwork("alpha"),
        CreateNetwork("beta"),
        JoinEndpoint("alpha", A, "ea", "db", ipv4=("10.1.0.2",)),
        JoinEndpoint("beta", B, "eb", "db", ipv4=("10.2.0.2",)),
    ]
    events += [
        JoinEndpoint(net, C, f"c-{net}", "client", ipv4=(f"10.{2 if net == 'beta' else 1}.0.9",))
        for net in order
    ]
    view = build_view(registry_of(events).state, C)
    winner = {"alpha": "10.1.0.2", "beta": "10.2.0.2"}[order[0]]
    assert [str(a) for a in view.table.names[wire_key("db")].ipv4] == [winner]
    assert [str(a) for a in view.table.names[wire_key("db", "alpha")].ipv4] == ["10.1.0.2"]
    assert [str(a) for a in view.table.names[wire_key("db", "beta")].ipv4] == ["10.2.0.2"]


def _upstream_events(original: tuple[str, ...] = ()) -> list[Event]:
    events: list[Event] = [
        CreateNetwork("n1", upstreams=("10.10.0.1",)),
        CreateNetwork("n2", upstreams=("10.20.0.1", "127.0.0.11")),
        JoinEndpoint("n1", C, "e1", "one", ipv4=("10.1.0.2",), upstreams=("10.1.1.1", "127.0.0.11")),
        JoinEndpoint("n2", C, "e2", "two", ipv4=("10.2.0.2",), upstreams=("10.2.2.2",)),
    ]
    if original:
        events.append(SetSandboxUpstreams(C, original))
    return events


def _upstreams(events: Sequence[Event], host: tuple[str, ...]) -> list[tuple[str, bool]]:
    view = build_view(registry_of(events).state, C, host)
    assert all(u.port == 53 for u in view.upstreams)
    return [(u.address, u.from_sandbox) for u in view.upstreams]


def test_upstream_order_with_original_servers() -> None:
    events = _upstream_events(("192.0.2.10", "127.0.0.11", "192.0.2.11"))
    assert _upstreams(events, ("198.51.100.1",)) == [
        ("10.1.1.1", True),  # endpoint dns (queried from inside the sandbox)
        ("10.2.2.2", True),
        ("10.10.0.1", True),  # network dns (from inside)
        ("10.20.0.1", True),
        ("192.0.2.10", False),  # the sandbox's original resolv.conf (from the host namespace)
        ("192.0.2.11", False),
    ]


def test_upstream_order_falls_back_to_host_servers() -> None:
    assert _upstreams(_upstream_events(), ("198.51.100.1", "127.0.0.11", "198.51.100.2")) == [
        ("10.1.1.1", True),
        ("10.2.2.2", True),
        ("10.10.0.1", True),
        ("10.20.0.1", True),
        ("198.51.100.1", False),
        ("198.51.100.2", False),
    ]


def test_upstreams_only_from_original_or_host() -> None:
    events: list[Event] = [CreateNetwork("n1"), JoinEndpoint("n1", C, "e1", "one")]
    assert _upstreams(events, ("198.51.100.1",)) == [("198.51.100.1", False)]
    assert _upstreams([*events, SetSandboxUpstreams(C, ("192.0.2.10",))], ("198.51.100.1",)) == [
        ("192.0.2.10", False)
    ]
    assert _upstreams(events, ()) == []
    assert _upstreams(events, ("127.0.0.11",)) == []


def test_resolver_address_is_never_an_upstream() -> None:
    events = _upstream_events(("127.0.0.11",))
    found = _upstreams(events, ("127.0.0.11",))
    assert "127.0.0.11" not in [address for address, _ in found]


def test_views_cache_follows_invalidation_and_old_views_stay() -> None:
    registry = registry_of(base_events())
    cache = Views()
    old = cache.view(registry.state, B)
    assert wire_key("late") not in old.table.names
    change = registry.apply(JoinEndpoint("alpha", C, "late", "late", ipv4=("10.1.0.77",)))
    cache.invalidate(change.touched_networks)
    new = cache.view(registry.state, B)
    assert wire_key("late") in new.table.names
    assert wire_key("late") not in old.table.names, "a view held by a query never changes"
    assert cache.view(registry.state, B).table is new.table, "tables are shared until invalidated"


# ---- incremental views: a join extends its network's table; the result equals a fresh build --------------

_NAMES = ["web", "db", "api", "svc", "test", "corp"]
_SANDBOXES = [A, B, C]


@st.composite
def _event_sequences(draw: st.DrawFn) -> list[Event]:
    """Joins (some into services, some named like a service or the domain), leaves and service changes."""
    events: list[Event] = [CreateNetwork("alpha", domain="corp"), CreateNetwork("beta")]
    for index in range(draw(st.integers(1, 14))):
        kinds = ["join", "join", "join", "leave", "service", "unservice", "upstreams", "drop"]
        kind = draw(st.sampled_from(kinds))
        network = draw(st.sampled_from(["alpha", "beta"]))
        if kind == "join":
            events.append(
                JoinEndpoint(
                    network,
                    draw(st.sampled_from(_SANDBOXES)),
                    f"ep{index}",
                    draw(st.sampled_from(_NAMES)),
                    aliases=tuple(draw(st.lists(st.sampled_from(_NAMES), max_size=2))),
                    ipv4=(f"10.9.{index}.1",),
                    ipv6=(f"fd00::{index + 1:x}",) if draw(st.booleans()) else (),
                    service=draw(st.sampled_from([None, None, "svc"])),
                    ports=("http:tcp:80",) if draw(st.booleans()) else (),
                )
            )
        elif kind == "leave":
            events.append(LeaveEndpoint(f"ep{draw(st.integers(0, index))}", network))
        elif kind == "service":
            events.append(CreateService(network, "svc", ("10.200.0.1",), "vip"))
        elif kind == "upstreams":
            events.append(SetSandboxUpstreams(draw(st.sampled_from(_SANDBOXES)), (f"192.0.2.{index + 1}",)))
        elif kind == "drop":
            events.append(RemoveSandbox(draw(st.sampled_from(_SANDBOXES))))
        else:
            events.append(RemoveService(network, "svc"))
    return events


def _changed_records(old: State, new: State) -> set[tuple[str, object]]:
    """Every (kind, key) whose record differs between two states, found by comparing them whole."""
    changed: set[tuple[str, object]] = set()
    for kind in ("networks", "services", "endpoints", "sandboxes"):
        before, after = getattr(old, kind), getattr(new, kind)
        changed |= {(kind, k) for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    return changed


def _addresses_in_use(state: State) -> dict[str, dict[str, str]]:
    """The address index recomputed from scratch: endpoints' addresses and services' VIPs per network."""
    used: dict[str, dict[str, str]] = {}
    for ep in state.endpoints.values():
        for address in (*ep.ipv4, *ep.ipv6):
            used.setdefault(ep.network, {})[str(address)] = f"endpoint {ep.id!r}"
    for svc in state.services.values():
        for vip in svc.vips:
            used.setdefault(svc.network, {})[str(vip)] = f"service {svc.name!r} (VIP)"
    return used


@settings(max_examples=300, deadline=None)
@given(_event_sequences())
def test_incremental_views_equal_a_fresh_build(events: list[Event]) -> None:
    registry, cache = Registry(), Views()
    before = registry.state
    held = []
    for event in events:
        try:
            change = registry.apply(event)
        except RegistryError:
            continue
        cache.apply(change)
        assert _changed_records(before, registry.state) <= set(change.records), f"{event} names its records"
        before = registry.state
        assert _addresses_in_use(registry.state) == {
            k: dict(v) for k, v in registry.state.addresses.items() if v
        }
        for netns in _SANDBOXES:
            view = cache.view(registry.state, netns)
            fresh = build_view(registry.state, netns)
            assert dict(view.table.names) == dict(fresh.table.names), f"after {event}"
            held.append((view, {k: repr(v) for k, v in view.table.names.items()}))
    for view, snapshot in held:
        assert {k: repr(v) for k, v in view.table.names.items()} == snapshot, "published tables never change"


def test_plain_join_extends_instead_of_rebuilding() -> None:
    registry = registry_of(base_events())
    cache = Views()
    before = cache.view(registry.state, B).table
    cache.apply(registry.apply(JoinEndpoint("alpha", C, "late", "late", ipv4=("10.1.0.77",))))
    after = cache.view(registry.state, B).table
    shared = [k for k in before.names if k in after.names and before.names[k] is after.names[k]]
    assert wire_key("late") in after.names and wire_key("late") not in before.names
    assert shared, "untouched names are shared with the previous table, not rebuilt"
