"""Errors raised by the registry when an event is refused.

Every error carries a `kind` that the control API maps to an HTTP status: `invalid` (400), `not-found`
(404), `conflict` (409) and `unavailable` (503: the shared registry of a global network is unreachable).
The message says what is wrong in words a user can act on.
"""

from __future__ import annotations

from typing import ClassVar


class RegistryError(Exception):
    """An event the registry refused; nothing was changed."""

    kind: ClassVar[str] = "invalid"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidValue(RegistryError):
    """A name, address or setting in the event is not valid."""


class NotFound(RegistryError):
    """The event names a network, endpoint or service that does not exist."""

    kind = "not-found"


class Conflict(RegistryError):
    """The event clashes with what is registered (duplicate id or address, network still in use)."""

    kind = "conflict"


class Unavailable(RegistryError):
    """The change needs the shared registry (a global network) and it cannot be reached now."""

    kind = "unavailable"
