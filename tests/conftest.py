"""Shared test setup: tests/ is importable (pcap.py, fakes.py, netns.py) whatever pytest's import mode."""

import sys
from pathlib import Path

_TESTS = str(Path(__file__).resolve().parent)
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # type: ignore[no-untyped-def]
    """Print the boot timelines and transfer timings the end-to-end tests published."""
    from summary import published

    entries = published()
    if entries:
        terminalreporter.section("end-to-end timelines and timings")
        for entry in entries:
            terminalreporter.write_line(entry)
