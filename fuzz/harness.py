"""Run one fuzz target under atheris (libFuzzer), smee's modules instrumented for coverage.

    python fuzz/harness.py TARGET [libFuzzer flags] [CORPUS_DIR...]
    python fuzz/harness.py TARGET --write-seeds DIR      (and DIR.dict, its dictionary)

Only ``smee`` and ``installers`` are instrumented: coverage (libFuzzer's
``cov:``) then counts edges of our code, not of Twisted or the standard
library. A finding is any exception the target lets escape (see
fuzz/targets.py); libFuzzer writes the input to ``-artifact_prefix``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def write_seeds(name: str, directory: Path) -> int:
    """The target's seeds as files ``seed-NNNN`` (a libFuzzer corpus directory); returns how many.

    Its dictionary, if it has one, goes beside the directory as ``<dir>.dict``
    (pass it with ``-dict=``).
    """
    import targets

    target = targets.TARGETS[name]
    directory.mkdir(parents=True, exist_ok=True)
    seeds = target.seeds()
    for i, seed in enumerate(seeds):
        (directory / f"seed-{i:04d}").write_bytes(seed)
    if target.tokens:
        directory.with_suffix(".dict").write_text(target.dictionary())
    return len(seeds)


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        raise SystemExit(__doc__)
    name = argv[1]
    if argv[2:3] == ["--write-seeds"]:
        print(write_seeds(name, Path(argv[3])))
        return
    import atheris

    with atheris.instrument_imports(include=["smee", "installers"]):
        import targets

        target = targets.TARGETS[name]
        one_input = target.make()  # imports the modules under test, inside the instrumented block
    atheris.Setup([argv[0], f"-max_len={target.max_len}", *argv[2:]], one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
