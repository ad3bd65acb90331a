"""Coverage-guided fuzzing (atheris, libFuzzer) of one input surface; the properties are in fuzz/targets.py.

Usage, from the repository root (libFuzzer flags and corpus directories follow the target name; new
inputs go to the first directory, so give a scratch one before the seed corpus):

    .venv/bin/python -m fuzz datagram -runs=100000 /tmp/new fuzz/corpus/datagram
    .venv/bin/python -m fuzz tcp -max_total_time=600 /tmp/new fuzz/corpus/tcp

Targets: datagram, tcp, resolvconf, control, respond, relay. A failing input is written to
`crash-<sha1>` (see -artifact_prefix) and the process exits non-zero.
"""

from __future__ import annotations

import sys

import atheris


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1].startswith("-"):
        sys.exit(__doc__)
    name = sys.argv.pop(1)
    import dns.message  # noqa: F401  (dnspython checks replies; it is not the code under test)

    with atheris.instrument_imports(include=["resolver", "fuzz"]):
        from fuzz.targets import TARGETS
    if name not in TARGETS:
        sys.exit(f"unknown target {name!r}; known: {', '.join(TARGETS)}")
    atheris.Setup(sys.argv, TARGETS[name])
    atheris.Fuzz()


if __name__ == "__main__":
    main()
