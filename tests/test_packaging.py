"""smee installs as a twistd plugin: ``pip install .`` then ``twistd smee --help`` from anywhere."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


@pytest.mark.slow
def test_pip_install_into_fresh_venv_gives_twistd_smee(tmp_path: Path) -> None:
    """The wheel carries twisted/plugins/smee_plugin.py and nothing of Twisted's own."""
    src = tmp_path / "src"
    shutil.copytree(
        REPO, src, ignore=shutil.ignore_patterns(".venv", ".git", "__pycache__", "*.egg-info", "build", ".pytest_cache", ".hypothesis", "dropin.cache")
    )
    venv = tmp_path / "venv"
    env = _clean_env()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=env)
    pip = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", str(src)], env=env, capture_output=True, text=True, timeout=600
    )
    assert pip.returncode == 0, pip.stderr[-2000:]
    site = next((venv / "lib").glob("python3*/site-packages"))
    assert (site / "twisted" / "plugins" / "smee_plugin.py").exists()
    assert (site / "smee" / "tap.py").exists()
    # Twisted's own package files must not have been replaced by ours.
    assert "twisted/__init__.py" not in (site / "smee-0.1.0.dist-info" / "RECORD").read_text()

    listing = subprocess.run([str(venv / "bin" / "twistd"), "--help"], cwd="/", env=env, capture_output=True, text=True, timeout=60)
    assert listing.returncode == 0
    assert any(line.split()[:1] == ["smee"] for line in listing.stdout.splitlines()), listing.stdout
    helptext = subprocess.run([str(venv / "bin" / "twistd"), "smee", "--help"], cwd="/", env=env, capture_output=True, text=True, timeout=60)
    assert helptext.returncode == 0, helptext.stderr
    assert "--dhcp-mode=" in helptext.stdout and "--backend-file-path=" in helptext.stdout


def test_development_install_finds_plugin_from_root() -> None:
    """The test command's editable (compat) install also makes ``twistd smee`` work from /."""
    twistd = Path(sys.executable).with_name("twistd")
    result = subprocess.run([str(twistd), "smee", "--help"], cwd="/", env=_clean_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "--dhcp-mode=" in result.stdout


def test_no_twisted_package_files_in_repo() -> None:
    """Shipping twisted/__init__.py or twisted/plugins/__init__.py would shadow Twisted itself."""
    assert not (REPO / "twisted" / "__init__.py").exists()
    assert not (REPO / "twisted" / "plugins" / "__init__.py").exists()
