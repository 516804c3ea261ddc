"""The README stays true: its configuration reference and its two commands."""

from __future__ import annotations

import re
from pathlib import Path

from smee.config import reference_markdown

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()


def test_configuration_reference_matches_options() -> None:
    block = re.search(r"<!-- BEGIN settings -->\n(.*?)<!-- END settings -->", README, re.S)
    assert block is not None
    assert block.group(1) == reference_markdown(), "run scripts/update-readme"


def test_readme_states_two_commands_and_ci_runs_the_test_one() -> None:
    quick = README.split("## Quick start", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in quick.splitlines() if line.strip()]
    assert commands == ["scripts/run", "scripts/test"]
    ci = (REPO / ".ci" / "run").read_text()
    assert "exec scripts/test" in ci
    for command in commands:
        assert (REPO / command).stat().st_mode & 0o111, f"{command} must be executable"


def test_examples_named_in_readme_exist() -> None:
    for name in re.findall(r"\(examples/([\w.-]+)\)", README):
        assert (REPO / "examples" / name).is_file(), name
