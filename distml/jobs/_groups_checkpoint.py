"""Checkpoints of a many-models run (:mod:`distml.jobs.statsmodels.many`): the results of the fit
tasks already collected, so ``--resume`` fits only the groups that are missing.

A checkpoint is a list of parts under ``checkpoints/groups/`` (:mod:`distml.jobs._resume`),
one part per save, each holding the tasks collected since the last save:

- ``coef-*.parquet``, ``forecast-*.parquet``, ``holdout-*.parquet``: the columnar arrays
  (coefficient rows, forecasts, held-out ``y``/prediction pairs) with the task they came from;
- ``tasks-*.json``: per task its group ids, ``model_stats`` rows, timings and counts — JSON
  (with NaN), which keeps each value's type exactly (a parquet part would re-type a column per
  part), so the final tables equal an uninterrupted run's.

The batches are the same on resume (the groups per task of the first attempt are reused), so a
task is either wholly in the checkpoint or fitted again.
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np

FOLDER = "groups"
#: result fields stored as parquet arrays (or not at all: the summary of a single model)
_SPECIAL = ("gids", "coef", "forecast", "holdout", "summary")


def _py(v: Any) -> Any:
    """numpy scalars and arrays as JSON values (an array's type is not kept: store it in
    a parquet part instead)."""
    return v.tolist() if hasattr(v, "tolist") else str(v)


def _table_bytes(columns: dict[str, np.ndarray]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.table({k: pa.array(v) for k, v in columns.items()}), buf)
    return buf.getvalue()


def _table(data: bytes) -> dict[str, np.ndarray]:
    import pyarrow.parquet as pq

    t = pq.read_table(io.BytesIO(data))
    return {c: t.column(c).to_numpy(zero_copy_only=False) for c in t.column_names}


def part_files(results: list[dict], part: int) -> dict[str, bytes]:
    """The files of part number ``part``: the ``results`` of finished fit tasks."""
    tasks, arrays = [], {"coef": [], "forecast": [], "holdout": []}
    for i, r in enumerate(results):
        # every other field (timings, counts like n_fast) is a JSON value and kept as it is
        tasks.append(
            {
                **{k: v for k, v in r.items() if k not in _SPECIAL},
                "gids": [int(g) for g in r["gids"]],
                "holdout": [s for s, _, _ in r["holdout"]],
            }
        )
        for name in ("coef", "forecast"):
            if r[name] is not None:
                arrays[name].append({**r[name], "_task": np.full(len(r[name]["gid"]), i)})
        for h, (_, y, p) in enumerate(r["holdout"]):
            arrays["holdout"].append(
                {
                    "y": np.asarray(y),
                    "pred": np.asarray(p),
                    "_task": np.full(len(y), i),
                    "_h": np.full(len(y), h),
                }
            )
    files = {f"tasks-{part}.json": json.dumps(tasks, default=_py).encode()}
    for name, chunks in arrays.items():
        if chunks:
            files[f"{name}-{part}.parquet"] = _table_bytes(
                {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
            )
    return files


def load_results(files: dict[str, bytes], parts: int) -> list[dict]:
    """The task results of a checkpoint with ``parts`` parts, as the fit tasks returned them."""
    out = []
    for part in range(parts):
        tasks = json.loads(files[f"tasks-{part}.json"])
        arrays = {
            name: _table(files[f"{name}-{part}.parquet"])
            for name in ("coef", "forecast", "holdout")
            if f"{name}-{part}.parquet" in files
        }
        for i, t in enumerate(tasks):
            r = {**t, "gids": np.asarray(t["gids"], dtype=np.int64), "summary": None, "holdout": []}
            for name in ("coef", "forecast"):
                a = arrays.get(name)
                mine = a["_task"] == i if a is not None else None
                r[name] = (
                    {k: v[mine] for k, v in a.items() if k != "_task"}
                    if mine is not None and mine.any()
                    else None
                )
            h = arrays.get("holdout")
            for j, split in enumerate(t["holdout"]):
                mine = (h["_task"] == i) & (h["_h"] == j)
                r["holdout"].append((split, h["y"][mine], h["pred"][mine]))
            out.append(r)
    return out


class GroupCheckpoints:
    """The driver's side: restore what a checkpoint holds, save collected tasks at the cadence."""

    def __init__(self, ckpt, n_groups: int):
        self.ckpt = ckpt  # distml.jobs._resume.Checkpoints
        self.n_groups = n_groups
        self.parts = 0
        self.names: dict[str, str] = {}
        self.unsaved: list[dict] = []
        self.gpt: int | None = None

    def restore(self) -> list[dict]:
        """Task results saved by an earlier attempt (and its groups per task), or []."""
        found = self.ckpt.load()
        if found is None:
            return []
        state, files = found
        self.parts, self.gpt = int(state["parts"]), int(state["groups_per_task"])
        self.names = self.ckpt.names()
        results = load_results(files, self.parts)
        done = sum(len(r["gids"]) for r in results)
        self.ckpt.resumed_from = {"groups": done, "of": self.n_groups}
        return results

    def collected(self, results: list[dict], gpt: int, force: bool = False) -> None:
        self.unsaved.extend(results)
        if self.unsaved and self.ckpt.due(final=force):
            files = part_files(self.unsaved, self.parts)
            self.names = self.ckpt.save(
                {"parts": self.parts + 1, "groups_per_task": gpt}, files, keep=self.names
            )
            self.parts += 1
            self.unsaved = []
