"""Where the repository's shipped files are, so tests do not count `parents[...]`."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = REPO / "workflows"
MODELS = REPO / "models"
