"""Runs inside a sandbox: for each name read on stdin, one A query to 127.0.0.11 over UDP (dnspython);
prints one JSON line per name: {"rcode": "NOERROR" | "NXDOMAIN" | ... | "NO-REPLY", "addresses": [...]}.
Started once per sandbox, it answers in milliseconds, so polling with it does not add a process start."""

from __future__ import annotations

import json
import sys

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype


def main() -> None:
    for line in sys.stdin:
        query = dns.message.make_query(line.strip(), "A")
        try:
            reply = dns.query.udp(query, "127.0.0.11", timeout=0.5)
        except (dns.exception.DNSException, OSError) as exc:
            print(json.dumps({"rcode": "NO-REPLY", "addresses": [], "error": repr(exc)}), flush=True)
            continue
        addresses = sorted(
            rr.address for rrset in reply.answer if rrset.rdtype == dns.rdatatype.A for rr in rrset
        )
        print(json.dumps({"rcode": dns.rcode.to_text(reply.rcode()), "addresses": addresses}), flush=True)


if __name__ == "__main__":
    main()
