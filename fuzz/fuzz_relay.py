"""Coverage-guided fuzzing of what an upstream sends back: `matches`, `verdict`, `relay` and the cache's
`store` on arbitrary bytes that carry the outstanding id and question (so they get past matching).
Nothing may raise but `relay`'s documented None for an unusable reply.

Run (not part of the test suite):  .venv/bin/python fuzz/fuzz_relay.py -max_total_time=300 fuzz/corpus-relay
"""

from __future__ import annotations

import struct
import sys

import atheris

with atheris.instrument_imports():
    import dns.message

    from resolver.core import forward as fw
    from resolver.core.actions import Forward
    from resolver.core.cache import AnswerCache

QUERY = dns.message.make_query("WwW.Example.com", "A").to_wire()
FORWARDS = [
    Forward(QUERY, QUERY[12:], QUERY[12:-4].lower(), 1, (), size, edns, False, ("scope",))
    for size, edns in ((512, False), (1232, True), (65535, False))
]
QUERY_ID = 0x1234
CACHE = AnswerCache(1000, 3600)


def test_one(data: bytes) -> None:
    question = FORWARDS[0].question
    reply = struct.pack("!HH", QUERY_ID, 0x8180) + data[:8].ljust(8, b"\x00") + question + data[8:]
    reply = reply[:4] + b"\x00\x01" + reply[6:]
    if not fw.matches(reply, QUERY_ID, question):
        return
    fw.verdict(reply)
    for forward in FORWARDS:
        relayed = fw.relay(reply, forward)
        if relayed is not None:
            assert relayed[:2] == QUERY[:2] and len(relayed) <= forward.max_size
        CACHE.store(forward, reply, 0.0)
        CACHE.get(forward, 1.0)


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one)
    atheris.Fuzz()
