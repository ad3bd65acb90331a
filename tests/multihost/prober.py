"""Runs inside a sandbox: for each name read on stdin, one A query to 127.0.0.11 over UDP (dnspython);
prints one JSON line per name: {"rcode": "NOERROR" | "NXDOMAIN" | ... | "NO-REPLY", "addresses": [...]}.
Started once per sandbox, it answers in milliseconds, so polling with it does not add a process start.

`wait NAME` instead queries every millisecond until NAME has an address (at most 10 s) and prints
{"resolved_at": CLOCK_MONOTONIC seconds or null} (the benchmark's join-to-resolvable latency)."""

from __future__ import annotations

import json
import sys
import time

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype


def lookup(name: str) -> dict[str, object]:
    query = dns.message.make_query(name, "A")
    try:
        reply = dns.query.udp(query, "127.0.0.11", timeout=0.5)
    except (dns.exception.DNSException, OSError) as exc:
        return {"rcode": "NO-REPLY", "addresses": [], "error": repr(exc)}
    addresses = sorted(r.address for rrset in reply.answer if rrset.rdtype == dns.rdatatype.A for r in rrset)
    return {"rcode": dns.rcode.to_text(reply.rcode()), "addresses": addresses}


def wait(name: str, timeout: float = 10.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if lookup(name)["addresses"]:
            return {"resolved_at": time.monotonic()}
        time.sleep(0.001)
    return {"resolved_at": None}


def main() -> None:
    for line in sys.stdin:
        words = line.split()
        result = wait(words[1]) if len(words) == 2 and words[0] == "wait" else lookup(line.strip())
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
