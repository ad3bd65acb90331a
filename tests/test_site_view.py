"""A site holds its view until a change makes it forget it; the next read builds the current one."""

from __future__ import annotations

from typing import Any

from resolver.registry.model import CreateNetwork, JoinEndpoint
from resolver.registry.names import wire_key
from resolver.registry.registry import Registry
from resolver.registry.view import View, Views
from resolver.server.site import Site

NETNS = "/run/netns/one"


def _site(build: Any) -> Site:
    return Site(NETNS, build, listeners=None, dispatcher=None, settings=None)  # type: ignore[arg-type]


def test_view_is_built_once_then_held_until_forgotten() -> None:
    registry, views = Registry(), Views()
    registry.apply(CreateNetwork("alpha"))
    registry.apply(JoinEndpoint("alpha", NETNS, "e1", "web", ipv4=("10.0.0.2",)))
    built: list[View] = []

    def build(netns: str) -> View:
        built.append(views.view(registry.state, netns))
        return built[-1]

    site = _site(build)
    first = site.view
    assert site.view is first and len(built) == 1
    assert site.holds_view_of({"alpha"}) and not site.holds_view_of({"beta"})
    views.apply(registry.apply(JoinEndpoint("alpha", "/run/netns/two", "e2", "db", ipv4=("10.0.0.3",))))
    assert wire_key("db") not in site.view.table.names, "a held view does not change under a query"
    site.forget_view()
    assert not site.holds_view_of({"alpha"})
    assert wire_key("db") in site.view.table.names and len(built) == 2
