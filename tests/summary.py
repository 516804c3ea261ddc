"""Timelines and timings that end-to-end tests want in the CI output.

pytest hides what a passing test prints; tests call :func:`publish` and
tests/conftest.py prints everything published in the terminal summary.
"""

from __future__ import annotations

_PUBLISHED: list[str] = []  # test-run scope: filled by tests, printed once at the end


def publish(title: str, text: str) -> None:
    _PUBLISHED.append(f"--- {title}\n{text.rstrip()}")


def published() -> list[str]:
    return list(_PUBLISHED)
