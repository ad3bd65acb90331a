"""DNS name and address rules for registry input: validation and the wire forms used as lookup keys.

Rules: a registry name (endpoint name, alias, hostname, network, service) is one DNS label of letters,
digits, '-' and '_' (1-63 octets, no leading or trailing '-'); a domain is a dot-separated sequence of
such labels, at most 253 characters. Keys are the lower-cased uncompressed wire form of the fully
qualified name, which is what the answering core slices out of a query.
"""

from __future__ import annotations

import ipaddress
import re

from resolver.registry.errors import InvalidValue

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")
MAX_DOMAIN_TEXT = 189
"""A domain leaves room for one 63-octet label in front: answer targets (`name.domain.`) and the SOA
contact (`hostmaster.domain.`) must fit the 255-octet wire limit."""


def check_label(value: str, what: str) -> str:
    """Return `value` if it is one valid DNS label, else raise InvalidValue naming `what`."""
    if not isinstance(value, str) or not _LABEL.match(value):
        raise InvalidValue(
            f"{what} {value!r} is not a valid DNS label "
            "(1-63 letters, digits, '-' or '_', not starting or ending with '-')"
        )
    return value


def check_domain(value: str, what: str = "domain") -> str:
    """Return `value` without a trailing dot if it is a valid multi-label DNS name."""
    text = value[:-1] if isinstance(value, str) and value.endswith(".") else value
    if not isinstance(text, str) or not text or len(text) > MAX_DOMAIN_TEXT:
        raise InvalidValue(
            f"{what} {value!r} is not a valid DNS name (1-{MAX_DOMAIN_TEXT} characters, so that a "
            "63-character name still fits in front of it)"
        )
    for label in text.split("."):
        check_label(label, f"{what} {value!r}: label")
    return text


def check_ipv4(value: str) -> ipaddress.IPv4Address:
    """Parse an IPv4 address or raise InvalidValue."""
    try:
        return ipaddress.IPv4Address(value)
    except (ipaddress.AddressValueError, ValueError, TypeError):
        raise InvalidValue(f"{value!r} is not a valid IPv4 address") from None


def check_ipv6(value: str) -> ipaddress.IPv6Address:
    """Parse an IPv6 address or raise InvalidValue."""
    try:
        return ipaddress.IPv6Address(value)
    except (ipaddress.AddressValueError, ValueError, TypeError):
        raise InvalidValue(f"{value!r} is not a valid IPv6 address") from None


def check_ip(value: str) -> IPAddress:
    """Parse an IPv4 or IPv6 address or raise InvalidValue."""
    try:
        return ipaddress.ip_address(value)
    except (ValueError, TypeError):
        raise InvalidValue(f"{value!r} is not a valid IP address") from None


def wire_key(*parts: str) -> bytes:
    """Lower-cased wire form of the absolute name made of the dotted `parts` (root label included)."""
    out = bytearray()
    for part in parts:
        for label in part.split("."):
            if label:
                raw = label.lower().encode("ascii")
                out.append(len(raw))
                out += raw
    out.append(0)
    return bytes(out)


def key_text(key: bytes) -> str:
    """The dotted text form (with trailing dot) of a wire key, for messages and logs."""
    labels: list[str] = []
    offset = 0
    while key[offset]:
        length = key[offset]
        labels.append(key[offset + 1 : offset + 1 + length].decode("ascii", "replace"))
        offset += length + 1
    return ".".join(labels) + "."


def reverse_key(address: IPAddress) -> bytes:
    """Wire key of the in-addr.arpa / ip6.arpa name of `address`."""
    return wire_key(address.reverse_pointer)
