"""Request bodies of the control API: JSON objects checked field by field into registry events.

Rules: a body that is not JSON (bad syntax or encoding, nesting too deep for the parser, a number too
long to convert) is an `InvalidValue`; an unknown field, a missing required field or a value of the
wrong JSON type is an `InvalidValue` whose message names the field; value rules (labels, addresses) are
the registry's.
"""

from __future__ import annotations

import json
from typing import Any

from resolver.registry import model as m
from resolver.registry.errors import InvalidValue

_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "bool": (bool,),
    "int": (int,),
    "list": (list,),
    "optstr": (str, type(None)),
}


def decode_body(raw: bytes) -> Any:
    """The JSON value of a request body (UTF-8, -16 or -32), or InvalidValue."""
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        # JSONDecodeError is a ValueError, and so is an integer of more than sys.get_int_max_str_digits()
        reason = "nested too deeply" if isinstance(exc, RecursionError) else "not valid JSON"
        raise InvalidValue(f"the request body is {reason}") from None


def _fields(body: Any, required: dict[str, str], optional: dict[str, str]) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidValue("the request body must be a JSON object")
    unknown = sorted(set(body) - set(required) - set(optional))
    if unknown:
        raise InvalidValue(f"unknown field(s): {', '.join(unknown)}")
    out: dict[str, Any] = {}
    for name, kind in {**required, **optional}.items():
        if name not in body:
            if name in required:
                raise InvalidValue(f"missing field {name!r}")
            continue
        value = body[name]
        ok = isinstance(value, _TYPES[kind]) and not (kind == "int" and isinstance(value, bool))
        if kind == "list":
            ok = ok and all(isinstance(v, str) for v in value)
        if not ok:
            expected = {
                "str": "a string",
                "bool": "true or false",
                "int": "a whole number",
                "list": "a list of strings",
                "optstr": "a string or null",
            }[kind]
            raise InvalidValue(f"field {name!r} must be {expected}")
        out[name] = tuple(value) if kind == "list" else value
    return out


def create_network(body: Any) -> m.CreateNetwork:
    f = _fields(
        body,
        {"name": "str"},
        {"internal": "bool", "domain": "optstr", "dns": "list", "ttl": "int", "scope": "str"},
    )
    return m.CreateNetwork(
        f["name"],
        f.get("internal", False),
        f.get("domain"),
        f.get("dns", ()),
        f.get("ttl", m.DEFAULT_LOCAL_TTL),
        f.get("scope", "local"),
    )


def create_service(network: str, body: Any) -> m.CreateService:
    f = _fields(body, {"name": "str"}, {"vips": "list", "mode": "str"})
    return m.CreateService(network, f["name"], f.get("vips", ()), f.get("mode", "vip"))


def join(body: Any) -> m.JoinEndpoint:
    f = _fields(
        body,
        {"network": "str", "netns": "str", "endpoint": "str", "name": "str"},
        {
            "aliases": "list",
            "hostname": "optstr",
            "ipv4": "list",
            "ipv6": "list",
            "service": "optstr",
            "ports": "list",
            "resolv_conf": "optstr",
            "rewrite_resolv_conf": "bool",
            "dns": "list",
        },
    )
    return m.JoinEndpoint(
        network=f["network"],
        sandbox=f["netns"],
        endpoint=f["endpoint"],
        name=f["name"],
        aliases=f.get("aliases", ()),
        hostname=f.get("hostname"),
        ipv4=f.get("ipv4", ()),
        ipv6=f.get("ipv6", ()),
        service=f.get("service"),
        ports=f.get("ports", ()),
        upstreams=f.get("dns", ()),
        resolv_conf=f.get("resolv_conf"),
        rewrite_resolv_conf=f.get("rewrite_resolv_conf", True),
    )


def query(body: Any) -> tuple[str, str, str]:
    f = _fields(body, {"name": "str", "netns": "str"}, {"type": "str"})
    return f["name"], f.get("type", "A"), f["netns"]
