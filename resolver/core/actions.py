"""The core's only outputs. The I/O layer performs them; the core never does."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import NamedTuple

from resolver.registry.model import Upstream


@dataclass(frozen=True, slots=True)
class Reply:
    """Send `wire` back to the client. `outcome` names the rule that produced it (metrics, logs)."""

    wire: bytes
    outcome: str = "local"


class Forward(NamedTuple):
    """Ask the upstreams. `question` is the question section as the client wrote it (name, type,
    class); `key` its lower-cased form; `max_size` the largest reply the client accepts. A named tuple
    rather than a frozen dataclass: one is made per forwarded query, and a frozen dataclass sets each of
    its nine fields through object.__setattr__ (75 bytecodes per query against about 10)."""

    query: bytes
    question: bytes
    key: bytes
    qtype: int
    upstreams: tuple[Upstream, ...]
    max_size: int
    edns: bool
    do: bool = False
    scope: Hashable = ""


@dataclass(frozen=True, slots=True)
class Drop:
    """Send nothing: the datagram cannot be answered (too short, or itself a response)."""

    reason: str


Action = Reply | Forward | Drop
