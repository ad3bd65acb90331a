"""Regression cases: inputs that fuzzing and probing found to crash or mislead the code, each kept with the
outcome it must have now.

- control API bodies that raised something else than a clear error (nested too deeply for the JSON
  parser, an integer too long to convert, a port number of non-ASCII digits): each is a 400 `invalid`
  with a message, through the real HTTP server on a Unix socket as well as in the decoder.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from fuzz import targets
from resolver.control import schema
from resolver.control.api import ControlServer
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


def test_a_reply_whose_record_counts_overflow_with_our_opt_is_not_relayed_by_splicing() -> None:
    """Found by the relay fuzz target: an additional count of 65535 plus the OPT we add overflowed the
    header's 16-bit field (struct.error escaped). Such a reply is refused or rebuilt, never crashes."""
    import base64

    targets.check_relay(base64.b64decode("AAEAAQABAAAAAAIA//8DAAAABAAAAAUAACkgAAAAAAAAAA=="))
