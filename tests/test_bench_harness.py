"""The benchmark harness's arithmetic and report (benchmarks/): ratios, targets, rendering.

Only pure parts are tested; the benchmarks themselves are run by benchmarks/run, never by CI.
"""

from __future__ import annotations

import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from harness import Row, Section, Series, cpu_seconds  # noqa: E402
from runner import render  # noqa: E402


def test_series_median_and_range() -> None:
    s = Series((3.0, 1.0, 2.0, 10.0, 4.0))
    assert s.median == 3.0
    assert s.fmt(1) == "3.0 (1.0–10.0)"
    assert Series(()).fmt() == "—"


@pytest.mark.parametrize(("ours", "theirs", "higher", "target", "met"), [
    (1200.0, 1000.0, True, ">= 1.0", "yes"),
    (900.0, 1000.0, True, ">= 1.0", "**no**"),
    (50.0, 64.0, False, "<= 1.0", "yes"),
    (80.0, 64.0, False, "<= 1.0", "**no**"),
    (80.0, 64.0, False, "", ""),
])
def test_row_ratio_and_target(ours: float, theirs: float, higher: bool, target: str, met: str) -> None:
    row = Row("x", "tool", "unit", Series((ours,)), "peer", Series((theirs,)), higher, target)
    assert row.ratio == pytest.approx(ours / theirs)
    assert row.met() == met


def test_row_without_peer_numbers_has_no_ratio() -> None:
    row = Row("x", "tool", "unit", Series((1.0,)), "peer", Series(()), True, ">= 1.0")
    assert row.ratio is None and row.met() == ""


def test_render_shows_rows_tables_and_errors() -> None:
    rows = [Row("DORA/s", "perfdhcp", "1/s", Series((10.0, 12.0)), "dnsmasq", Series((8.0,)), True, ">= 1.0",
                note="n")]
    secs = [Section("DHCP", rows=rows, notes=["extra"]),
            Section("Memory", table=[("RSS", "48 (48–48)", "after imports")]),
            Section("Broken", error="Traceback: boom")]
    text = render(secs, datetime(2026, 11, 26, tzinfo=timezone.utc), 60.0, 5, "idle check: 99% idle")
    assert "| DORA/s | perfdhcp | 1/s | 11.0 (10.0–12.0) | dnsmasq | 8.0 (8.0–8.0) | 1.38× | >= 1.0 | yes |" in text
    assert "| RSS | 48 (48–48) | after imports |" in text
    assert "**Not measured in this run:**" in text and "Traceback: boom" in text
    assert "* DORA/s vs dnsmasq: n" in text and "* extra" in text


def test_cpu_seconds_of_this_process() -> None:
    import os

    assert cpu_seconds(os.getpid()) >= 0.0
