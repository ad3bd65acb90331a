"""The seed inputs of each fuzz target, and the files of fuzz/corpus/<target>/ made from them.

Regenerate the corpus (it is small and committed):  .venv/bin/python -m fuzz.seeds
The property tests start from the same seeds.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
from pathlib import Path

import dns.edns
import dns.flags
import dns.message
import dns.opcode
import dns.rrset

from resolver.nsinject import resolvconf as rc

CORPUS = Path(__file__).resolve().parent / "corpus"


def query(
    name: str,
    rdtype: str | int = "A",
    *,
    qid: int = 0x2A2A,
    edns: int | bool = False,
    payload: int = 1232,
    do: bool = False,
    options: tuple[dns.edns.Option, ...] = (),
    ednsflags: int = 0,
    flags: int = dns.flags.RD,
    rdclass: str = "IN",
) -> bytes:
    message = dns.message.make_query(name, rdtype, rdclass, use_edns=edns, payload=payload, want_dnssec=do)
    message.id = qid
    message.flags = flags
    if options or ednsflags:
        message.use_edns(edns or 0, ednsflags | (dns.flags.DO if do else 0), payload, options=list(options))
    return message.to_wire()


def queries() -> list[bytes]:
    """Queries for every kind of answer the world of fuzz/targets.py gives."""
    out = [
        query(name, rdtype)
        for name, rdtype in (
            ("web0", "A"),
            ("WWW", "AAAA"),
            ("web1.corp.test", "A"),
            ("corp.test", "SOA"),
            ("corp.test", "NS"),
            ("nothere.corp.test", "A"),
            ("tasks.api", "A"),
            ("api", "ANY"),
            ("_http._tcp.web2", "SRV"),
            ("2.0.1.10.in-addr.arpa", "PTR"),
            ("cached.example", "A"),
            ("forwarded.example", "A"),
            ("secret", "A"),
            ("web0", 666),
            ("corp.test", "AXFR"),
            ("web0", "OPT"),
        )
    ]
    out += [
        query("web0", "A", edns=0, do=True),
        query("corp.test", "SOA", edns=1),
        query("corp.test", "SOA", edns=0, options=(dns.edns.GenericOption(100, b""),)),
        query("corp.test", "SOA", edns=0, ednsflags=0x0080),
        query("corp.test", "DNSKEY", edns=0, payload=512, do=True),
        query("forwarded.example", "TXT", edns=0, payload=4096),
        query("version.bind", "TXT", rdclass="CH"),
        query("web0", "A", flags=dns.flags.RD | dns.flags.AD | dns.flags.CD | 0x0040),
    ]
    opcode15 = bytearray(query("corp.test", "SOA"))
    opcode15[2] |= 15 << 3
    out.append(bytes(opcode15))
    out.append(struct.pack("!HHHHHH", 7, 0x7B00, 0, 0, 0, 0))
    out.append(bytes(query("web0")[:20]))
    return out


def tcp_streams() -> list[bytes]:
    """Streams of framed queries (the first byte picks the chunking), some ending in a bad frame."""
    qs = queries()
    framed = [struct.pack("!H", len(q)) + q for q in qs]
    return [
        bytes([seed]) + b"".join(framed[start : start + 3]) + tail
        for seed, (start, tail) in enumerate(
            [(0, b""), (3, b"\x00\x00"), (6, b"\x00\x20abc"), (9, b"\x00"), (12, b""), (20, b"\x00\x0b" * 2)]
        )
    ]


def resolv_confs() -> list[bytes]:
    texts = [
        "nameserver 192.0.2.1\nnameserver 2001:db8::1\nsearch example.com corp\noptions ndots:2 timeout:1\n",
        "# comment\n; other\ndomain example.org\nnameserver 127.0.0.11\nnameserver fe80::1%eth0 # zone\n",
        "options ndots:x ndots:3 rotate\r\nsortlist 10.0.0.0/8\r\nlookup file bind\r\n",
        "  nameserver 10.0.0.1\nnameserver\tgarbage\nsearch\n",
    ]
    original = rc.parse(texts[0])
    texts.append(rc.sandbox_file(original)[0])
    return [text.encode() for text in texts] + [b"nameserver 1.2.3.4\nsearch caf\xc3\xa9 \xff\xfe\n"]


def control_bodies() -> list[bytes]:
    bodies: list[object] = [
        {"name": "net1", "internal": False, "domain": "corp.test", "dns": ["192.0.2.1"], "ttl": 30},
        {"name": "svc", "vips": ["10.1.0.200"], "mode": "dnsrr"},
        {
            "network": "front",
            "netns": "/run/netns/x",
            "endpoint": "0123456789abcdef",
            "name": "app",
            "aliases": ["a1", "a2"],
            "hostname": "host",
            "ipv4": ["10.1.0.50"],
            "ipv6": ["fd00::50"],
            "service": "api",
            "ports": ["http:tcp:8080"],
            "resolv_conf": "/etc/resolv.conf",
            "dns": ["192.0.2.2"],
        },
        {"name": "web0", "netns": "ns0", "type": "AAAA"},
        [],
        "text",
        None,
    ]
    return [json.dumps(body).encode() for body in bodies] + [b"{", b'{"name": 1e999}']


def relay_tails() -> list[bytes]:
    """What follows the header counts in an upstream reply (see targets.check_relay)."""
    query_msg = dns.message.make_query("www.example.com", "A", use_edns=0)
    reply = dns.message.make_response(query_msg)
    reply.answer.append(dns.rrset.from_text("www.example.com.", 60, "IN", "A", "192.0.2.9"))
    reply.authority.append(
        dns.rrset.from_text("example.com.", 60, "IN", "SOA", "ns.example.com. h.example.com. 1 2 3 4 5")
    )
    wire = reply.to_wire()
    question_end = 12 + len(query_msg.question[0].name.to_wire()) + 4
    opt_in_authority = bytes.fromhex("000100010001000000000200ffff0300000004000000050000292000000000000000")
    return [wire[4:12] + wire[question_end:], wire[4:12], opt_in_authority]


SEEDS = {
    "datagram": queries,
    "respond": queries,
    "tcp": tcp_streams,
    "resolvconf": resolv_confs,
    "control": control_bodies,
    "relay": relay_tails,
}


def write_corpus(root: Path = CORPUS) -> None:
    for target, make in SEEDS.items():
        folder = root / target
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for data in make():
            (folder / hashlib.sha1(data).hexdigest()[:16]).write_bytes(data)


if __name__ == "__main__":
    write_corpus()
