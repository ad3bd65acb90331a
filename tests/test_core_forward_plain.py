"""`forward_plain` (the UDP listener's short road for forwarded plain queries) gives exactly what
`respond` gives, or None: for every sandbox kind (forwarding, internal, mixed, without upstreams), every
name kind (local, under a network domain, reverse, foreign, cached) and every query shape."""

from __future__ import annotations

import dns.message
import dns.rrset
from dnscases import CLIENT, LONELY, MIXED, SEALED, SITE, query, views
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resolver.core.actions import Forward, Reply
from resolver.core.answer import forward_plain, respond
from resolver.core.cache import AnswerCache, cache_key

NAMES = [
    "web",
    "web.example.com",
    "WEB.Example.Com",
    "missing.example.com",
    "tasks.api",
    "www.upstream.test",
    "WWW.Upstream.Test",
    "cached.upstream.test",
    "single",
    "2.0.17.172.in-addr.arpa",
    "9.9.9.9.in-addr.arpa",
    "version.bind",
]
TYPES = ["A", "AAAA", "PTR", "TXT", "MX", "SRV", "ANY", "AXFR", "IXFR", "OPT", 65280]
SANDBOXES = [CLIENT, SITE, SEALED, MIXED, LONELY]
NOW = 1000.0


def _with_cached_entry(cache: AnswerCache, view: object, name: str) -> None:
    """Cache an upstream answer for `name` A under the view's scope (as the forwarder would)."""
    wire = query(name, "A", rd=True)
    action = respond(wire, view, cache, NOW)  # type: ignore[arg-type]
    if not isinstance(action, Forward):
        return
    reply = dns.message.make_response(dns.message.from_wire(wire))
    reply.answer.append(dns.rrset.from_text(f"{name}.", 300, "IN", "A", "192.0.2.7"))
    assert cache.store(action, reply.to_wire(), NOW)
    assert cache_key(action) in cache._entries


@settings(max_examples=600, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    sandbox=st.sampled_from(SANDBOXES),
    name=st.sampled_from(NAMES),
    rdtype=st.sampled_from(TYPES),
    qid=st.integers(0, 65535),
    rd=st.booleans(),
    edns=st.sampled_from([None, None, 0]),
    tail=st.sampled_from([b"", b"", b"\x00", b"junk"]),
    cut=st.sampled_from([0, 0, 0, 1, 3]),
)
def test_forward_plain_is_respond_or_declines(
    sandbox: str, name: str, rdtype: str | int, qid: int, rd: bool, edns: int | None, tail: bytes, cut: int
) -> None:
    wire = query(name, rdtype, qid=qid, rd=rd, edns=edns) + tail
    wire = wire[: len(wire) - cut] if cut else wire
    results = []
    for _ in range(2):  # twin views and caches: the two roads must not see each other's side effects
        view = views()[sandbox]
        cache = AnswerCache(100, 3600)
        _with_cached_entry(cache, view, "cached.upstream.test")
        results.append((view, cache))
    (short_view, short_cache), (long_view, long_cache) = results
    short = forward_plain(wire, short_view, short_cache, NOW + 1)
    expected = respond(wire, long_view, long_cache, NOW + 1)
    if short is None:
        return
    assert short == expected
    assert short_view.cached.keys() == long_view.cached.keys()
    assert (short_cache.hits, short_cache.misses) == (long_cache.hits, long_cache.misses)


def test_forward_plain_takes_the_forwarded_and_cached_cases() -> None:
    """It is not a test that passes by always declining: a foreign name forwards, a cached one answers."""
    view = views()[CLIENT]
    cache = AnswerCache(100, 3600)
    _with_cached_entry(cache, view, "cached.upstream.test")
    forwarded = forward_plain(query("www.upstream.test"), view, cache, NOW)
    assert isinstance(forwarded, Forward) and forwarded.max_size == 512 and not forwarded.edns
    cached = forward_plain(query("cached.upstream.test"), view, cache, NOW)
    assert isinstance(cached, Reply) and cached.outcome == "cache"
    assert forward_plain(query("web"), view, cache, NOW) is None, "a local name is the general path's"
    assert forward_plain(query("www.upstream.test", edns=0), view, cache, NOW) is None, "EDNS is not plain"
