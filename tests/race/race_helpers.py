"""Helpers shared by the race's tests (a module name no other test folder uses)."""
from __future__ import annotations

from pathlib import Path


class _Session:
    """The session's embedded Ray, started by conftest's ray_local fixture."""
    executor = None
    home = None


def write_spec(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p
