"""What the adapters share: list and address splitting, URL quoting, the control client's own HTTP, and the
rule that the adapters import only the standard library (checked in a fresh interpreter).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from resolver.adapters import common
from resolver.control import client


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ()),
        ("web", ("web",)),
        ("a b", ("a", "b")),
        ("a;b, c\tb", ("a", "b", "c")),
        (" ;, ", ()),
    ],
)
def test_split_list(text: str, expected: tuple[str, ...]) -> None:
    assert common.split_list(text) == expected


@pytest.mark.parametrize(
    ("addresses", "expected"),
    [
        (["10.0.0.2/24", "fd00::2/64", "10.0.0.3"], (("10.0.0.2", "10.0.0.3"), ("fd00::2",))),
        (["10.0.0.2", "10.0.0.2/8"], (("10.0.0.2",), ())),
        (["FD00:0::2"], ((), ("fd00::2",))),
        ([], ((), ())),
    ],
)
def test_split_addresses(addresses: list[str], expected: tuple[tuple[str, ...], tuple[str, ...]]) -> None:
    assert common.split_addresses(addresses) == expected


@pytest.mark.parametrize(
    ("text", "expected"), [("abc-1_.~", "abc-1_.~"), ("a?b#c", "a%3Fb%23c"), ("é", "%C3%A9")]
)
def test_quote(text: str, expected: str) -> None:
    assert common.quote(text) == expected


def test_registration_body_drops_aliases_equal_to_the_name_and_repeats() -> None:
    reg = common.Registration("n", "/run/netns/x", "id1", "web", aliases=("web", "www", "www"))
    assert reg.body() == {
        "network": "n",
        "netns": "/run/netns/x",
        "endpoint": "id1",
        "name": "web",
        "aliases": ["www"],
        "ipv4": [],
        "ipv6": [],
        "rewrite_resolv_conf": True,
    }


# ---- the control client's HTTP ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "body", "expected"),
    [
        ("GET", None, b"GET /v1/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"),
        ("DELETE", None, b"DELETE /v1/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"),
        (
            "POST",
            {"a": 1},
            b"POST /v1/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
            b'Content-Type: application/json\r\nContent-Length: 8\r\n\r\n{"a": 1}',
        ),
        (
            "POST",
            None,
            b"POST /v1/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
        ),
    ],
)
def test_encode_request(method: str, body: object, expected: bytes) -> None:
    assert client.encode_request(method, "/v1/x", body) == expected


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            b"HTTP/1.1 201 Created\r\nContent-Type: application/json; charset=utf-8\r\n"
            b"Content-Length: 2\r\n\r\n{}xx",
            (201, "application/json", b"{}"),
        ),
        (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil eof", (200, "text/plain", b"until eof")),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
            (200, "", b"abcde"),
        ),
    ],
)
def test_decode_response(data: bytes, expected: tuple[int, str, bytes]) -> None:
    assert client.decode_response(data) == expected


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"HTTP/1.1 200 OK\r\nContent-Length: 9",
        b"SPDY 200\r\n\r\n",
        b"HTTP/1.1 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
    ],
)
def test_decode_response_refuses_broken_responses(data: bytes) -> None:
    with pytest.raises(client._BadResponse):
        client.decode_response(data)


def test_unreachable_daemon_is_a_clear_error() -> None:
    with pytest.raises(client.ControlError, match=r"cannot reach the daemon at /nonexistent/s\.sock"):
        client.call("GET", "/v1/status", socket_path="/nonexistent/s.sock")


# ---- standard library only --------------------------------------------------------------------------

_LIST_IMPORTS = """
import json, sys
before = set(sys.modules)
import resolver.adapters.cni, resolver.adapters.oci_hook
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def test_adapters_import_only_the_standard_library() -> None:
    """In a fresh interpreter: every module the adapters load is stdlib or resolver's own stdlib-only ones."""
    result = subprocess.run([sys.executable, "-c", _LIST_IMPORTS], capture_output=True, text=True, check=True)
    loaded = json.loads(result.stdout)
    ours = {m for m in loaded if m == "resolver" or m.startswith("resolver.")}
    assert ours == {
        "resolver",
        "resolver.adapters",
        "resolver.adapters.cni",
        "resolver.adapters.common",
        "resolver.adapters.oci_hook",
        "resolver.control",
        "resolver.control.client",
    }
    foreign = sorted(m for m in set(loaded) - ours if m.split(".")[0].lstrip("_") not in _stdlib())
    assert foreign == []
    assert not {"http.client", "ssl", "email"} & set(loaded)  # the slow ones the client avoids


def _stdlib() -> set[str]:
    return {name.lstrip("_") for name in sys.stdlib_module_names}
