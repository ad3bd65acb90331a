"""What every server is asked: the endpoints (names and addresses) and the dnsperf query files.

Every server gets the same files. The network domain is `dns.podman` (aardvark-dns answers names under it
and never forwards them, so its NXDOMAINs are local too). Endpoints live in 10.89.0.0/16 and fd89::/64:
the gateway is 10.89.0.1, the querying sandbox 10.89.0.2, endpoint i gets 10.89.(k//250).(k%250+1) with
k = i + 10. Files are made with a fixed seed, so two runs ask the same questions in the same order.
"""

from __future__ import annotations

import ipaddress
import random
from dataclasses import dataclass
from pathlib import Path

DOMAIN = "dns.podman"
GATEWAY = "10.89.0.1"
CLIENT = "10.89.0.2"
PREFIX_LEN = 16
UPSTREAM = "127.0.0.61"
HIT_ZONE = "up.test"
MISS_ZONE = "miss.test"
MISS_ADDRESS = "192.0.2.1"
LOCAL_LINES = 20000


@dataclass(frozen=True)
class Endpoint:
    index: int
    name: str
    ipv4: str
    ipv6: str

    @property
    def ptr(self) -> str:
        return ipaddress.ip_address(self.ipv4).reverse_pointer


def endpoints(count: int) -> list[Endpoint]:
    out = []
    for i in range(count):
        k = i + 10
        out.append(Endpoint(i, f"host{i}", f"10.89.{k // 250}.{k % 250 + 1}", f"fd89::{k:x}"))
    return out


def local_queries(path: Path, eps: list[Endpoint], lines: int = LOCAL_LINES) -> Path:
    """The local-names mix: 45% A, 25% AAAA, 20% PTR of existing endpoints, 10% A of names under the
    domain that do not exist."""
    rng = random.Random(7)
    missing = [f"missing{i}.{DOMAIN}" for i in range(max(len(eps) // 10, 1))]
    out = []
    for _ in range(lines):
        roll = rng.random()
        ep = rng.choice(eps)
        if roll < 0.45:
            out.append(f"{ep.name}.{DOMAIN} A")
        elif roll < 0.70:
            out.append(f"{ep.name}.{DOMAIN} AAAA")
        elif roll < 0.90:
            out.append(f"{ep.ptr} PTR")
        else:
            out.append(f"{rng.choice(missing)} A")
    path.write_text("\n".join(out) + "\n")
    return path


def hit_queries(path: Path, eps: list[Endpoint], lines: int = LOCAL_LINES) -> Path:
    """Forwarded names that the upstream knows (A/AAAA of the endpoints under `HIT_ZONE`): after the first
    pass every query is a cache hit for a caching server."""
    rng = random.Random(11)
    out = [f"{rng.choice(eps).name}.{HIT_ZONE} {rng.choice(('A', 'AAAA'))}" for _ in range(lines)]
    path.write_text("\n".join(out) + "\n")
    return path


def miss_queries(path: Path, lines: int, run: int) -> Path:
    """`lines` distinct names under `MISS_ZONE` (answered by the upstream's wildcard), different for every
    run, so no query can be a cache hit as long as dnsperf does not wrap around the file."""
    tag = f"r{run}{random.Random(run).randrange(16**6):06x}"
    with open(path, "w") as out:
        for start in range(0, lines, 10000):
            out.write("".join(f"q{n}.{tag}.{MISS_ZONE} A\n" for n in range(start, min(start + 10000, lines))))
    return path


def hosts_file(path: Path, eps: list[Endpoint], zone: str) -> Path:
    """A hosts file (dnsmasq --addn-hosts) with every endpoint's A and AAAA under `zone`."""
    path.write_text("".join(f"{e.ipv4} {e.name}.{zone}\n{e.ipv6} {e.name}.{zone}\n" for e in eps))
    return path


def aardvark_config(directory: Path, network: str, eps: list[Endpoint]) -> Path:
    """aardvark-dns 1.4's config directory: one file per network, gateway first, then one line per
    container (`id ipv4 ipv6 names`); the querying sandbox is a container too (PTR needs a known source)."""
    directory.mkdir(parents=True, exist_ok=True)
    lines = [GATEWAY, f"{'c' * 64} {CLIENT}  client"]
    lines += [f"{e.index:064x} {e.ipv4} {e.ipv6} {e.name}" for e in eps]
    (directory / network).write_text("\n".join(lines) + "\n")
    return directory
