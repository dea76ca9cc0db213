"""Frames handed to ``distml.run`` from Python (``data=``, ``test_data=``), staged as parquet.

A pandas DataFrame, a Dask DataFrame, a ``ray.data.Dataset`` or a Spark DataFrame is written,
partition by partition, into a run-scoped staging folder (``RUN_DIR/staging/data/``,
``RUN_DIR/staging/test_data/``) as ``part-NNNNN.parquet`` files in the frame's order; the run's
``data.source`` (``data.test_source``) then names that folder, so every kind reads a frame
through the one planner and reader (:mod:`distml.runtime.plan`, :mod:`distml.runtime.read`)
exactly as it reads files. Who writes the partitions:

- pandas: the driver (the frame is already in its memory), one file;
- Dask: the Dask graph, executed as Ray tasks on the cluster (``ray.util.dask.ray_dask_get``),
  one file per Dask partition;
- Ray Data: ``Dataset.write_parquet``, Ray tasks on the cluster, in block order;
- Spark: Spark's own executors (``DataFrame.write.parquet``), one file per non-empty partition:
  nothing passes through the Spark driver and no package beyond pyspark is needed.

No row of a Dask, Ray or Spark frame is collected on the driver. Named index levels of a pandas
or Dask frame become columns (as ``reset_index()`` makes them); an unnamed index is dropped.
:func:`describe` checks the type and reads the schema without touching the data;
:func:`stage` writes; the staging folder is removed when the run ends (see ``distml.api``).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distml.errors import DataError, one_line
from distml.runtime.threads import imported

#: the keywords of ``distml.run`` that take a frame, and the spec field each one replaces
FIELDS = {"data": "data.source", "test_data": "data.test_source"}
#: the staging folder inside the run directory (one sub-folder per keyword)
STAGING = "staging"
#: rows per parquet row group of a staged pandas frame (the planner's unit of work)
ROW_GROUP_ROWS = 131_072

_KINDS = "a pandas DataFrame, a Dask DataFrame, a ray.data.Dataset or a Spark DataFrame"
_WORDS = {
    "pandas": "pandas DataFrame",
    "dask": "Dask DataFrame",
    "ray": "ray.data.Dataset",
    "spark": "Spark DataFrame",
}


@dataclass
class Frame:
    """A frame passed for ``keyword``: its family (pandas | dask | ray | spark), class, schema
    (column -> dtype as the library writes it; None when Ray Data does not know it without
    running the dataset), partitions and rows where known without a pass over the data."""

    keyword: str
    obj: Any
    family: str
    cls: str
    columns: dict[str, str] | None
    partitions: int | None
    rows: int | None = None

    @property
    def field(self) -> str:
        """The spec field the frame stands for (``data.source``, ``data.test_source``)."""
        return FIELDS[self.keyword]

    @property
    def needs_ray(self) -> bool:
        """Whether staging runs Ray tasks (so the run's cluster is up first)."""
        return self.family in ("dask", "ray")

    def label(self) -> str:
        """How messages name it: ``data= (a Dask DataFrame)``."""
        word = _WORDS[self.family]
        article = "an" if word[0].lower() in "aeiou" else "a"
        return f"{self.keyword}= ({article} {word})"

    def schema_hash(self) -> str | None:
        if self.columns is None:
            return None
        text = json.dumps(list(self.columns.items()), separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def fingerprint(self) -> dict:
        """What was passed, for the manifest (``data.source.frame``)."""
        return {
            "keyword": self.keyword,
            "type": self.family,
            "class": self.cls,
            "partitions": self.partitions,
            "rows": self.rows,
            "columns": len(self.columns) if self.columns is not None else None,
            "schema_hash": self.schema_hash(),
        }

    def check_columns(self, wanted: dict[str, list[str]]) -> None:
        """DataError unless every column named in ``wanted`` (field path -> columns) is in the
        frame: the name-level data checks, before any cluster work (the staged files get the
        full checks of a file source)."""
        if self.columns is None:
            return
        for what, names in wanted.items():
            for c in names:
                if c not in self.columns:
                    close = difflib.get_close_matches(c, list(self.columns), n=1)
                    hint = f"; did you mean {close[0]!r}?" if close else ""
                    shown = list(self.columns)[:30]
                    more = f", … ({len(self.columns)} in all)" if len(self.columns) > 30 else ""
                    raise DataError(
                        f"{what}: column {c!r} is not in {self.label()}{hint} "
                        f"(columns: {', '.join(shown)}{more})"
                    )


def _module(name: str) -> Any:
    """The module once imported in full, or None: a frame of a library can only exist once it is
    imported, so the type checks never import one (:func:`~distml.runtime.threads.imported`)."""
    return imported(name)


def _spark_classes() -> tuple:
    out = []
    for mod, name in (("pyspark.sql", "DataFrame"), ("pyspark.sql.connect.dataframe", "DataFrame")):
        m = _module(mod)
        if m is not None and isinstance(getattr(m, name, None), type):
            out.append(getattr(m, name))
    return tuple(out)


def _family(obj: Any) -> str | None:
    import pandas as pd

    if isinstance(obj, pd.DataFrame):
        return "pandas"
    dd = _module("dask.dataframe")
    if dd is not None and isinstance(obj, dd.DataFrame):
        return "dask"
    rd = _module("ray.data")
    if rd is not None and isinstance(obj, rd.Dataset):
        return "ray"
    spark = _spark_classes()
    if spark and isinstance(obj, spark):
        return "spark"
    return None


def _wrong_type(obj: Any, keyword: str) -> DataError:
    cls = type(obj)
    name = f"{cls.__module__}.{cls.__qualname__}"
    hint = ""
    if isinstance(obj, (str, os.PathLike)):
        hint = f"; a path belongs in the spec's {FIELDS[keyword]}"
    elif isinstance(obj, dict):
        hint = (
            f"; to override the spec's fields use dotted keywords (e.g. "
            f"{FIELDS[keyword].replace('.', '__')}='data/x.parquet')"
        )
    elif name.endswith("Series") or cls.__name__ == "Series":
        hint = "; make it a frame first (series.to_frame())"
    elif name.startswith("pyspark.pandas"):
        hint = "; pass its Spark DataFrame (psdf.to_spark())"
    elif name.startswith("polars"):
        hint = "; pass frame.to_pandas(), or write it as parquet and name the files"
    return DataError(f"{keyword}= must be {_KINDS}; got {name}{hint}")


def describe(obj: Any, keyword: str) -> Frame:
    """The :class:`Frame` for ``obj`` passed as ``keyword``; a DataError naming the keyword for
    anything else, or for column names that are not distinct strings. Reads no row."""
    family = _family(obj)
    if family is None:
        raise _wrong_type(obj, keyword)
    cls = f"{type(obj).__module__}.{type(obj).__qualname__}"
    partitions: int | None = None
    rows: int | None = None
    if family == "pandas":
        columns, partitions, rows = _pandas_columns(obj, keyword), 1, len(obj)
    elif family == "dask":
        columns, partitions = _pandas_columns(obj._meta, keyword), obj.npartitions
    elif family == "ray":
        schema = obj.schema(fetch_if_missing=False)  # never runs the dataset here
        columns = (
            None if schema is None else {n: str(t) for n, t in zip(schema.names, schema.types)}
        )
        if type(obj).__name__ == "MaterializedDataset":  # else blocks are known only once run
            partitions = obj.num_blocks()
    else:
        columns = {str(n): str(t) for n, t in obj.dtypes}
        try:
            partitions = obj.rdd.getNumPartitions()
        except Exception:  # Spark Connect frames have no RDD
            partitions = None
    if columns is not None:
        _check_names(list(columns), keyword)
    return Frame(keyword, obj, family, cls, columns, partitions, rows)


def _pandas_columns(frame: Any, keyword: str) -> dict[str, str]:
    """Columns of a pandas frame (or a Dask frame's meta) as staged: named index levels first."""
    names = [n for n in frame.index.names if n is not None]
    bad = [c for c in list(frame.columns) + names if not isinstance(c, str)]
    if bad:
        raise DataError(
            f"{keyword}= has column names that are not strings ({', '.join(map(repr, bad[:5]))}); "
            "name the columns first (frame.columns = frame.columns.astype(str))"
        )
    _check_names(names + [str(c) for c in frame.columns], keyword)
    index = {}
    if names:
        flat = frame.index.to_frame(index=False) if hasattr(frame.index, "to_frame") else None
        index = {n: str(flat[n].dtype) for n in names} if flat is not None else {}
    return {**index, **{c: str(t) for c, t in frame.dtypes.items()}}


def _check_names(names: list[str], keyword: str) -> None:
    from collections import Counter

    dup = sorted(n for n, k in Counter(names).items() if k > 1)
    if dup:
        raise DataError(
            f"{keyword}= has the column {dup[0]!r} more than once (a named index level "
            "counts as a column); give every column a distinct name"
        )


# ------------------------------------------------------------------ staging


def staging_folder(run_path: str | os.PathLike, keyword: str) -> Path:
    """Where the frame passed as ``keyword`` is staged inside the run directory."""
    return Path(run_path) / STAGING / keyword


def stage(frame: Frame, folder: Path) -> dict:
    """Write ``frame`` as ``part-NNNNN.parquet`` files in ``folder`` (made afresh), in the
    frame's order; returns ``{"files", "rows"}`` of what was staged (rows from the footers)."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        if frame.family == "pandas":
            _stage_pandas(frame.obj, folder)
        elif frame.family == "dask":
            _stage_dask(frame.obj, folder)
        elif frame.family == "ray":
            _stage_ray(frame.obj, folder)
        else:
            _stage_spark(frame.obj, folder)
    except DataError:
        raise
    except Exception as e:
        raise DataError(
            f"{frame.label()} could not be written to the staging folder {str(folder)!r}: "
            f"{type(e).__name__}: {one_line(e, 300)}"
        ) from e
    return _normalise(folder, frame)


def _stage_pandas(df: Any, folder: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir()
    if any(n is not None for n in df.index.names):
        df = df.reset_index()
    table = pa.Table.from_pandas(df, preserve_index=False)
    pq.write_table(table, folder / "part-00000.parquet", row_group_size=ROW_GROUP_ROWS)


def _part_name(i: int) -> str:
    return f"part-{i:05d}.parquet"


def _stage_dask(ddf: Any, folder: Path) -> None:
    import dask
    from ray.util.dask import ray_dask_get

    if any(n is not None for n in ddf._meta.index.names):
        ddf = ddf.reset_index()
    # Every compute inside (the write, a schema inferred from object columns' data) runs as
    # Ray tasks, not on Dask's default scheduler in this process or a dask.distributed Client.
    with dask.config.set(scheduler=ray_dask_get):
        ddf.to_parquet(
            str(folder),
            write_index=False,
            write_metadata_file=False,
            name_function=_part_name,
            compute_kwargs={"scheduler": ray_dask_get},
        )


def _stage_ray(ds: Any, folder: Path) -> None:
    # The write tasks are numbered in the order their blocks arrive; with preserve_order the
    # blocks arrive in the dataset's order, so the files' names sort in data order.
    options = ds.context.execution_options
    before = options.preserve_order
    options.preserve_order = True
    try:
        ds.write_parquet(str(folder))
    finally:
        options.preserve_order = before


def _stage_spark(df: Any, folder: Path) -> None:
    # Spark's executors write the partitions where they run: the output folder must be a
    # mount that they and the Ray workers share (as it must be for any multi-node run).
    df.write.parquet(folder.resolve().as_uri())


def _normalise(folder: Path, frame: Frame) -> dict:
    """Keep only the non-empty parquet files (Spark's ``_SUCCESS`` and ``.crc`` files go),
    renamed ``part-NNNNN.parquet`` in their written order; the rows from their footers."""
    import pyarrow.parquet as pq

    if not folder.is_dir():
        folder.mkdir(parents=True)
    names = sorted(p.name for p in folder.iterdir())
    data = [n for n in names if n.endswith(".parquet") and not n.startswith((".", "_"))]
    for n in names:
        if n not in data:
            p = folder / n
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    counts = [pq.read_metadata(folder / n).num_rows for n in data]
    keep = [(n, c) for n, c in zip(data, counts) if c > 0] or list(zip(data, counts))[:1]
    for n in set(data) - {n for n, _ in keep}:
        (folder / n).unlink()
    if not keep:
        raise DataError(f"{frame.label()} has no rows (nothing was written)")
    moved = []
    for i, (n, _) in enumerate(keep):  # two steps: a new name may be an old one
        tmp = folder / f".staging-{i:05d}.parquet"
        os.replace(folder / n, tmp)
        moved.append(tmp)
    for i, tmp in enumerate(moved):
        os.replace(tmp, folder / _part_name(i))
    rows = int(sum(c for _, c in keep))
    return {"files": len(keep), "rows": rows}


def remove_staging(run_path: str | os.PathLike) -> None:
    """Remove the run's staging folder (the staged copies of its frames), if there is one."""
    folder = Path(run_path) / STAGING
    if folder.is_dir() and not folder.is_symlink():
        shutil.rmtree(folder)


# ------------------------------------------------------------------ the run's side


def describe_all(**passed: Any) -> dict[str, Frame]:
    """:func:`describe` each frame passed (keyword -> object; None: not passed); {} if none."""
    return {k: describe(v, k) for k, v in passed.items() if v is not None}


def spec_fields(
    frames: dict[str, Frame], overrides: dict, run_path: str | os.PathLike | None
) -> dict[str, str]:
    """The overrides that point the spec at the frames: each frame's staging folder (or, while
    the run directory is not known yet, a placeholder). A frame and an override of the field it
    replaces is a conflict (SpecError naming both)."""
    from distml.errors import SpecError

    out: dict[str, str] = {}
    for keyword, frame in frames.items():
        if frame.field in overrides:
            raise SpecError(
                f"{keyword}= and {frame.field} were both given; {keyword}= replaces "
                f"{frame.field}, so pass only one of them"
            )
        out[frame.field] = (
            str(staging_folder(run_path, keyword)) if run_path is not None else f"{keyword}="
        )
    return out


def check_spec_columns(frames: dict[str, Frame], spec: Any) -> None:
    """The columns the spec names (target, features, exclude, categorical, group_by) must be in
    ``data=``; the target and listed features in ``test_data=``. Names only: the staged files get
    every check of a file source before the job runs."""
    d = spec.data
    if "data" in frames:
        wanted = {
            "data.target": [d.target] if d.target else [],
            "group_by": list(getattr(spec, "group_by", None) or []),
            "data.exclude": list(d.exclude),
            "data.categorical": list(d.categorical or []),
            "data.features": list(d.features or []),
        }
        frames["data"].check_columns(wanted)
    if "test_data" in frames:
        frames["test_data"].check_columns(
            {"data.target": [d.target] if d.target else [], "data.features": list(d.features or [])}
        )


def with_frames(fingerprint: dict, frames: dict[str, Frame]) -> dict:
    """The data fingerprint of a run (``DataInfo.fingerprint()``) with, under each source a frame
    stood for, what was passed (``frame``: type, partitions, rows, schema hash)."""
    out = dict(fingerprint)
    for keyword, frame in frames.items():
        key = "source" if keyword == "data" else "test_source"
        out[key] = {**(out.get(key) or {}), "frame": frame.fingerprint()}
    return out


def differences(stored: dict, frames: dict[str, Frame]) -> list[str]:
    """What differs between the frames passed now and those a finished run recorded (its
    manifest's ``data``): type, class, partitions, schema and, where known now, rows."""
    out = []
    for keyword, frame in frames.items():
        key = "source" if keyword == "data" else "test_source"
        was = ((stored or {}).get(key) or {}).get("frame")
        if not isinstance(was, dict):
            out.append(f"{keyword}= (the finished run read {FIELDS[keyword]}, not a frame)")
            continue
        now = frame.fingerprint()
        for k in ("type", "class", "partitions", "schema_hash", "rows"):
            if now[k] is not None and was.get(k) != now[k]:
                out.append(f"{keyword}= {k} ({was.get(k)!r} then, {now[k]!r} now)")
    return out


def check_same(run_path: str | os.PathLike, run_id: str, frames: dict[str, Frame]) -> None:
    """SpecError unless the frames passed now match those the finished run at ``run_path``
    recorded in its manifest (a rerun of a finished run id reports it only for the same data)."""
    from distml.errors import SpecError

    try:
        stored = json.loads((Path(run_path) / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        stored = {}
    differ = differences(stored.get("data") or {}, frames)
    if differ:
        raise SpecError(
            f"run id {run_id!r} already finished with other data: {'; '.join(differ[:4])}; "
            "pick a new --run-id to run on this data"
        )


def stage_all(frames: dict[str, Frame], run_path: str | os.PathLike) -> None:
    """Stage every frame in its folder of the run directory; records the staged rows (and a
    Ray Dataset's schema, known now) on each Frame."""
    import logging

    import pyarrow.parquet as pq

    log = logging.getLogger("distml")
    for keyword, frame in frames.items():
        folder = staging_folder(run_path, keyword)
        staged = stage(frame, folder)
        frame.rows = staged["rows"]
        if frame.columns is None:
            schema = pq.read_schema(folder / _part_name(0))
            frame.columns = {n: str(schema.field(n).type) for n in schema.names}
        log.info("%s staged: %d rows in %d files", frame.label(), frame.rows, staged["files"])


def relabel(e: BaseException, frames: dict[str, Frame], run_path: str | os.PathLike) -> None:
    """A DistmlError raised while checking staged files names the frame (``data= (a Dask
    DataFrame)``) where it named the staging folder."""
    from distml.errors import DistmlError

    if not isinstance(e, DistmlError):
        return
    for keyword, frame in frames.items():
        folder = str(staging_folder(run_path, keyword))
        e.message = e.message.replace(repr(folder), frame.label()).replace(folder, frame.label())
        e.details = [d.replace(repr(folder), frame.label()) for d in e.details]
    e.args = (e.message,)
