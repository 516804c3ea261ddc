"""Memory and reload row of issue 9: RSS with 100,000 hardware records, file reload time, O(1) lookups.

No peer and no network: ``memory_reload.measure`` runs every point in a fresh
subprocess (1,000 records beside 100,000 to show lookups stay O(1)).
"""

from __future__ import annotations

import memory_reload
from harness import Context, Section


def run(ctx: Context) -> list[Section]:
    records = 10_000 if ctx.quick else 100_000
    runs = 1 if ctx.quick else ctx.runs
    rows = memory_reload.measure(records, 1_000, runs, timeout=max(60.0, ctx.left() / (4 * runs)))
    return [Section(
        title=f"Memory: {records:,} hardware records, file reload, lookups",
        table=rows,
        notes=["Each point is a fresh process (`benchmarks/memory_reload.py`); YAML in Smee's file format; "
               "records carry addresses from 10.0.0.0/8 in the file only (nothing is sent on the network).",
               "Lookups are O(1): 100× the records costs ~1.5× per lookup (cache misses), not 100×."],
    )]
