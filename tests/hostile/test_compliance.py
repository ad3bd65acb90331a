"""ISC's EDNS compliance probes (the DNS Compliance Testing tool, `genreport`; RFC 8906 section 8), sent
with dnspython from inside a sandbox to the running daemon, for a zone we serve (a network domain) and
for a zone we forward (served by a real dnsmasq upstream, authoritative for it).

One row per probe (the EDNS, FULL and COMMON groups, and the TYPE group: one plain query per type): the
query genreport sends and what its `process()` accepts as `ok`. The zone probes
ask `SOA <zone>`. A local zone is checked in genreport's default (non-recursive) mode: RD clear, AA set
on NOERROR; the forwarded zone in its recursive mode (`-R`): RD set and echoed, AA clear. Problems are
collected per probe so a failing run names every probe that failed.

What a forwarder must do by itself (RFC 6891, RFC 8906): BADVERS to EDNS version 1 (dnsmasq answers it
NOERROR, so a BADVERS proves we did not relay), NOTIMP with an empty question to opcode 15, never echo
an unknown option or EDNS flag, keep a UDP reply within the client's 512-byte buffer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import dns.edns
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdatatype
import pytest
from forwarding.helpers import Answer, Client

LOCAL_ZONE = "corp.test"
FORWARDED_ZONE = "fwd.example"
Z_FLAG = 0x0040
UNKNOWN_EDNS_FLAG = 0x0080
NSID, ECS, EXPIRE, COOKIE = 3, 8, 9, 10
CLIENT_COOKIE = bytes.fromhex("0102030405060708")
ECS_ZERO = bytes.fromhex("00010000")  # family 1, source and scope prefix 0
ALL_HEADER_FLAGS = Z_FLAG | dns.flags.TC | dns.flags.RD | dns.flags.RA | dns.flags.CD | dns.flags.AD
ALL_HEADER_FLAGS |= dns.flags.AA


@dataclass(frozen=True)
class Probe:
    """One genreport probe: the query (beyond `SOA <zone>` without EDNS) and the expected kind of reply:
    `soa` (NOERROR with the zone's SOA), `nodata` (NOERROR, empty answer), `badvers`, `notimp`."""

    name: str
    expect: str
    rdtype: str | int = "SOA"
    edns: int | None = None
    payload: int = 4096
    do: bool = False
    ednsflags: int = 0
    options: tuple[tuple[int, bytes], ...] = ()
    flags: int = 0
    opcode: int = 0
    header_only: bool = False
    tcp: bool = False
    max_size: int | None = None


PROBES = [
    Probe("dns", "soa"),
    Probe("aa", "soa", flags=dns.flags.AA),
    Probe("ad", "soa", flags=dns.flags.AD),
    Probe("cd", "soa", flags=dns.flags.CD),
    Probe("ra", "soa", flags=dns.flags.RA),
    Probe("rd", "soa", flags=dns.flags.RD),
    Probe("tc", "soa", flags=dns.flags.TC),
    Probe("zflag", "soa", flags=Z_FLAG),
    Probe("opcode", "notimp", opcode=15, header_only=True),
    Probe(
        "opcodeflg",
        "notimp",
        opcode=15,
        header_only=True,
        flags=ALL_HEADER_FLAGS,
    ),
    Probe("type666", "nodata", rdtype="TYPE666"),
    Probe("tcp", "soa", tcp=True),
    Probe("edns", "soa", edns=0),
    Probe("edns1", "badvers", edns=1),
    Probe("edns@512", "small", rdtype="DNSKEY", edns=0, do=True, payload=512, max_size=512),
    Probe("ednsopt", "soa", edns=0, options=((100, b""),)),
    Probe("edns1opt", "badvers", edns=1, options=((100, b""),)),
    Probe("do", "soa", edns=0, do=True),
    Probe("docd", "soa", edns=0, do=True, flags=dns.flags.CD),
    Probe("edns1do", "badvers", edns=1, do=True),
    Probe("ednsflags", "soa", edns=0, ednsflags=UNKNOWN_EDNS_FLAG),
    Probe(
        "optlist",
        "soa",
        edns=0,
        options=((NSID, b""), (ECS, ECS_ZERO), (EXPIRE, b""), (COOKIE, CLIENT_COOKIE)),
    ),
    Probe("ednsnsid", "soa", edns=0, options=((NSID, b""),)),
    Probe("ednscookie", "soa", edns=0, options=((COOKIE, CLIENT_COOKIE),)),
    Probe("ednsexpire", "soa", edns=0, options=((EXPIRE, b""),)),
    Probe("ednssubnet", "soa", edns=0, options=((ECS, ECS_ZERO),)),
    Probe("edns1nsid", "badvers", edns=1, options=((NSID, b""),)),
    Probe("edns1cookie", "badvers", edns=1, options=((COOKIE, CLIENT_COOKIE),)),
    Probe("edns1expire", "badvers", edns=1, options=((EXPIRE, b""),)),
    Probe("edns1subnet", "badvers", edns=1, options=((ECS, ECS_ZERO),)),
    Probe("ednstcp", "small", rdtype="DNSKEY", edns=0, do=True, payload=512, tcp=True),
    Probe("bind11", "soa", edns=0, do=True, options=((COOKIE, CLIENT_COOKIE),)),
    Probe("dig11", "soa", edns=0, options=((COOKIE, CLIENT_COOKIE),), flags=dns.flags.AD | dns.flags.RD),
]
# genreport's TYPE group: a plain query of each type at the zone; any NOERROR answer (data or NODATA)
TYPES = {
    **dict(zip(["A", "NS", "MD", "MF", "CNAME", "SOA", "MB", "MG", "MR", "NULL"], range(1, 11), strict=True)),
    **dict(zip(["WKS", "PTR", "HINFO", "MINFO", "MX", "TXT", "RP", "AFSDB"], range(11, 19), strict=True)),
    **dict(zip(["X25", "ISDN", "RT", "NSAP", "NSAP-PTR", "SIG", "KEY", "PX"], range(19, 27), strict=True)),
    **dict(zip(["GPOS", "AAAA", "LOC", "NXT"], range(27, 31), strict=True)),
    **{"SRV": 33, "NAPTR": 35, "KX": 36, "CERT": 37, "A6": 38, "DNAME": 39, "APL": 42},
    **dict(zip(["DS", "SSHFP", "IPSECKEY", "RRSIG", "NSEC", "DNSKEY"], range(43, 49), strict=True)),
    **dict(zip(["DHCID", "NSEC3", "NSEC3PARAM", "TLSA", "SMIMEA"], range(49, 54), strict=True)),
    **{"HIP": 55, "CDS": 59, "CDNSKEY": 60, "OPENPGPKEY": 61, "SPF": 99},
    **dict(zip(["NID", "L32", "L64", "LP", "EUI48", "EUI64"], range(104, 110), strict=True)),
    **{"URI": 256, "CAA": 257, "AVC": 258, "DOA": 259, "DLV": 32769, "TYPE1000": 1000},
}
TYPE_PROBES = [Probe(name, "noerror", rdtype=code) for name, code in TYPES.items()]


def build(probe: Probe, zone: str, recursive: bool) -> dns.message.Message:
    query = dns.message.make_query(zone, probe.rdtype)
    query.flags = probe.flags | (dns.flags.RD if recursive else 0)
    if probe.edns is not None:
        options = [dns.edns.GenericOption(code, data) for code, data in probe.options]
        query.use_edns(probe.edns, probe.ednsflags, probe.payload, options=options)
        if probe.do:
            query.want_dnssec(True)
    query.set_opcode(dns.opcode.Opcode.make(probe.opcode))
    if probe.header_only:
        query.question = []
    return query


def problems(probe: Probe, query: dns.message.Message, answer: Answer, zone: str, local: bool) -> list[str]:
    """What genreport would flag in `answer` (an empty list: `ok`)."""
    reply, found = answer.message, []

    def need(condition: bool, tag: str) -> None:
        if not condition:
            found.append(tag)

    need(reply.id == query.id, "mismatch")
    if query.edns < 0:
        need(reply.edns < 0, "opt (no OPT in the query)")
    elif probe.expect != "notimp":
        need(reply.edns == 0, f"noopt or version-not-zero (edns {reply.edns})")
    if reply.edns >= 0:
        need(not reply.options, f"echoed options {reply.options}")
        need(not reply.ednsflags & ~dns.flags.DO & 0xFFFF, f"mbz (ednsflags {reply.ednsflags:#x})")
    need(not reply.flags & Z_FLAG, "z")
    need(not (probe.tcp and reply.flags & dns.flags.TC), "tc over tcp")
    if probe.max_size is not None:
        need(len(answer.wire) <= probe.max_size, f"toobig ({len(answer.wire)} bytes)")
    if probe.expect == "notimp":
        need(reply.rcode() == dns.rcode.NOTIMP, f"rcode {dns.rcode.to_text(reply.rcode())}")
        need(reply.opcode() == probe.opcode, "opcode not echoed")
        need(not reply.question, "non-empty-question-section")
        other = dns.flags.AA | dns.flags.TC | dns.flags.RD | dns.flags.RA | dns.flags.AD | dns.flags.CD
        need(not reply.flags & other, f"flags {dns.flags.to_text(reply.flags)}")
        return found
    need(len(reply.question) == 1 and reply.question[0] == query.question[0], "question not echoed")
    need(bool(reply.flags & dns.flags.RD) == bool(query.flags & dns.flags.RD), "rd/nord")
    if probe.expect == "badvers":
        need(reply.rcode() == dns.rcode.BADVERS, f"rcode {dns.rcode.to_text(reply.rcode())}")
        need(not reply.answer, "soa (answer to BADVERS)")
        return found
    if probe.expect == "small" and reply.flags & dns.flags.TC:
        return found  # truncated to the buffer: genreport's `+ignoretc` accepts it
    need(reply.rcode() == dns.rcode.NOERROR, f"rcode {dns.rcode.to_text(reply.rcode())}")
    soa = [r for r in reply.answer if r.rdtype == dns.rdatatype.SOA and r.name.to_text() == zone + "."]
    if probe.expect == "soa":
        need(bool(soa), "nosoa")
    elif probe.expect == "nodata":
        need(not reply.answer, "answer to an empty type")
    if local:
        need(bool(reply.flags & dns.flags.AA), "noaa")
    else:
        need(not reply.flags & dns.flags.AA, "aa (recursive mode)")
    return found


def run_probes(client: Client, zone: str, local: bool, probes: list[Probe]) -> dict[str, list[str]]:
    failures: dict[str, list[str]] = {}
    for probe in probes:
        query = build(probe, zone, recursive=not local)
        try:
            answer = client.exchange_tcp(query, 5) if probe.tcp else client.exchange_udp(query, 5)
        except (TimeoutError, OSError) as exc:
            failures[probe.name] = [f"timeout or reset: {exc}"]
            continue
        found = problems(probe, query, answer, zone, local)
        if found:
            failures[probe.name] = found
    return failures


@pytest.mark.parametrize(
    ("mode", "group"),
    [("local", "edns+full+comm"), ("forwarded", "edns+full+comm"), ("local", "type"), ("forwarded", "type")],
)
def test_isc_compliance_probes(
    mode: str,
    group: str,
    addresses,
    dnsmasq: Callable,
    start_daemon: Callable,
    make_netns: Callable[[], str],
) -> None:
    upstream = addresses.take()
    dnsmasq(
        upstream,
        [
            f"--auth-server=ns.{FORWARDED_ZONE},{upstream}",
            f"--auth-zone={FORWARDED_ZONE}",
            f"--host-record=www.{FORWARDED_ZONE},192.0.2.77",
        ],
    )
    daemon = start_daemon([upstream], cache_enabled=False)
    daemon.create_network("cmp", domain=LOCAL_ZONE)
    netns = make_netns()
    daemon.join(netns, network="cmp")
    zone = LOCAL_ZONE if mode == "local" else FORWARDED_ZONE
    with Client(netns) as client:
        probes = TYPE_PROBES if group == "type" else PROBES
        failures = run_probes(client, zone, mode == "local", probes)
    report = "\n".join(f"{name}: {', '.join(tags)}" for name, tags in failures.items())
    assert not failures, f"{len(failures)} of {len(probes)} probes failed for {zone}:\n{report}"
