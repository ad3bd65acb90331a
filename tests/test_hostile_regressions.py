"""Regression cases: inputs that fuzzing and probing found to crash or mislead the code, each kept with the
outcome it must have now.

- control API bodies that raised something else than a clear error (nested too deeply for the JSON
  parser, an integer too long to convert, a port number of non-ASCII digits): each is a 400 `invalid`
  with a message, through the real HTTP server on a Unix socket as well as in the decoder;
- an upstream reply whose last record is an OPT in the authority section (not the additional one): the
  relay took it for the reply's OPT, counted -1 additional records and raised struct.error (the
  dispatcher logged an internal error per query); it is now refused as malformed, so the next server is
  tried.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import dns.message
import dns.rrset
import pytest

from fuzz import targets
from resolver.control import schema
from resolver.control.api import ControlServer
from resolver.core import forward as fw
from resolver.core.actions import Forward
from resolver.registry.errors import InvalidValue

JOIN = {"network": "front", "netns": "/run/netns/x", "endpoint": "0123456789abcdef", "name": "app"}

# (request path, raw body, words the error message must contain)
BAD_BODIES = [
    ("/v1/networks", b"[" * 100_000, "nested too deeply"),
    ("/v1/networks", b'{"name": "n", "ttl": ' + b"7" * 5000 + b"}", "not valid JSON"),
    ("/v1/endpoints", json.dumps({**JOIN, "ports": ["http:tcp:\u00b2"]}).encode(), "number must be 1-65535"),
    ("/v1/endpoints", json.dumps({**JOIN, "ports": ["http:tcp:" + "8" * 5000]}).encode(), "1-65535"),
    ("/v1/endpoints", json.dumps({**JOIN, "ports": ["http:tcp:\u0668\u0660"]}).encode(), "1-65535"),
    ("/v1/networks", b"\xff\xfe\x00", "not valid JSON"),
]


BODY_IDS = [f"{path}-{raw[:12]!r}" for path, raw, _ in BAD_BODIES]


@pytest.mark.parametrize(("path", "raw", "words"), BAD_BODIES, ids=BODY_IDS)
def test_bad_body_is_a_clear_error_in_the_property(path: str, raw: bytes, words: str) -> None:
    targets.check_control(raw)  # raises on anything but a clear RegistryError


class _Daemon:
    """What the control server needs of a daemon for a refused request: validation happens first, so
    reaching the daemon at all is a failure."""

    def __init__(self) -> None:
        self.calls: list[Any] = []

    async def create_network(self, event: Any) -> Any:
        self.calls.append(event)
        raise AssertionError("an invalid body reached the daemon")

    async def join(self, event: Any) -> Any:
        self.calls.append(event)
        targets.registry().apply(event)  # the registry refuses the value, as the real daemon's does
        raise AssertionError("an invalid endpoint was accepted")


async def _post_all(socket_path: Path) -> list[tuple[int, dict[str, Any]]]:
    server = ControlServer(_Daemon(), str(socket_path))  # type: ignore[arg-type]
    await server.start()
    try:
        results = []
        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(socket_path))) as session:
            for path, raw, _ in BAD_BODIES:
                async with session.post(f"http://control{path}", data=raw) as response:
                    results.append((response.status, await response.json()))
        return results
    finally:
        await server.stop()


def test_bad_bodies_get_400_from_the_server(tmp_path: Path) -> None:
    results = asyncio.run(_post_all(tmp_path / "c.sock"))
    for (path, raw, words), (status, body) in zip(BAD_BODIES, results, strict=True):
        assert status == 400, f"{path} {raw[:20]!r}: {status} {body}"
        assert body["error"]["kind"] == "invalid" and words in body["error"]["message"], body


@pytest.mark.parametrize(("raw", "words"), [(r, w) for p, r, w in BAD_BODIES if p == "/v1/networks"])
def test_decode_body_names_the_problem(raw: bytes, words: str) -> None:
    with pytest.raises(InvalidValue, match=words):
        schema.create_network(schema.decode_body(raw))


# what atheris found (fuzz target `relay`), as it found it
RELAY_CRASHES = [bytes.fromhex("000100010001000000000200ffff0300000004000000050000292000000000000000")]


@pytest.mark.parametrize("data", RELAY_CRASHES, ids=lambda d: d.hex()[:16])
def test_relay_crash_inputs(data: bytes) -> None:
    targets.check_relay(data)


def _opt_in_authority(query: dns.message.Message) -> bytes:
    """A NOERROR answer whose authority section ends with an OPT record (and no additional section)."""
    reply = dns.message.make_response(query)
    reply.use_edns(False)
    reply.answer.append(dns.rrset.from_text(query.question[0].name, 60, "IN", "A", "192.0.2.1"))
    wire = bytearray(reply.to_wire())
    wire[8:10] = b"\x00\x01"  # NSCOUNT 1: the OPT below
    return bytes(wire) + b"\x00" + b"\x00\x29\x04\xd0" + bytes(4) + b"\x00\x00"


@pytest.mark.parametrize("client_edns", [False, True])
def test_relay_refuses_an_opt_outside_the_additional_section(client_edns: bool) -> None:
    query = dns.message.make_query("www.example.com", "A")
    wire = query.to_wire()
    forward = Forward(wire, wire[12:], wire[12:-4].lower(), 1, (), 1232, client_edns)
    assert fw.relay(_opt_in_authority(query), forward) is None
