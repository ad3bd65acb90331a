"""What both runtime adapters share: the join request they build and the control calls that carry it.

Rules: standard library only. Parsing is pure (`split_list`, `split_addresses`, `Registration`); the
control calls (`register`, `unregister`, `registered`) are thin and turn every failure into `AdapterError`
with a message that says what is wrong. `unregister` is idempotent: an endpoint that is not (or no longer)
joined, or a daemon that is not running, is not an error when taking a container away.
"""

from __future__ import annotations

import _socket
import re
import sys

from resolver.control.client import DEFAULT_SOCKET, ControlError, call

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any

_LIST_SEPARATORS = re.compile(r"[\s,;]+")


class Record:
    """Equality and repr by the fields in `__slots__`: the adapters' value objects.

    Not dataclasses, whose import (it loads `inspect`) costs as much as the rest of a plugin's start.
    """

    __slots__: tuple[str, ...] = ()

    def _values(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self._values() == other._values()  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        fields = ", ".join(f"{n}={v!r}" for n, v in zip(self.__slots__, self._values(), strict=True))
        return f"{type(self).__name__}({fields})"


class AdapterError(Exception):
    """A request the adapter cannot carry out; `kind` says whose fault it is (config, env, daemon)."""

    def __init__(self, message: str, kind: str = "daemon") -> None:
        super().__init__(message)
        self.kind = kind


def split_list(text: str) -> tuple[str, ...]:
    """Items of a list written with spaces, commas or semicolons (podman splits annotations on commas)."""
    return tuple(dict.fromkeys(item for item in _LIST_SEPARATORS.split(text) if item))


def split_addresses(addresses: Iterable[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """IPv4 and IPv6 addresses in canonical text (prefix lengths dropped, order kept, no repeats)."""
    v4: dict[str, None] = {}
    v6: dict[str, None] = {}
    for text in addresses:
        address = text.partition("/")[0]
        family = _socket.AF_INET6 if ":" in address else _socket.AF_INET
        try:
            canonical = _socket.inet_ntop(family, _socket.inet_pton(family, address))
        except (OSError, ValueError):
            raise AdapterError(f"{text!r} is not an IP address", "config") from None
        (v6 if family == _socket.AF_INET6 else v4)[canonical] = None
    return tuple(v4), tuple(v6)


class Registration(Record):
    """One container's endpoint on one network, as the daemon's `POST /v1/endpoints` takes it."""

    __slots__ = (
        "aliases",
        "domain",
        "endpoint",
        "ipv4",
        "ipv6",
        "name",
        "netns",
        "network",
        "resolv_conf",
        "rewrite_resolv_conf",
    )

    def __init__(
        self,
        network: str,
        netns: str,
        endpoint: str,
        name: str,
        aliases: tuple[str, ...] = (),
        ipv4: tuple[str, ...] = (),
        ipv6: tuple[str, ...] = (),
        resolv_conf: str | None = None,
        rewrite_resolv_conf: bool = True,
        domain: str | None = None,  # used only when the network has to be created
    ) -> None:
        self.network, self.netns, self.endpoint, self.name = network, netns, endpoint, name
        self.aliases, self.ipv4, self.ipv6 = aliases, ipv4, ipv6
        self.resolv_conf, self.rewrite_resolv_conf, self.domain = resolv_conf, rewrite_resolv_conf, domain

    def body(self) -> dict[str, Any]:
        aliases = [a for a in dict.fromkeys(self.aliases) if a != self.name]
        body: dict[str, Any] = {
            "network": self.network,
            "netns": self.netns,
            "endpoint": self.endpoint,
            "name": self.name,
            "aliases": aliases,
            "ipv4": list(self.ipv4),
            "ipv6": list(self.ipv6),
            "rewrite_resolv_conf": self.rewrite_resolv_conf,
        }
        if self.resolv_conf:
            body["resolv_conf"] = self.resolv_conf
        return body


class Control:
    """The daemon's control socket, as an adapter uses it."""

    def __init__(self, socket: str = DEFAULT_SOCKET, timeout: float = 20.0) -> None:
        self.socket = socket
        self.timeout = timeout

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        return call(method, path, body, socket_path=self.socket, timeout=self.timeout)

    def ensure_network(self, name: str, domain: str | None) -> None:
        body: dict[str, Any] = {"name": name}
        if domain:
            body["domain"] = domain
        try:
            self._call("POST", "/v1/networks", body)
        except ControlError as exc:
            if exc.status != 409:
                raise AdapterError(_daemon_message(exc, f"creating network {name!r}"), _kind(exc)) from None

    def register(self, registration: Registration) -> dict[str, Any]:
        """Join the endpoint (creating its network first when the daemon does not know it)."""
        self.ensure_network(registration.network, registration.domain)
        try:
            result: dict[str, Any] = self._call("POST", "/v1/endpoints", registration.body())
        except ControlError as exc:
            where = f"joining {registration.endpoint!r} to network {registration.network!r}"
            raise AdapterError(_daemon_message(exc, where), _kind(exc)) from None
        return result

    def unregister(self, endpoint: str, network: str) -> bool:
        """Leave; True if the endpoint was joined. A missing endpoint or daemon is not an error."""
        try:
            self._call("DELETE", f"/v1/endpoints/{quote(endpoint)}?network={quote(network)}")
        except ControlError as exc:
            if exc.status in (0, 404):
                return False
            raise AdapterError(_daemon_message(exc, f"removing {endpoint!r} from {network!r}")) from None
        return True

    def registered(self, endpoint: str, network: str) -> dict[str, Any]:
        """The daemon's record of the endpoint; AdapterError if it is not joined."""
        try:
            result: dict[str, Any] = self._call(
                "GET", f"/v1/endpoints/{quote(endpoint)}?network={quote(network)}"
            )
        except ControlError as exc:
            raise AdapterError(_daemon_message(exc, f"checking {endpoint!r} on {network!r}")) from None
        return result


def quote(text: str) -> str:
    """Percent-encode everything but unreserved URL characters (saves importing urllib)."""
    return "".join(c if c.isascii() and (c.isalnum() or c in "-._~") else _percent(c) for c in text)


def _percent(char: str) -> str:
    return "".join(f"%{b:02X}" for b in char.encode())


def _kind(exc: ControlError) -> str:
    return "config" if exc.status == 400 else "daemon"


def _daemon_message(exc: ControlError, doing: str) -> str:
    if exc.status == 0:
        return f"{doing}: {exc}"
    return f"{doing}: the daemon refused: {exc}"


def warn(program: str, message: str) -> None:
    print(f"{program}: {message}", file=sys.stderr)
