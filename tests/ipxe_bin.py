"""The real iPXE binaries for tests that serve them: ipxe/bin as ``make bindata`` fills it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
#: the binaries the DHCP side hands out
BINARIES = ("undionly.kpxe", "ipxe.efi", "snp.efi")


def ipxe_bin(names: tuple[str, ...] = BINARIES) -> Path:
    """ipxe/bin, running ``make bindata`` (bounded) when incomplete; the test skips, saying why, if that fails."""
    directory = REPO / "ipxe" / "bin"

    def complete() -> bool:
        return all((directory / n).is_file() and (directory / n).stat().st_size > 0 for n in names)

    if not complete():
        argv = ["make", "-C", str(REPO), "bindata"] if shutil.which("make") else [str(REPO / "scripts" / "bindata")]
        try:
            run = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False,
                                 stdin=subprocess.DEVNULL)
            detail = (run.stdout + run.stderr).strip().splitlines()[-3:]
        except (OSError, subprocess.TimeoutExpired) as e:
            detail = [str(e)]
        if not complete():
            pytest.skip(f"no iPXE binaries in {directory} and '{' '.join(argv)}' failed: {' | '.join(detail)}")
    return directory
