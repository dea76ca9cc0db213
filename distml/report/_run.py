"""What the report reads from a run directory (lazily: tables load on first use)."""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Any


class RunView:
    """A run directory as the report sees it: manifest, metrics, spec, tables, texts."""

    def __init__(self, path: str | Path, manifest: dict | None = None):
        self.path = Path(path)
        self.manifest = manifest if manifest is not None else _json(self.path / "manifest.json")
        self._tables: dict[str, Any] = {}

    @cached_property
    def metrics(self) -> dict:
        return _json(self.path / "metrics.json")

    @cached_property
    def spec_text(self) -> str:
        p = self.path / "spec.yaml"
        return p.read_text(encoding="utf-8") if p.is_file() else ""

    @cached_property
    def spec(self) -> dict:
        import yaml

        from distml.spec.yamlio import load_yaml  # refuses aliases (a planted bomb)

        try:
            data = load_yaml(self.spec_text) if self.spec_text else {}
        except yaml.YAMLError:
            data = {}
        return data if isinstance(data, dict) else {}

    @property
    def kind(self) -> str:
        return str(self.manifest.get("kind") or self.spec.get("kind") or "")

    @property
    def task(self) -> str | None:
        """classification / regression for supervised runs (manifest, else the tables)."""
        task = self.manifest.get("task")
        if task:
            return str(task)
        if self.has("confusion_matrix"):
            return "classification"
        return None

    @property
    def group_by(self) -> list[str]:
        g = self.spec.get("group_by") or []
        return [str(c) for c in g] if isinstance(g, list) else []

    def table_names(self) -> list[str]:
        folder = self.path / "tables"
        if not folder.is_dir():
            return []
        return sorted(p.stem for p in folder.glob("*.parquet") if not p.name.startswith("."))

    def has(self, name: str) -> bool:
        return (self.path / "tables" / f"{name}.parquet").is_file()

    def table(self, name: str):
        """``tables/NAME.parquet`` as a DataFrame, or None when the run has no such table."""
        if name not in self._tables:
            import pandas as pd

            p = self.path / "tables" / f"{name}.parquet"
            self._tables[name] = pd.read_parquet(p) if p.is_file() else None
        return self._tables[name]

    def text(self, rel: str) -> str | None:
        p = self.path / rel
        return p.read_text(encoding="utf-8", errors="replace") if p.is_file() else None


def _json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
