"""CI's short pass over the fuzz targets (fuzz/targets.py); fuzz/run does the long one.

Two passes per target, both bounded in count and time:

* in-process, without atheris: every seed, then a fixed number of seeded
  random mutations (:func:`targets.mutate`): the same inputs on every run;
* under atheris (coverage-guided libFuzzer) for a few thousand inputs in a
  subprocess, when atheris is installed (``scripts/venv`` installs it with
  the test extra); skipped with the reason otherwise.

A target fails by letting anything but its documented error escape, or by
breaking one of its properties (see each target's docstring).
"""

from __future__ import annotations

import importlib.util
import random
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
FUZZ = ROOT / "fuzz"
#: mutated inputs per target in the in-process pass
MUTATIONS = 400
#: atheris executions per target, and the time bound of each run (seconds)
ATHERIS_RUNS = 3000
ATHERIS_SECONDS = 4


def _targets() -> ModuleType:
    spec = importlib.util.spec_from_file_location("smee_fuzz_targets", FUZZ / "targets.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


targets = _targets()
NAMES = sorted(targets.TARGETS)


def test_every_target_has_seeds() -> None:
    for name in NAMES:
        assert targets.TARGETS[name].seeds(), name


def test_captures_seed_dhcp_and_tftp() -> None:
    """The real captures are among the seeds (the loader found shared/captures)."""
    from pcap import capture_files, dhcp_payloads

    payloads = {d.payload for path in capture_files() for d in dhcp_payloads(path)}
    assert payloads and payloads <= set(targets.TARGETS["dhcp"].seeds())


@pytest.mark.parametrize("name", NAMES)
def test_seeds_and_mutations(name: str) -> None:
    target = targets.TARGETS[name]
    one_input = target.make()
    seeds = target.seeds()
    rng = random.Random(f"smee-fuzz-{name}")
    inputs = list(seeds) + [
        targets.mutate(rng.choice(seeds), rng, seeds, target.max_len) for _ in range(MUTATIONS)
    ]
    deadline = time.monotonic() + 20  # a bound, not an assertion: stop early on a slow machine
    for data in inputs:
        try:
            one_input(data)
        except Exception as e:
            raise AssertionError(f"{name} failed on {data!r}") from e
        if time.monotonic() > deadline:
            break


def test_reader_reads_zeros_past_the_end() -> None:
    r = targets.Reader(b"\x01")
    assert (r.u8(), r.u8(), r.u16(), r.take(3), bool(r)) == (1, 0, 0, b"", False)


@pytest.mark.parametrize("name", NAMES)
def test_atheris_short_pass(name: str, tmp_path: Path) -> None:
    if importlib.util.find_spec("atheris") is None:
        pytest.skip("atheris is not installed (pip install atheris, or scripts/venv with the test extra)")
    harness = str(FUZZ / "harness.py")
    corpus = tmp_path / "corpus"
    subprocess.run([sys.executable, harness, name, "--write-seeds", str(corpus)], check=True, timeout=60,
                   capture_output=True)
    proc = subprocess.run(
        [sys.executable, harness, name, f"-runs={ATHERIS_RUNS}", f"-max_total_time={ATHERIS_SECONDS}",
         "-timeout=10", f"-artifact_prefix={tmp_path}/",
         *([f"-dict={corpus.with_suffix('.dict')}"] if corpus.with_suffix(".dict").exists() else []), str(corpus)],
        check=False, capture_output=True, text=True, timeout=ATHERIS_SECONDS + 60, cwd=ROOT,
    )
    tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
    assert proc.returncode == 0, f"atheris found a failing input for {name}:\n{tail}"
    assert "DONE" in proc.stderr or "Done" in proc.stderr, tail
