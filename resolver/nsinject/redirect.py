"""Docker-style port redirect inside a sandbox's network namespace ("redirect" listen mode).

The resolver listens on ADDRESS:PORT (an ephemeral port) and one nftables table in the sandbox's namespace
sends ADDRESS:53 there, for UDP and TCP:

    table ip resolver_dns { chain output { type nat hook output priority -100; policy accept;
        ip daddr 127.0.0.11 udp dport 53 dnat to 127.0.0.11:PORT   (and the same for tcp) } }

Only the OUTPUT hook is needed: conntrack reverses the DNAT, and route_localnet is not required for
traffic that starts and ends on loopback. Rules this module keeps:

* It owns exactly one table, ``ip resolver_dns``, and never touches any other table in the namespace.
* Every change is one ``nft -f -`` transaction (create-if-missing, delete, re-create), so a reader never
  sees a half-built table and installing twice gives the same result.
* nft runs in the target namespace through ``nsenter --net=PATH``; no namespace switching happens in this
  process, so these functions are safe from any thread. They block (a few ms): call them through
  ``asyncio.to_thread`` from the event loop.
* Failures raise `RedirectError` carrying nft's stderr.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

from resolver.nsinject.netns import netns_path

__all__ = [
    "DNS_PORT",
    "TABLE_FAMILY",
    "TABLE_NAME",
    "RedirectError",
    "install_redirect",
    "redirect_present",
    "remove_redirect",
    "render_ruleset",
]

TABLE_FAMILY = "ip"
TABLE_NAME = "resolver_dns"
CHAIN_NAME = "output"
CHAIN_PRIORITY = -100
DNS_PORT = 53
NFT_TIMEOUT = 10.0
_PROTOCOLS = ("udp", "tcp")


class RedirectError(Exception):
    """An nft command failed, timed out, or nft / nsenter is not installed."""


# ---------------------------------------------------------------------------------------------------------
# Pure rendering


def _check_target(address: str, port: int) -> str:
    try:
        addr = ipaddress.ip_address(address)
    except ValueError as exc:
        raise ValueError(f"redirect address {address!r} is not an IP address") from exc
    if addr.version != 4:
        raise ValueError(f"redirect address {address!r} must be IPv4 (table family ip)")
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"redirect port must be an int in 1..65535, got {port!r}")
    return str(addr)


def _rule(address: str, proto: str, port: int) -> str:
    return f"ip daddr {address} {proto} dport {DNS_PORT} dnat to {address}:{port}"


def _replace_prefix() -> str:
    # "table X" creates the table if missing, so the delete that follows cannot fail.
    return f"table {TABLE_FAMILY} {TABLE_NAME}\ndelete table {TABLE_FAMILY} {TABLE_NAME}\n"


def render_ruleset(address: str, port: int) -> str:
    """The nft script that atomically (re)creates the redirect table for address:53 -> address:port."""
    address = _check_target(address, port)
    rules = "".join(f"\t\t{_rule(address, proto, port)}\n" for proto in _PROTOCOLS)
    return (
        _replace_prefix()
        + f"table {TABLE_FAMILY} {TABLE_NAME} {{\n"
        + f"\tchain {CHAIN_NAME} {{\n"
        + f"\t\ttype nat hook output priority {CHAIN_PRIORITY}; policy accept;\n"
        + rules
        + "\t}\n}\n"
    )


# ---------------------------------------------------------------------------------------------------------
# Running nft inside the namespace


def _binaries() -> tuple[str, str]:
    nft = shutil.which("nft")
    if nft is None:
        raise RedirectError("nft binary is missing (install nftables) - cannot manage the DNS redirect")
    nsenter = shutil.which("nsenter")
    if nsenter is None:
        raise RedirectError("nsenter binary is missing (install util-linux) - cannot reach the namespace")
    return nft, nsenter


def _require_netns(path: str) -> None:
    if not os.path.exists(path):
        raise RedirectError(f"network namespace {path} does not exist")


def _nft(netns: str, args: list[str], script: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``nsenter --net=PATH nft ARGS`` (script on stdin when given). Returns the finished process."""
    nft, nsenter = _binaries()
    path = netns_path(netns)
    _require_netns(path)
    cmd = [nsenter, f"--net={path}", nft, *args]
    try:
        return subprocess.run(
            cmd, input=script, capture_output=True, text=True, timeout=NFT_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise RedirectError(f"nft in {path} timed out after {NFT_TIMEOUT:g}s") from exc
    except OSError as exc:
        raise RedirectError(f"cannot run nft in {path}: {exc}") from exc


def _nft_checked(netns: str, args: list[str], script: str | None = None) -> str:
    proc = _nft(netns, args, script)
    if proc.returncode != 0:
        what = " ".join(args)
        raise RedirectError(
            f"nft {what} in {netns_path(netns)} failed (rc={proc.returncode}): {proc.stderr.strip()}"
        )
    return proc.stdout


# ---------------------------------------------------------------------------------------------------------
# Public operations


def install_redirect(netns: str, address: str, port: int) -> None:
    """Install (or replace) the redirect table in netns: address:53 -> address:port, UDP and TCP."""
    _nft_checked(netns, ["-f", "-"], render_ruleset(address, port))


def remove_redirect(netns: str) -> None:
    """Delete the redirect table from netns; no error if it is already gone."""
    _nft_checked(netns, ["-f", "-"], _replace_prefix())


def redirect_present(netns: str, address: str, port: int) -> bool:
    """True if netns has the redirect table with both the UDP and the TCP rule to address:port."""
    address = _check_target(address, port)
    proc = _nft(netns, ["-j", "list", "table", TABLE_FAMILY, TABLE_NAME])
    if proc.returncode != 0:
        if "No such file or directory" in proc.stderr:
            return False
        raise RedirectError(f"nft list table in {netns_path(netns)} failed: {proc.stderr.strip()}")
    try:
        objects = json.loads(proc.stdout)["nftables"]
    except (ValueError, KeyError, TypeError) as exc:
        raise RedirectError(f"cannot parse nft -j output: {exc}") from exc
    if not _has_output_nat_chain(objects):
        return False
    wanted = {(address, proto, DNS_PORT, address, port) for proto in _PROTOCOLS}
    return wanted <= set(_dnat_rules(objects))


def _has_output_nat_chain(objects: list[dict[str, Any]]) -> bool:
    for obj in objects:
        chain = obj.get("chain")
        if chain and chain.get("name") == CHAIN_NAME:
            return chain.get("type") == "nat" and chain.get("hook") == "output"
    return False


def _dnat_rules(objects: list[dict[str, Any]]) -> Iterator[tuple[str, str, int, str, int]]:
    """Yield (daddr, proto, dport, dnat_addr, dnat_port) for each simple DNAT rule in the output chain."""
    for obj in objects:
        rule = obj.get("rule")
        if not rule or rule.get("chain") != CHAIN_NAME:
            continue
        parsed = _parse_rule(rule.get("expr", []))
        if parsed is not None:
            yield parsed


def _parse_rule(exprs: list[dict[str, Any]]) -> tuple[Any, str, Any, Any, Any] | None:
    matches: dict[tuple[str, str], Any] = {}
    dnat: dict[str, Any] | None = None
    for expr in exprs:
        if "match" in expr:
            match = expr["match"]
            payload = match.get("left", {}).get("payload") if isinstance(match.get("left"), dict) else None
            if match.get("op") != "==" or not payload:
                return None
            matches[(payload.get("protocol"), payload.get("field"))] = match.get("right")
        elif "dnat" in expr:
            dnat = expr["dnat"]
    if dnat is None or len(matches) != 2 or ("ip", "daddr") not in matches:
        return None
    protos = [proto for proto, field in matches if field == "dport" and proto in _PROTOCOLS]
    if len(protos) != 1:
        return None
    proto = protos[0]
    return (matches[("ip", "daddr")], proto, matches[(proto, "dport")], dnat.get("addr"), dnat.get("port"))
