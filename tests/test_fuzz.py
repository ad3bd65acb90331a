"""Coverage-guided fuzzing in the test suite: each atheris target of fuzz/ runs for a bounded number of
executions in its own process (atheris needs one), starting from its seed corpus in fuzz/corpus/<target>/;
a crash or a broken property fails the test with the fuzzer's report and the failing input.

The targets run concurrently (one process each) so the run takes the time of the longest one. A longer
run of one target is `.venv/bin/python -m fuzz TARGET -max_total_time=3600 /tmp/new fuzz/corpus/TARGET`
(fuzz/README.md).
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SEED = 7
# executions per target: at least 100,000 for the datagram handler (the bar)
RUNS = {
    "datagram": 100_000,
    "tcp": 4_000,
    "resolvconf": 10_000,
    "control": 30_000,
    "respond": 20_000,
    "relay": 20_000,
}
TIME_LIMIT = 900


def _fuzz_command(target: str, runs: int, scratch: Path) -> list[str]:
    new = scratch / "new"
    new.mkdir(parents=True)
    return [
        sys.executable,
        "-m",
        "fuzz",
        target,
        f"-runs={runs}",
        f"-seed={SEED}",
        "-max_len=2048",
        "-timeout=20",
        "-rss_limit_mb=2048",
        f"-artifact_prefix={scratch}/",
        str(new),
        str(REPO / "fuzz" / "corpus" / target),
    ]


@pytest.fixture(scope="module")
def fuzzers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tuple[subprocess.Popen, Path]]]:
    pytest.importorskip("atheris", reason="the fuzz tests need atheris (the `test` extra installs it)")
    started: dict[str, tuple[subprocess.Popen, Path]] = {}
    try:
        for target, runs in RUNS.items():
            scratch = tmp_path_factory.mktemp(f"fuzz-{target}")
            log = open(scratch / "fuzz.log", "wb")  # noqa: SIM115 (closed with the process below)
            proc = subprocess.Popen(
                _fuzz_command(target, runs, scratch),
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            log.close()
            started[target] = (proc, scratch)
        yield started
    finally:
        for proc, _ in started.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.mark.parametrize("target", list(RUNS))
def test_fuzz_target_finds_nothing(target: str, fuzzers: dict[str, tuple[subprocess.Popen, Path]]) -> None:
    proc, scratch = fuzzers[target]
    try:
        status = proc.wait(TIME_LIMIT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"fuzzing {target} did not finish {RUNS[target]} runs in {TIME_LIMIT} s")
    output = (scratch / "fuzz.log").read_text(errors="replace")
    crashes = [path for kind in ("crash", "timeout", "oom") for path in sorted(scratch.glob(f"{kind}-*"))]
    report = "\n".join(f"{c.name}: {c.read_bytes()[:300]!r}" for c in crashes)
    assert status == 0 and not crashes, f"fuzzing {target} failed ({status}):\n{report}\n{output[-6000:]}"
    done = re.search(r"Done (\d+) runs", output)
    assert done and int(done.group(1)) >= RUNS[target], f"fuzzer stopped early:\n{output[-3000:]}"
