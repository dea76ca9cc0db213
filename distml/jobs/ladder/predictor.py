"""Scoring a ladder run: the winner's predictor, from its own kind.

A ladder run keeps the winner's model files under ``model/`` exactly as the winning kind writes
them, and ``model/ladder_winner.json`` names the winner's kind and its full spec (the spec of
its refit). The winning kind's predictor reads a run directory (``spec.yaml``, ``manifest.json``,
``model/``); it is handed a private view of this run holding the winner's spec in their place,
so every kind scores a ladder run with its own, unchanged loading code (the same allow-lists).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from distml.errors import DataError, SpecError

WINNER_FILE = "model/ladder_winner.json"


def read_winner(run: Path) -> dict:
    """``model/ladder_winner.json`` checked: a mapping with ``name``, ``kind`` and ``spec``."""
    try:
        winner = json.loads((run / WINNER_FILE).read_text(encoding="utf-8"))
        if not (
            isinstance(winner, dict)
            and isinstance(winner.get("kind"), str)
            and isinstance(winner.get("name"), str)
            and isinstance(winner.get("spec"), dict)
        ):
            raise ValueError("it must be a mapping with name, kind and spec")
    except (OSError, ValueError) as e:
        raise DataError(
            f"run dir {str(run)!r}: {WINNER_FILE} is missing or unreadable ({e})"
        ) from None
    return winner


def winner_predictor(run: Path, manifest: dict, allow_module: tuple = ()) -> Any:
    """The winning kind's predictor of a finished ladder run (None: that kind cannot predict)."""
    from distml.jobs import KINDS, kind_module
    from distml.jobs.ladder.spec import NOT_CANDIDATES
    from distml.spec import load_spec
    from distml.spec.yamlio import dump_yaml

    winner = read_winner(run)
    kind = winner["kind"]
    if kind not in KINDS or kind in NOT_CANDIDATES:
        raise DataError(
            f"run dir {str(run)!r}: {WINNER_FILE} names kind {kind!r}, which is not "
            "a kind a ladder candidate can have"
        )
    try:
        spec = load_spec(winner["spec"])
    except SpecError as e:
        raise DataError(
            f"run dir {str(run)!r}: the winner's spec in {WINNER_FILE} no longer "
            f"loads ({e.message})"
        ) from None
    if spec.kind != kind:
        raise DataError(
            f"run dir {str(run)!r}: {WINNER_FILE} names kind {kind!r} but its spec "
            f"is of kind {spec.kind!r}"
        )
    loader = kind_module(kind).Job.load_predictor
    view_manifest = {**manifest, "kind": kind, "best_config": {}, "ladder_winner": winner["name"]}
    with tempfile.TemporaryDirectory(prefix="distml-ladder-") as tmp:
        view = Path(tmp)
        shutil.copytree(
            run / "model", view / "model", ignore=shutil.ignore_patterns(Path(WINNER_FILE).name)
        )
        (view / "spec.yaml").write_text(
            dump_yaml(spec.to_dict(), sort_keys=False), encoding="utf-8"
        )
        (view / "manifest.json").write_text(json.dumps(view_manifest), encoding="utf-8")
        return loader(view, view_manifest, allow_module)
