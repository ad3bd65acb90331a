"""Read-only answers of the control API: listings, inspection and `query` (resolve as a sandbox would).

Rules: nothing here changes the registry; a missing object is `NotFound` naming it.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import dns.message
import dns.rcode
import dns.rdatatype

from resolver.core.actions import Forward, Reply
from resolver.core.answer import respond
from resolver.registry.errors import InvalidValue, NotFound
from resolver.registry.registry import find_endpoint

if TYPE_CHECKING:
    from resolver.app import Daemon


def networks(d: Daemon) -> list[dict[str, Any]]:
    state = d.registry.state
    out = []
    for network in state.networks.values():
        item = network.to_dict()
        item["endpoints"] = sum(1 for e in state.endpoints.values() if e.network == network.name)
        item["services"] = sorted(s.name for s in state.services.values() if s.network == network.name)
        out.append(item)
    return out


def network(d: Daemon, name: str) -> dict[str, Any]:
    state = d.registry.state
    found = state.networks.get(name)
    if found is None:
        raise NotFound(f"network {name!r} does not exist")
    return {
        **found.to_dict(),
        "endpoints": [e.to_dict() for e in state.endpoints.values() if e.network == name],
        "services": [s.to_dict() for s in state.services.values() if s.network == name],
    }


def service(d: Daemon, network_name: str, name: str) -> dict[str, Any]:
    state = d.registry.state
    found = state.services.get((network_name, name))
    if found is None:
        raise NotFound(f"service {name!r} does not exist on network {network_name!r}")
    tasks = [e.to_dict() for e in state.endpoints.values() if e.network == network_name and e.service == name]
    return {**found.to_dict(), "tasks": tasks}


def endpoint(d: Daemon, endpoint_id: str, network_name: str | None) -> dict[str, Any]:
    return find_endpoint(d.registry.state, endpoint_id, network_name).to_dict()


def _sandbox_info(d: Daemon, netns: str) -> dict[str, Any]:
    state = d.registry.state
    sandbox = state.sandboxes[netns]
    site = d.sites.get(netns)
    record = d.records.get(netns)
    view = d.view(netns)
    return {
        **sandbox.to_dict(),
        "endpoints": [state.endpoints[k].to_dict() for k in sandbox.endpoints],
        "listening": site is not None,
        "port": site.port if site else None,
        "resolv_conf": record.resolv_conf if record else None,
        "upstreams": [u.to_dict() for u in view.upstreams],
        "networks": list(view.table.networks),
    }


def sandboxes(d: Daemon) -> list[dict[str, Any]]:
    return [_sandbox_info(d, netns) for netns in d.registry.state.sandboxes]


def sandbox(d: Daemon, netns: str) -> dict[str, Any]:
    from resolver.app import sandbox_path

    path = sandbox_path(netns)
    if path not in d.registry.state.sandboxes:
        raise NotFound(f"sandbox {netns!r} has no endpoints")
    return _sandbox_info(d, path)


async def query(d: Daemon, name: str, qtype: str, netns: str) -> dict[str, Any]:
    from resolver.app import sandbox_path

    path = sandbox_path(netns)
    if path not in d.registry.state.sandboxes:
        raise NotFound(f"sandbox {netns!r} has no endpoints")
    try:
        rdtype = dns.rdatatype.from_text(qtype)
        wire = dns.message.make_query(name, rdtype).to_wire()
    except Exception as exc:
        raise InvalidValue(f"cannot build a query for {name!r} {qtype!r}: {exc}") from None
    view = d.view(path)
    action = respond(wire, view, None, time.time(), "tcp")
    result: dict[str, Any] = {"netns": path, "name": name, "type": dns.rdatatype.to_text(rdtype)}
    if isinstance(action, Reply):
        result["rule"] = action.outcome
        reply_wire = action.wire
    elif isinstance(action, Forward):
        reply_wire, outcome = await d.forwarder.resolve(action, path, tcp=True)
        result["rule"] = f"forwarded ({outcome})"
        result["upstreams"] = [u.to_dict() for u in action.upstreams]
    else:
        raise InvalidValue(f"the query was dropped: {action.reason}")
    reply = dns.message.from_wire(reply_wire)
    result["rcode"] = dns.rcode.to_text(reply.rcode())
    for section in ("answer", "authority", "additional"):
        result[section] = [line for rrset in getattr(reply, section) for line in rrset.to_text().splitlines()]
    return result
