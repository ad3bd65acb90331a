"""The shared-registry layout (resolver/backends/layout.py) and what global networks change in the pure
registry: keys this host writes, the events that bring a local registry to a store's content (in an
order that applies), records that cannot be read, and the in-memory backend refusing global networks."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from resolver import config
from resolver.backends import MemoryBackend, host_id
from resolver.backends.layout import Layout, encode, endpoint_value
from resolver.registry import model as m
from resolver.registry.errors import Conflict, InvalidValue, RegistryError
from resolver.registry.registry import Registry
from resolver.store import decode
from resolver.store import encode as encode_state

ME, OTHER = "host-a", "host-b"
LAYOUT = Layout("/r/", ME)
NET = m.CreateNetwork("gnet", scope="global")


def remote_endpoint(endpoint: str = "ep-b", name: str = "bravo", address: str = "10.0.0.3") -> dict:
    return {
        "id": endpoint,
        "network": "gnet",
        "netns": "/run/netns/b",
        "name": name,
        "aliases": [],
        "hostname": None,
        "ipv4": [address],
        "ipv6": [],
        "service": None,
        "ports": [],
        "dns": [],
        "resolv_conf": None,
    }


CHARLIE = remote_endpoint("ep-c", "charlie", "10.0.0.4")


def network_value(**changes: object) -> bytes:
    return encode({**m.Network("gnet", scope="global").to_dict(), **changes})


def store_with(*endpoints: dict, host: str = OTHER) -> dict[str, bytes]:
    store = {LAYOUT.network_key("gnet"): network_value()}
    for record in endpoints:
        store[LAYOUT.endpoint_key("gnet", record["id"], host)] = encode(record)
    return store


def apply_all(registry: Registry, events: list[m.Event]) -> None:
    for event in events:
        registry.apply(event)


def synced(store: dict[str, bytes]) -> Registry:
    registry = Registry()
    plan = LAYOUT.plan(registry.state, store)
    assert plan.problems == []
    apply_all(registry, plan.events)
    return registry


def test_keys_parse_back() -> None:
    for key, kind in (
        (LAYOUT.network_key("n"), ("network", "n", "", "")),
        (LAYOUT.service_key("n", "s"), ("service", "n", "s", "")),
        (LAYOUT.endpoint_key("n", "e"), ("endpoint", "n", "e", ME)),
        (LAYOUT.endpoint_key("n", "e", OTHER), ("endpoint", "n", "e", OTHER)),
    ):
        parsed = LAYOUT.parse(key)
        assert parsed is not None and (parsed.kind, parsed.network, parsed.name, parsed.host) == kind
    for bad in ("/r/networks/", "/r/endpoints/n/e", "/r/services/n/s/x", "/other/networks/n", "/r/x"):
        assert LAYOUT.parse(bad) is None, bad


def test_this_host_writes_its_endpoints_on_global_networks_only() -> None:
    registry = Registry()
    apply_all(
        registry,
        [
            NET,
            m.CreateNetwork("lnet"),
            m.JoinEndpoint("gnet", "/run/netns/a", "ep-a", "alpha", ipv4=("10.0.0.2",)),
            m.JoinEndpoint("lnet", "/run/netns/a", "ep-l", "local"),
            m.JoinEndpoint("gnet", "/run/netns/b", "ep-b", "bravo", ipv4=("10.0.0.3",), host=OTHER),
        ],
    )
    own = LAYOUT.own_endpoints(registry.state)
    assert list(own) == ["/r/endpoints/gnet/host-a/ep-a"]
    record = json.loads(own["/r/endpoints/gnet/host-a/ep-a"])
    assert record["name"] == "alpha" and record["ipv4"] == ["10.0.0.2"] and "host" not in record


def test_the_store_becomes_registry_events_in_an_order_that_applies() -> None:
    store = store_with(remote_endpoint())
    store[LAYOUT.service_key("gnet", "web")] = encode(m.Service("gnet", "web").to_dict())
    plan = LAYOUT.plan(Registry().state, store)
    assert [type(e).__name__ for e in plan.events] == ["CreateNetwork", "CreateService", "JoinEndpoint"]
    registry = synced(store)
    endpoint = registry.state.endpoints[("gnet", "ep-b")]
    assert endpoint.host == OTHER and registry.state.sandboxes == {}
    assert registry.state.networks["gnet"].scope == "global"
    assert LAYOUT.plan(registry.state, store).events == []


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("endpoint gone", ["LeaveEndpoint"]),
        ("endpoint changed", ["LeaveEndpoint", "JoinEndpoint"]),
        ("network gone", ["LeaveEndpoint", "RemoveNetwork"]),
        ("second endpoint", ["JoinEndpoint"]),
    ],
)
def test_a_changed_store_becomes_the_difference(change: str, expected: list[str]) -> None:
    store = store_with(remote_endpoint())
    registry = synced(store)
    key = LAYOUT.endpoint_key("gnet", "ep-b", OTHER)
    if change == "endpoint gone":
        del store[key]
    elif change == "endpoint changed":
        store[key] = encode(remote_endpoint(address="10.0.0.9"))
    elif change == "network gone":
        store.clear()
    else:
        store[LAYOUT.endpoint_key("gnet", "ep-c", OTHER)] = encode(
            remote_endpoint("ep-c", "charlie", "10.0.0.4")
        )
    plan = LAYOUT.plan(registry.state, store)
    assert [type(e).__name__ for e in plan.events] == expected
    apply_all(registry, plan.events)
    assert LAYOUT.plan(registry.state, store).events == []


def test_a_watch_event_plans_only_its_key() -> None:
    store = store_with(remote_endpoint())
    registry = synced(store)
    store[LAYOUT.endpoint_key("gnet", "ep-c", OTHER)] = encode(CHARLIE)
    del store[LAYOUT.endpoint_key("gnet", "ep-b", OTHER)]
    only = LAYOUT.plan(registry.state, store, {LAYOUT.endpoint_key("gnet", "ep-c", OTHER)})
    assert [(type(e).__name__, getattr(e, "endpoint", None)) for e in only.events] == [
        ("JoinEndpoint", "ep-c")
    ]


def test_this_hosts_own_keys_are_never_applied_as_remote() -> None:
    store = store_with(remote_endpoint("ep-a", "alpha"), host=ME)
    plan = LAYOUT.plan(Registry().state, store)
    assert [type(e).__name__ for e in plan.events] == ["CreateNetwork"]


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("/r/endpoints/gnet/host-b/ep-b", b"{not json", "unreadable record"),
        ("/r/endpoints/gnet/host-b/ep-x", encode(remote_endpoint()), "the key says 'ep-x'"),
        ("/r/endpoints/gnet/host-b/ep-b", encode({"id": "ep-b"}), "unreadable record"),
        ("/r/networks/gnet", network_value(scope="local"), "the key says 'global'"),
        ("/r/whatever/x", b"1", "unknown key"),
    ],
)
def test_unreadable_records_are_reported_not_applied(key: str, value: bytes, problem: str) -> None:
    store = {LAYOUT.network_key("gnet"): network_value(), key: value}
    plan = LAYOUT.plan(Registry().state, store)
    assert len(plan.problems) == 1 and problem in plan.problems[0], plan.problems
    assert all(not isinstance(e, m.JoinEndpoint) for e in plan.events)


def test_remote_endpoints_in_the_pure_registry() -> None:
    registry = Registry()
    apply_all(registry, [NET, m.CreateNetwork("lnet")])
    with pytest.raises(InvalidValue, match="local to this host"):
        registry.apply(m.JoinEndpoint("lnet", "/run/netns/b", "ep-b", "bravo", host=OTHER))
    with pytest.raises(InvalidValue, match="host id"):
        registry.apply(m.JoinEndpoint("gnet", "/run/netns/b", "ep-b", "bravo", host="bad host"))
    registry.apply(m.JoinEndpoint("gnet", "/run/netns/b", "ep-b", "bravo", ipv4=("10.0.0.3",), host=OTHER))
    with pytest.raises(Conflict, match="already used"):
        registry.apply(m.JoinEndpoint("gnet", "/run/netns/a", "ep-a", "alpha", ipv4=("10.0.0.3",)))
    with pytest.raises(Conflict, match="still has endpoints"):
        registry.apply(m.RemoveNetwork("gnet"))
    change = registry.apply(m.LeaveEndpoint("ep-b", "gnet"))
    assert change.removed_sandboxes == () and change.touched_networks == ("gnet",)
    with pytest.raises(InvalidValue, match="scope"):
        registry.apply(m.CreateNetwork("x", scope="planet"))


def test_the_state_file_keeps_scope_and_the_last_known_remote_endpoints() -> None:
    registry = synced(store_with(remote_endpoint()))
    registry.apply(m.JoinEndpoint("gnet", "/run/netns/a", "ep-a", "alpha", ipv4=("10.0.0.2",)))
    loaded = decode(json.loads(json.dumps(encode_state(registry.state, {})))).registry.state
    assert loaded.networks == registry.state.networks
    assert loaded.endpoints == registry.state.endpoints
    assert list(loaded.sandboxes) == ["/run/netns/a"]
    assert endpoint_value(loaded.endpoints[("gnet", "ep-b")]) == encode(remote_endpoint())


def test_the_memory_backend_refuses_global_networks() -> None:
    backend = MemoryBackend()
    # a private loop: asyncio.run would leave the thread without a current loop for later tests
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(RegistryError, match=r"registry\.backend"):
            loop.run_until_complete(backend.publish(NET, m.State()))
        loop.run_until_complete(backend.publish(m.CreateNetwork("lnet"), m.State()))
    finally:
        loop.close()


def test_registry_settings(tmp_path: Path) -> None:
    file = tmp_path / "r.toml"
    file.write_text('[registry]\nbackend = "etcd"\nendpoints = ["10.0.0.1:2379", "10.0.0.2:2379"]\n')
    settings = config.load(str(file), {}, {})
    assert settings.registry_backend == "etcd"
    assert settings.registry_endpoints == ("10.0.0.1:2379", "10.0.0.2:2379")
    env = config.load(None, {"RESOLVER_REGISTRY_ENDPOINTS": "a:1, b:2"}, {})
    assert env.registry_endpoints == ("a:1", "b:2")
    file.write_text('[registry]\nbackend = "zookeeper"\n')
    with pytest.raises(config.ConfigError, match="registry_backend"):
        config.load(str(file), {}, {})
    file.write_text("[registry]\nendpoints = [1]\n")
    with pytest.raises(config.ConfigError, match="endpoints"):
        config.load(str(file), {}, {})


def test_the_host_id_is_made_once_and_kept(tmp_path: Path) -> None:
    settings = config.Settings(state_dir=str(tmp_path))
    first = host_id(settings)
    assert first == host_id(settings) and first == (tmp_path / "host-id").read_text().strip()
    other = host_id(config.Settings(state_dir=str(tmp_path / "other")))
    assert other != first
    assert host_id(config.Settings(state_dir=str(tmp_path), registry_host_id="node-7")) == "node-7"
    with pytest.raises(InvalidValue):
        host_id(config.Settings(registry_host_id="no/slash"))
