"""The sandbox's ``resolv.conf``, as text and as a value: parse, transform, render. Pure: no I/O.

This module owns the rules for what a sandbox's ``resolv.conf`` says once the embedded resolver serves it
(DESIGN.md section 4; moby's ``TransformForIntNS``). It never opens a file, a socket or a clock;
``resolvfile`` does the reading and writing.

Parsing follows glibc (resolv.conf(5)), leniently:

- the file is split on ``\\n`` only; trailing blanks (and a ``\\r``) are ignored;
- a line whose first character is ``#`` or ``;`` is a comment and is dropped;
- a directive starts in column 0 with an ASCII letter; its words are separated by spaces or tabs (a
  stray ``\\r`` counts as a blank); any other line (leading blank, punctuation...) is garbage and is
  dropped, as glibc ignores it;
- ``nameserver ADDR``: ADDR ends at a blank, ``#`` or ``;`` and must be an IPv4 or IPv6 address (an IPv6
  ``%zone`` is allowed); it is kept as written; invalid ones are dropped;
- ``domain NAME`` and ``search NAME...``: the last of them wins; ``domain`` keeps only its first word;
- ``options``: words accumulate across lines;
- any other keyword (``sortlist``, ``lookup``...) is kept verbatim, in order, in ``other_lines``.

The sandbox's file (``transform_for_sandbox``): the resolver's address is the only nameserver; search,
options and other lines are kept; every original server except the resolver's own address becomes an
upstream. ``ndots``: an ``ndots:N`` with N a non-negative decimal integer is valid; invalid ones are
dropped; of the valid ones only the last (the one glibc applies) is kept; ``ndots:0`` is appended only
when none is valid. ``render`` writes a header that marks the file as ours and a footer that records the
upstreams (``# ExtServers: [...]``) so that a restarted daemon can read them back (``parse_footer``,
``recover_original``).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace

RESOLVER_ADDRESS = "127.0.0.11"
MANAGED_HEADER = "# Managed by the embedded DNS resolver; the original nameservers are listed below."
EDIT_NOTE = "# A hand-edited file is left alone and is not restored when the sandbox leaves."
NO_SERVERS_NOTE = "# NO EXTERNAL NAMESERVERS DEFINED"
NDOTS_ZERO = "ndots:0"

_EXT_SERVERS = re.compile(r"# ExtServers: \[(.*)\]")
_NDOTS_FROM = re.compile(r"# Option ndots from: (\S+)")
_KEYWORD = re.compile(r"[A-Za-z]")
_BLANKS = re.compile(r"[ \t\r]+")
_NAMESERVER_END = re.compile(r"[ \t\r#;]")
_VALID_NDOTS = re.compile(r"ndots:[0-9]+")


@dataclass(frozen=True)
class ResolvConf:
    """What a resolver library takes from a ``resolv.conf``; comments are not kept."""

    nameservers: tuple[str, ...] = ()
    search: tuple[str, ...] = ()
    options: tuple[str, ...] = ()
    other_lines: tuple[str, ...] = ()


# --- parsing ---------------------------------------------------------------------------------------


def parse(text: str) -> ResolvConf:
    """Read ``text`` as glibc would; never raises (garbage lines are dropped)."""
    nameservers: list[str] = []
    search: tuple[str, ...] = ()
    options: list[str] = []
    other: list[str] = []
    for raw in text.split("\n"):
        line = raw.rstrip(" \t\r")
        if not _KEYWORD.match(line):
            continue  # blank, comment ('#', ';') or garbage
        keyword, rest = _split_keyword(line)
        words = _words(rest)
        if keyword == "nameserver":
            address = _nameserver_address(rest)
            if address is not None:
                nameservers.append(address)
        elif keyword == "search":
            search = tuple(words)
        elif keyword == "domain":
            search = tuple(words[:1])
        elif keyword == "options":
            options.extend(words)
        else:
            other.append(line)
    return ResolvConf(tuple(nameservers), search, tuple(options), tuple(other))


def _split_keyword(line: str) -> tuple[str, str]:
    match = _BLANKS.search(line)
    return (line, "") if match is None else (line[: match.start()], line[match.end() :])


def _words(rest: str) -> list[str]:
    return [word for word in _BLANKS.split(rest) if word]


def _nameserver_address(rest: str) -> str | None:
    candidate = _NAMESERVER_END.split(rest.lstrip(" \t\r"), maxsplit=1)[0]
    return candidate if _is_address(candidate) else None


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _same_address(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return a == b


# --- ndots -----------------------------------------------------------------------------------------


def _is_ndots(option: str) -> bool:
    return option.partition(":")[0] == "ndots"


def _is_valid_ndots(option: str) -> bool:
    return _VALID_NDOTS.fullmatch(option) is not None


def ndots_valid(options: Iterable[str]) -> bool:
    """True when ``options`` carry at least one valid ``ndots:N`` (N a non-negative integer)."""
    return any(_is_valid_ndots(option) for option in options)


def _sandbox_options(options: tuple[str, ...]) -> tuple[str, ...]:
    """Drop invalid ndots, keep only the last valid one in place, else append ``ndots:0``."""
    valid = [i for i, option in enumerate(options) if _is_valid_ndots(option)]
    keep = valid[-1] if valid else -1
    kept = tuple(o for i, o in enumerate(options) if i == keep or not _is_ndots(o))
    return kept if valid else (*kept, NDOTS_ZERO)


# --- transform -------------------------------------------------------------------------------------


def upstream_servers(original: ResolvConf, resolver_address: str = RESOLVER_ADDRESS) -> tuple[str, ...]:
    """The original servers, in order, without duplicates and without the resolver's own address."""
    servers: list[str] = []
    for server in original.nameservers:
        if server not in servers and not _same_address(server, resolver_address):
            servers.append(server)
    return tuple(servers)


def transform_for_sandbox(
    original: ResolvConf, resolver_address: str = RESOLVER_ADDRESS
) -> tuple[ResolvConf, tuple[str, ...]]:
    """The sandbox's configuration and the upstream servers taken from ``original``."""
    conf = ResolvConf(
        nameservers=(resolver_address,),
        search=original.search,
        options=_sandbox_options(original.options),
        other_lines=original.other_lines,
    )
    return conf, upstream_servers(original, resolver_address)


def sandbox_file(
    original: ResolvConf, resolver_address: str = RESOLVER_ADDRESS
) -> tuple[str, tuple[str, ...]]:
    """``transform_for_sandbox`` then ``render``: the text to write and the upstream servers."""
    conf, servers = transform_for_sandbox(original, resolver_address)
    return render(conf, servers, ndots_added=not ndots_valid(original.options)), servers


# --- rendering -------------------------------------------------------------------------------------


def _body_lines(conf: ResolvConf) -> list[str]:
    lines = [f"nameserver {server}" for server in conf.nameservers]
    if conf.search:
        lines.append("search " + " ".join(conf.search))
    if conf.options:
        lines.append("options " + " ".join(conf.options))
    lines.extend(conf.other_lines)
    return lines


def render_plain(conf: ResolvConf) -> str:
    """``conf`` as a plain ``resolv.conf`` (no header, no footer)."""
    return "".join(line + "\n" for line in _body_lines(conf))


def render(conf: ResolvConf, footer_servers: tuple[str, ...], *, ndots_added: bool = False) -> str:
    """``conf`` with our header and a footer recording ``footer_servers`` (the original upstreams).

    ``ndots_added`` says that the ``ndots:0`` was added by the transform, not taken from the original.
    """
    footer = [NO_SERVERS_NOTE] if not footer_servers else []
    footer.append("# ExtServers: [" + " ".join(footer_servers) + "]")
    footer.append("# Option ndots from: " + ("internal" if ndots_added else "host"))
    lines = [MANAGED_HEADER, EDIT_NOTE, "", *_body_lines(conf), "", *footer]
    return "".join(line + "\n" for line in lines)


# --- reading our own file back ---------------------------------------------------------------------


def _footer_lines(text: str) -> list[str] | None:
    lines = [line.rstrip(" \t\r") for line in text.split("\n")]
    return lines if MANAGED_HEADER in lines else None


def parse_footer(text: str) -> tuple[str, ...] | None:
    """The original servers recorded by ``render``; None when ``text`` is not a file we wrote."""
    lines = _footer_lines(text)
    if lines is None:
        return None
    found = [m for m in map(_EXT_SERVERS.fullmatch, lines) if m is not None]
    if not found:
        return None
    return tuple(server for server in found[-1].group(1).split(" ") if server)


def _ndots_was_added(lines: list[str]) -> bool:
    found = [m.group(1) for m in map(_NDOTS_FROM.fullmatch, lines) if m is not None]
    return bool(found) and found[-1] == "internal"


def recover_original(text: str) -> ResolvConf | None:
    """The configuration a file we wrote was made from: footer servers, and without our ``ndots:0``.

    None when ``text`` is not ours. An invalid ndots dropped by the transform cannot be recovered.
    """
    servers = parse_footer(text)
    lines = _footer_lines(text)
    if servers is None or lines is None:
        return None
    current = parse(text)
    options = current.options
    if _ndots_was_added(lines):
        options = tuple(option for option in options if not _is_ndots(option))
    return replace(current, nameservers=servers, options=options)
