"""Batch scoring: ``distml predict RUN_DIR --input PATH --output DIR`` (DESIGN.md §3).

1. The run directory must be finished (``_SUCCESS``); its model is loaded the safe way for its
   kind: xgboost from its native ``model.ubj``, scikit-learn through skops with only
   scikit-learn/numpy types trusted, pca/kmeans from arrays (``allow_pickle=False``) and JSON,
   torch from its state_dict (``torch.load(weights_only=True)``) and ``model/config.json``.
2. The input's columns are checked against the training schema (``model/schema.json`` or the
   model's feature list) from parquet footers / CSV headers alone, before any cluster work:
   missing columns are a :class:`~distml.errors.DataError` naming them (exit 2); extra columns
   are ignored, or refused with ``strict``.
3. Rows are typed and encoded exactly as in training (the kind's own ``predict`` code, the
   categorical levels of the schema, the saved scaler) and scored in parallel with Ray Data
   ``map_batches``; row order is kept.
4. The output is partitioned parquet, ``part-NNNNN.parquet`` with the ``keep`` columns first,
   then ``prediction`` (+ ``proba_<class>`` for classifiers; ``pca0…`` for pca, ``cluster`` for
   kmeans). Files are written to a hidden staging folder and moved in; ``_SUCCESS`` (JSON:
   files, rows, columns, what was scored) comes last. Rerunning the same run dir on the same
   input into the same output is a no-op that reports the stored result.

A kind takes part by its ``Job.load_predictor`` (:mod:`distml.jobs.base`), which returns an
object with ``features`` (input columns), ``numeric`` (those that must be numeric) and
``score(frame) -> DataFrame`` (:mod:`distml.jobs.predictors`); this module names no kind.

>>> p = distml.predict("runs/quickstart/RUN_ID", "data/today/*.parquet", "scores/today",
...                    keep=["customer_id"])                                # doctest: +SKIP
>>> p.rows, p.files[:1]                                                     # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from distml.errors import DataError, JobFailed, SpecError, distml_cause, one_line

# the predictors and the trusted loading live with the kinds; re-exported for callers of predict
from distml.jobs.predictors import (  # noqa: F401
    SKOPS_FUNCTIONS,
    SKOPS_NODES,
    SKOPS_SAVED,
    SKOPS_SCALARS,
    ArrayPredictor,
    SupervisedPredictor,
    check_schema,
    load_skops,
    skops_nodes,
)

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger("distml")

DEFAULT_BATCH_SIZE = 16384
_PART = re.compile(r"part-\d{5}\.parquet")
_STAGING = ".distml-staging-"


# ------------------------------------------------------------------ predictors


def load_predictor(run_dir: str | os.PathLike, allow_module: Iterable[str] = ()) -> Any:
    """The predictor of a finished run (DataError when it is unfinished or cannot predict).

    Loading runs no code of the run directory: model files are read as data against
    allow-lists; a torch run's user module (``pkg.mod:Class``) loads only when it is listed in
    ``allow_module`` by the person scoring.
    """
    run = Path(run_dir).expanduser()
    if not run.is_dir():
        raise DataError(f"run dir {str(run)!r} does not exist")
    if not (run / "_SUCCESS").is_file():
        raise DataError(
            f"run dir {str(run)!r} has no _SUCCESS: the run did not finish (or is "
            "still running); predict needs a finished run"
        )
    from distml.runtime.artifacts import verify_finished

    verify_finished(run)  # private folder, artifacts as recorded at _SUCCESS (digests)
    try:
        manifest = json.loads((run / "manifest.json").read_text())
        kind = manifest["kind"]
        if not isinstance(manifest, dict) or not isinstance(kind, str):
            raise ValueError("kind is not a string")
        if not isinstance(manifest.get("best_config") or {}, dict):
            raise ValueError("best_config is not a mapping")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"run dir {str(run)!r} has no readable manifest.json ({e})") from None
    job = _job_class(kind, run)
    predictor = job.load_predictor(run, manifest, tuple(allow_module))
    if predictor is None:
        raise DataError(
            f"run dir {str(run)!r} holds a {kind} run, which distml predict cannot "
            f"score (kinds that predict: {', '.join(predicting_kinds())})"
        )
    return _dry_run(predictor, run)


def predicting_kinds() -> list[str]:
    """The registered kinds whose Job declares a predictor (the others' runs cannot be scored)."""
    from distml.jobs.base import Job
    from distml.registry import KINDS, job_class

    out = []
    for k in KINDS:
        try:
            if job_class(k).load_predictor.__func__ is not Job.load_predictor.__func__:
                out.append(k)
        except ImportError:  # a kind whose optional extra is missing
            continue
    return out


def _dry_run(predictor: Any, run: Path) -> Any:
    """Score one row of zeros, so that model files that do not fit together (shapes, levels,
    classes) are refused here, before any cluster work, and not in the middle of scoring."""
    import pandas as pd

    cats = set(getattr(predictor, "categories", {}) or {})
    row = pd.DataFrame({c: [None if c in cats else 0.0] for c in predictor.features})
    try:
        out = predictor.score(row)
        if len(out) != 1:
            raise ValueError(f"{len(out)} output rows for 1 input row")
    except DataError:
        raise
    except Exception as e:  # whatever a damaged model raises: numpy, torch, sklearn alike
        raise DataError(
            f"run dir {str(run)!r}: its model files do not fit together (scoring "
            f"one row failed: {one_line(e)})"
        ) from None
    return predictor


def _job_class(kind: str, run: Path):
    from distml.registry import KINDS, job_class

    if kind not in KINDS:
        raise DataError(
            f"run dir {str(run)!r} was written by kind {kind!r}, which this distml "
            f"does not have (kinds: {', '.join(sorted(KINDS))})"
        )
    try:
        return job_class(kind)
    except ImportError as e:
        raise DataError(
            f"kind {kind!r} of run dir {str(run)!r} is not available in this installation ({e})"
        ) from None


# ------------------------------------------------------------------ the input


def check_input(
    predictor: Any, columns: dict[str, str], source: str, keep: list[str], strict: bool = False
) -> None:
    """Compare the input's columns (name → dtype) with what the model needs (DataError if not)."""
    from distml.runtime.data import is_categorical_dtype, is_numeric_dtype

    missing = [c for c in predictor.features if c not in columns]
    if missing:
        raise DataError(
            f"--input: {len(missing)} column{'s' if len(missing) != 1 else ''} of "
            f"the model's training schema {'are' if len(missing) != 1 else 'is'} "
            f"missing from {source!r}: {missing[:20]}"
        )
    absent = [c for c in keep if c not in columns]
    if absent:
        raise DataError(
            f"--keep: column{'s' if len(absent) != 1 else ''} {absent} "
            f"{'are' if len(absent) != 1 else 'is'} not in {source!r}"
        )
    for c in predictor.numeric:
        dt = columns[c]
        if not is_numeric_dtype(dt) or (is_categorical_dtype(dt) and dt.lower() != "bool"):
            raise DataError(
                f"--input: column {c!r} is numeric in the training data but has "
                f"dtype {dt} in {source!r}"
            )
    if strict:
        known = set(predictor.features) | set(keep)
        if predictor.target:
            known.add(predictor.target)
        extra = [c for c in columns if c not in known]
        if extra:
            raise DataError(
                f"--input: {len(extra)} column{'s' if len(extra) != 1 else ''} of "
                f"{source!r} {'are' if len(extra) != 1 else 'is'} not in the "
                f"model's training schema (strict): {extra[:20]}"
            )


# ------------------------------------------------------------------ the result


@dataclass
class Prediction:
    """What ``distml predict`` wrote: the output folder, its files, rows and columns."""

    status: str
    output: str
    run_dir: str
    kind: str
    input: str
    files: list[str] = field(default_factory=list)
    rows: int = 0
    columns: list[str] = field(default_factory=list)
    reused: bool = False
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "output": self.output,
            "run_dir": self.run_dir,
            "kind": self.kind,
            "input": self.input,
            "rows": self.rows,
            "columns": self.columns,
            "files": self.files,
            "reused": self.reused,
            "timings": self.timings,
        }

    def summary(self) -> str:
        return "\n".join(
            [
                f"predict [{self.kind}] {self.status}"
                + (" (stored result)" if self.reused else ""),
                f"output: {self.output} ({len(self.files)} file{'s' if len(self.files) != 1 else ''}, "
                f"{self.rows} rows)",
                f"columns: {', '.join(self.columns)}",
            ]
        )

    def __repr__(self) -> str:
        return f"Prediction(output={self.output!r}, rows={self.rows}, kind={self.kind!r})"


# ------------------------------------------------------------------ predict


def predict(
    run_dir: str | os.PathLike,
    input: str,
    output: str | os.PathLike,
    *,
    keep: Iterable[str] = (),
    strict: bool = False,
    batch_size: int | None = None,
    address: str | None = None,
    overwrite: bool = False,
    allow_module: Iterable[str] = (),
) -> Prediction:
    """Score ``input`` (path, glob, directory, URL, builtin:/synthetic:) with the model of the
    finished run ``run_dir`` and write partitioned parquet to ``output`` (``_SUCCESS`` last).

    Raises DataError (exit 2) for an unfinished run, a model that cannot predict, an input that
    does not match the training schema or an output folder that holds something else;
    JobFailed (exit 4) when scoring itself fails. ``allow_module`` lists the user modules
    (``pkg.mod:Class``) a torch run may load; a run directory's own code runs only when named.
    """
    from distml.runtime.cluster import cluster
    from distml.runtime.data import inspect_source
    from distml.runtime.ray_logs import quiet_ray_logs

    t0 = time.perf_counter()
    keep = list(dict.fromkeys(keep))
    if batch_size is not None and batch_size < 1:
        raise SpecError(f"--batch-size must be >= 1; got {batch_size}")
    predictor = load_predictor(run_dir, allow_module)
    info = inspect_source(str(input), "--input")
    check_input(predictor, info.columns, str(input), keep, strict)
    clash = [
        c
        for c in keep
        if c == "prediction"
        or c.startswith("proba_")
        or c in getattr(predictor, "output_columns", ())
    ]
    if clash:
        raise DataError(f"--keep: {clash} would clash with the output columns; rename them first")
    run = Path(run_dir).expanduser().resolve()
    fingerprint = {
        "run_dir": str(run),
        "run_id": _run_id(run),
        "input": info.fingerprint(),
        "keep": keep,
    }
    out = _Output(str(output))
    stored = out.prepare(fingerprint, overwrite)
    base = Prediction("succeeded", out.url, str(run), predictor.kind, str(input))
    if stored is not None:
        log.info("%s already holds these predictions; reporting the stored result", out.url)
        base.files, base.rows = stored.get("files", []), int(stored.get("rows", 0))
        base.columns, base.reused = stored.get("columns", []), True
        return base
    timings = {"check_s": time.perf_counter() - t0}
    needed = list(dict.fromkeys(keep + predictor.features))
    with cluster(address) as cl, quiet_ray_logs():  # stderr: distml's lines only
        t1 = time.perf_counter()
        timings["cluster_start_s"] = cl.start_s
        staging = out.staging()
        _score(predictor, info, needed, keep, staging, batch_size or DEFAULT_BATCH_SIZE)
        timings["score_s"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    files, rows, columns = out.commit(staging, fingerprint)
    timings["commit_s"] = time.perf_counter() - t2
    timings["total_s"] = time.perf_counter() - t0
    base.files, base.rows, base.columns = files, rows, columns
    base.timings = {k: round(v, 4) for k, v in timings.items()}
    log.info("scored %d rows into %d file(s) in %s", rows, len(files), out.url)
    return base


def _run_id(run: Path) -> str | None:
    try:
        return json.loads((run / "manifest.json").read_text()).get("run_id")
    except (OSError, ValueError):
        return None


#: per worker process: predictors already fetched from the object store, by object ref
_LOADED: dict[str, Any] = {}


def _score_batch(batch: "pd.DataFrame", model: list, keep: list[str]) -> "pd.DataFrame":
    """Ray Data ``map_batches`` function (runs on the workers)."""
    import pandas as pd
    import ray

    key = model[0].hex()
    predictor = _LOADED.get(key)
    if predictor is None:
        if len(_LOADED) >= 4:
            _LOADED.clear()
        predictor = _LOADED[key] = ray.get(model[0])
    scored = predictor.score(batch.reset_index(drop=True))
    if not keep:
        return scored
    return pd.concat([batch[keep].reset_index(drop=True), scored], axis=1)


def _score(
    predictor, info, needed: list[str], keep: list[str], staging: str, batch_size: int
) -> None:
    import ray
    import ray.data

    from distml.runtime.data import read_frame

    ctx = ray.data.DataContext.get_current()
    saved = (ctx.execution_options.preserve_order, ctx.enable_progress_bars)
    ctx.execution_options.preserve_order = True  # output rows in input order
    ctx.enable_progress_bars = False
    try:
        if info.kind != "files":
            ds = ray.data.from_pandas(read_frame(info.source, needed, "--input"))
        elif info.format == "csv":
            ds = ray.data.read_csv(info.files).select_columns(needed)
        else:
            ds = ray.data.read_parquet(info.files).select_columns(needed)
        ref = ray.put(predictor)
        ds = ds.map_batches(
            _score_batch,
            fn_kwargs={"model": [ref], "keep": keep},
            batch_format="pandas",
            batch_size=batch_size,
        )
        ds.write_datasink(_part_sink(staging))
    except Exception as e:
        cause = distml_cause(e)
        if cause is not None:
            raise type(cause)(cause.message, details=cause.details) from None
        raise JobFailed(f"scoring failed: {one_line(e)}") from e
    finally:
        ctx.execution_options.preserve_order, ctx.enable_progress_bars = saved


def _part_sink(staging: str):
    """A Ray Data sink writing each write task's blocks, in order, to ``staging/NNNNNN.parquet``
    (NNNNNN = the task index). Ray's own parquet sink writes with threads and may reorder rows
    within a file; with ``preserve_order`` the task indices follow the input, so the file names
    sort into input order."""
    from ray.data import Datasink

    class PartSink(Datasink):
        def __init__(self, root: str):
            self.root = root

        def get_name(self) -> str:
            return "DistmlParquet"

        def write(self, blocks, ctx) -> dict | None:
            import fsspec
            import pyarrow.parquet as pq
            from ray.data.block import BlockAccessor

            tables = [BlockAccessor.for_block(b).to_arrow() for b in blocks]
            tables = [t for t in tables if t.num_rows]
            if not tables:
                return None
            fs, root = fsspec.core.url_to_fs(self.root)
            fs.makedirs(root, exist_ok=True)
            path = f"{root.rstrip('/')}/{ctx.task_idx:06d}.parquet"
            with fs.open(path, "wb") as fh, pq.ParquetWriter(fh, tables[0].schema) as writer:
                for t in tables:
                    writer.write_table(t.cast(tables[0].schema))
            return {"file": path, "rows": sum(t.num_rows for t in tables)}

    return PartSink(staging)


# ------------------------------------------------------------------ the output folder


class _Output:
    """The output folder (local or fsspec URL): staging, moving in, ``_SUCCESS`` last."""

    def __init__(self, output: str):
        import fsspec

        try:
            self.fs, self.root = fsspec.core.url_to_fs(output)
        except (ImportError, ValueError) as e:
            raise DataError(f"--output {output!r}: no filesystem for this URL ({e})") from None
        self.local = "file" in _protocols(self.fs)
        if self.local:
            self.root = os.path.abspath(self.root)
        self.url = self.root if self.local else self.fs.unstrip_protocol(self.root)

    def _path(self, name: str) -> str:
        return f"{self.root.rstrip('/')}/{name}"

    def prepare(self, fingerprint: dict, overwrite: bool) -> dict | None:
        """Return the stored ``_SUCCESS`` when it holds these very predictions; otherwise make
        the folder ready (removing only what an earlier distml predict left there)."""
        if self.fs.exists(self.root) and not self.fs.isdir(self.root):
            raise DataError(f"--output {self.url!r} is a file, not a folder")
        names = (
            [p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(self.root, detail=False)]
            if self.fs.exists(self.root)
            else []
        )
        if "_SUCCESS" in names:
            try:
                stored = json.loads(self.fs.cat_file(self._path("_SUCCESS")))
            except (OSError, ValueError):
                stored = {}
            if stored.get("fingerprint") == fingerprint and not overwrite:
                return stored
            if not overwrite:
                raise DataError(
                    f"--output {self.url!r} already holds finished predictions of "
                    "another model or input; choose a new folder or pass --overwrite"
                )
        foreign = [
            n
            for n in names
            if n != "_SUCCESS" and not _PART.fullmatch(n) and not n.startswith(_STAGING)
        ]
        if foreign:
            raise DataError(
                f"--output {self.url!r} holds files distml predict did not write "
                f"({foreign[:5]}); choose an empty or new folder"
            )
        if "_SUCCESS" in names:  # first, so a half-cleared folder never looks finished
            self.fs.rm(self._path("_SUCCESS"))
        for n in names:
            if n != "_SUCCESS":
                self.fs.rm(self._path(n), recursive=True)
        self.fs.makedirs(self.root, exist_ok=True)
        return None

    def staging(self) -> str:
        path = self._path(f"{_STAGING}{secrets.token_hex(4)}")
        return path if self.local else self.fs.unstrip_protocol(path)

    def commit(self, staging: str, fingerprint: dict) -> tuple[list[str], int, list[str]]:
        """Move the staged files in as part-NNNNN.parquet, then write ``_SUCCESS``."""
        import pyarrow.parquet as pq

        stage = staging if self.local else self.fs._strip_protocol(staging)
        found = self.fs.find(stage) if self.fs.exists(stage) else []
        staged = sorted(p for p in found if p.endswith(".parquet"))
        files, rows, columns = [], 0, []
        for i, src in enumerate(staged):
            name = f"part-{i:05d}.parquet"
            with self.fs.open(src, "rb") as fh:
                meta = pq.ParquetFile(fh)
                rows += meta.metadata.num_rows
                if not columns:
                    columns = list(meta.schema_arrow.names)
            if self.local:
                os.replace(src, self._path(name))
            else:
                self.fs.mv(src, self._path(name))
            files.append(name)
        if self.fs.exists(stage):
            self.fs.rm(stage, recursive=True)
        marker = {
            "fingerprint": fingerprint,
            "files": files,
            "rows": rows,
            "columns": columns,
            "finished_at": time.time(),
        }
        self._write_success(json.dumps(marker, indent=2, default=str).encode())
        return files, rows, columns

    def _write_success(self, data: bytes) -> None:
        final = self._path("_SUCCESS")
        if not self.local:  # an object store PUT is atomic
            self.fs.pipe_file(final, data)
            return
        from distml.runtime.artifacts import atomic_file

        with atomic_file(final) as tmp:
            tmp.write_bytes(data)


def _protocols(fs) -> tuple[str, ...]:
    p = fs.protocol
    return (p,) if isinstance(p, str) else tuple(p)


__all__ = [
    "predict",
    "Prediction",
    "load_predictor",
    "load_skops",
    "check_input",
    "SupervisedPredictor",
    "ArrayPredictor",
]
