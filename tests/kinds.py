"""What the kind contract tests (unit and integration) share: the example specs of a kind."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "jobs").glob("*.yaml"))


def examples_of(kind: str) -> list[Path]:
    """The example specs in ``jobs/`` of ``kind`` (plain ones before searches)."""
    found = []
    for path in EXAMPLES:
        raw = yaml.safe_load(path.read_text())
        if raw.get("kind") == kind:
            found.append(((1 if "tune" in raw else 0), path.name, path))
    return [p for _, _, p in sorted(found)]
