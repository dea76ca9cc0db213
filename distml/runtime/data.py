"""Reading and checking input data before any cluster work (DESIGN.md §2, RELIABILITY.md T5).

Sources: local paths, globs, directories of parquet, ``.csv`` files, fsspec URLs
(``file://``, ``s3://``, … where the filesystem package is installed), ``builtin:NAME`` and
``synthetic:KIND?…``. :func:`inspect_source` reads only parquet footers (schema and row counts)
and CSV headers, so checking a large dataset costs little; :func:`validate_data` adds the column
and target checks; :func:`read_frame` reads the rows (on a worker, normally).
"""

from __future__ import annotations

import glob as globmod
import os
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import pandas as pd

from distml.errors import DataError

PARQUET_SUFFIXES = (".parquet", ".pq", ".parq")
CSV_SUFFIXES = (".csv", ".csv.gz", ".tsv")


@dataclass
class SourceInfo:
    """A resolved source: its files (if any), format, schema and size."""

    source: str
    kind: str  # files | builtin | synthetic
    format: str | None = None  # parquet | csv
    files: list[str] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    rows: int | None = None
    columns: dict[str, str] = field(default_factory=dict)  # name -> dtype string

    def fingerprint(self) -> dict:
        """Files, sizes and row counts for the manifest."""
        out: dict[str, Any] = {"source": self.source, "kind": self.kind, "rows": self.rows,
                               "columns": len(self.columns)}
        if self.files:
            out.update(format=self.format, files=self.files[:1000], n_files=len(self.files),
                       bytes=int(sum(self.sizes)))
        return out


@dataclass
class DataInfo:
    """The checked data of a job: sources, target, feature columns and how each is typed."""

    source: SourceInfo
    test: SourceInfo | None
    target: str | None
    features: list[str]
    categorical: list[str]
    group_by: list[str] = field(default_factory=list)

    def fingerprint(self) -> dict:
        fp = {"source": self.source.fingerprint(), "target": self.target,
              "features": self.features, "categorical": self.categorical}
        if self.test is not None:
            fp["test_source"] = self.test.fingerprint()
        return fp


def _scheme(source: str) -> str:
    return source.split("://", 1)[0] if "://" in source else ""


def _fs_for(source: str):
    import fsspec

    try:
        fs, _ = fsspec.core.url_to_fs(source)
    except (ImportError, ValueError) as e:
        raise DataError(f"data source {source!r}: no filesystem for this URL ({e}); install the "
                        "fsspec backend for it (e.g. s3fs, gcsfs)") from None
    return fs


def resolve_files(source: str, field_name: str = "data.source") -> tuple[str, list[str], Any]:
    """Expand a path, glob, directory or URL into (format, files, filesystem or None)."""
    scheme = _scheme(source)
    fs = None
    if scheme and scheme != "file":
        fs = _fs_for(source)
        paths = sorted(fs.glob(source) if any(c in source for c in "*?[") else [source])
        paths = [p for p in paths if fs.isfile(p)] + sorted(
            f for p in paths if fs.isdir(p) for f in fs.find(p))
        files = [fs.unstrip_protocol(p) for p in paths]
    else:
        local = source[len("file://"):] if scheme == "file" else source
        local = os.path.expanduser(local)
        if any(c in local for c in "*?["):
            files = sorted(globmod.glob(local, recursive=True))
        elif os.path.isdir(local):
            files = sorted(os.path.join(d, f) for d, _, fs_ in os.walk(local) for f in fs_)
        else:
            files = [local] if os.path.exists(local) else []
        files = [f for f in files if os.path.isfile(f)
                 and not os.path.basename(f).startswith((".", "_"))]
    if not files:
        raise DataError(f"{field_name}: no file matches {source!r}; check the path "
                        f"(cwd: {os.getcwd()})")
    parquet = [f for f in files if f.lower().endswith(PARQUET_SUFFIXES)]
    csv = [f for f in files if f.lower().endswith(CSV_SUFFIXES)]
    if parquet and csv:
        raise DataError(f"{field_name}: {source!r} mixes parquet and CSV files; point it at one kind")
    if csv:
        return "csv", csv, fs
    if parquet:
        return "parquet", parquet, fs
    # Files without a known suffix (e.g. Spark part files): parquet is the default format.
    return "parquet", files, fs


def inspect_source(source: str, field_name: str = "data.source") -> SourceInfo:
    """Resolve ``source`` and read its schema and size cheaply; unreadable files are DataErrors."""
    if source.startswith("builtin:"):
        from distml.runtime import datasets

        frame = datasets.load_builtin(source.split(":", 1)[1])
        return SourceInfo(source, "builtin", rows=len(frame), columns=_dtypes(frame))
    if source.startswith("synthetic:"):
        from distml.runtime import datasets

        kind, params = datasets.parse_synthetic(source)
        sample = next(iter(datasets.iter_synthetic(kind, params, rows=8)))
        return SourceInfo(source, "synthetic", rows=int(params["rows"]), columns=_dtypes(sample))
    fmt, files, fs = resolve_files(source, field_name)
    info = SourceInfo(source, "files", fmt, files)
    if fmt == "parquet":
        _inspect_parquet(info, fs, field_name)
    else:
        _inspect_csv(info, fs, field_name)
    return info


def _open(path: str, fs):
    return fs.open(path, "rb") if fs is not None else open(path, "rb")


def _inspect_parquet(info: SourceInfo, fs, field_name: str) -> None:
    import pyarrow.parquet as pq

    rows = 0
    schema = None
    for f in info.files:
        try:
            with _open(f, fs) as fh:
                meta = pq.ParquetFile(fh)
                rows += meta.metadata.num_rows
                file_schema = meta.schema_arrow
            info.sizes.append(fs.size(f) if fs is not None else os.path.getsize(f))
        except OSError as e:
            raise DataError(f"{field_name}: file {f!r} is not readable parquet ({_short(e)}); "
                            "it may be truncated or another format") from None
        except Exception as e:  # pyarrow raises ArrowInvalid for corrupt footers
            raise DataError(f"{field_name}: file {f!r} is not readable parquet ({_short(e)}); "
                            "it may be truncated or another format") from None
        if schema is None:
            schema = file_schema
        elif set(file_schema.names) != set(schema.names):
            missing = sorted(set(schema.names) - set(file_schema.names))
            extra = sorted(set(file_schema.names) - set(schema.names))
            raise DataError(f"{field_name}: file {f!r} has different columns from {info.files[0]!r}"
                            f" (missing {missing}, extra {extra})")
    info.rows = rows
    info.columns = {name: str(schema.field(name).type) for name in schema.names}


def _inspect_csv(info: SourceInfo, fs, field_name: str) -> None:
    for f in info.files:
        try:
            with _open(f, fs) as fh:
                head = pd.read_csv(fh, nrows=1000, compression="infer" if fs is None else None)
            info.sizes.append(fs.size(f) if fs is not None else os.path.getsize(f))
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as e:
            raise DataError(f"{field_name}: file {f!r} is not readable CSV ({_short(e)})") from None
        if not info.columns:
            info.columns = _dtypes(head)
        elif set(head.columns) != set(info.columns):
            raise DataError(f"{field_name}: file {f!r} has different columns from {info.files[0]!r}")


def _short(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def _dtypes(frame: pd.DataFrame) -> dict[str, str]:
    return {str(c): str(t) for c, t in frame.dtypes.items()}


def read_frame(source: str, columns: list[str] | None = None,
               field_name: str = "data.source") -> pd.DataFrame:
    """Read the rows of ``source`` (only ``columns`` when given) into a DataFrame."""
    from distml.runtime import datasets

    if source.startswith("builtin:"):
        frame = datasets.load_builtin(source.split(":", 1)[1])
    elif source.startswith("synthetic:"):
        frame = datasets.synthetic_frame(source)
    else:
        fmt, files, fs = resolve_files(source, field_name)
        if fmt == "parquet":
            import pyarrow.parquet as pq

            try:
                table = pq.read_table(files if fs is None else [fs._strip_protocol(f) for f in files],
                                      columns=columns, filesystem=fs)
            except Exception as e:
                raise DataError(f"{field_name}: cannot read parquet from {source!r}: {_short(e)}") \
                    from None
            frame = table.to_pandas()
        else:
            parts = []
            for f in files:
                with _open(f, fs) as fh:
                    parts.append(pd.read_csv(fh, usecols=columns))
            frame = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
        return frame
    return frame[columns] if columns is not None else frame


def is_categorical_dtype(dtype: str) -> bool:
    d = dtype.lower()
    return (d in ("object", "str", "string", "category", "bool", "large_string")
            or d.startswith(("dictionary", "string", "category")))


def is_numeric_dtype(dtype: str) -> bool:
    d = dtype.lower()
    return d.startswith(("int", "uint", "float", "double", "halffloat", "decimal")) or d == "bool"


def _check_columns(names: Iterable[str], info: SourceInfo, what: str) -> None:
    import difflib

    for c in names:
        if c not in info.columns:
            close = difflib.get_close_matches(c, list(info.columns), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise DataError(f"{what}: column {c!r} is not in {info.source!r}{hint} "
                            f"(columns: {', '.join(list(info.columns)[:30])})")


def validate_data(data, *, needs_target: bool, group_by: list[str] | None = None,
                  check_features: bool = True) -> DataInfo:
    """Check the data a spec points at before the cluster starts; returns the resolved columns.

    ``data`` is a :class:`distml.spec.DataSpec`. Raises :class:`DataError` naming the file or
    column: missing file, unreadable parquet/CSV, missing column, NaN target (with the count),
    unusable feature dtype, empty data.
    """
    group_by = list(group_by or [])
    src = inspect_source(data.source)
    if src.rows == 0:
        raise DataError(f"data.source: {data.source!r} has no rows")
    if needs_target and not data.target:
        raise DataError("data.target is required for this kind; name the column to predict")
    if data.target:
        _check_columns([data.target], src, "data.target")
    _check_columns(group_by, src, "group_by")
    _check_columns(data.exclude, src, "data.exclude")
    _check_columns(data.categorical or [], src, "data.categorical")
    skip = set(data.exclude) | set(group_by) | ({data.target} if data.target else set())
    if data.features is not None:
        _check_columns(data.features, src, "data.features")
        clash = sorted(set(data.features) & skip)
        if clash:
            raise DataError(f"data.features: {clash} are also the target, a group or excluded; "
                            "remove them from data.features")
        features = list(data.features)
    else:
        features = [c for c in src.columns if c not in skip]
    if check_features and not features:
        raise DataError("data.features: no feature columns are left after removing target, "
                        "groups and exclude")
    categorical = list(data.categorical) if data.categorical is not None else [
        c for c in features if is_categorical_dtype(src.columns[c])]
    if check_features:
        for c in features:
            dt = src.columns[c]
            if c not in categorical and not is_numeric_dtype(dt):
                raise DataError(f"data.features: column {c!r} has dtype {dt}, which is neither "
                                "numeric nor categorical; list it in data.exclude or "
                                "data.categorical")
    test = None
    if data.test_source:
        test = inspect_source(data.test_source, "data.test_source")
        need = features + ([data.target] if data.target else [])
        _check_columns(need, test, "data.test_source")
    if data.target:
        _check_target(data.target, src, "data.source")
        if test is not None:
            _check_target(data.target, test, "data.test_source")
    return DataInfo(src, test, data.target, features, categorical, group_by)


def _check_target(target: str, info: SourceInfo, field_name: str) -> None:
    y = read_frame(info.source, [target], field_name)[target]
    n_nan = int(y.isna().sum())
    if n_nan:
        raise DataError(f"data.target: column {target!r} has {n_nan} missing value"
                        f"{'s' if n_nan != 1 else ''} of {len(y)} rows in {info.source!r}; drop or "
                        "impute those rows first")


# ---------------------------------------------------------------- splits

def split_indices(y: np.ndarray, split, *, classification: bool) -> dict[str, np.ndarray]:
    """Row indices of train/valid/test for a :class:`SplitSpec` (or None: all rows train).

    Deterministic in ``split.seed``; stratified on ``y`` when ``split.stratify`` is true (or
    unset and ``classification``). Uses scikit-learn's ``train_test_split`` in two steps.
    """
    n = len(y)
    idx = np.arange(n)
    if split is None or (split.valid == 0 and split.test == 0):
        return {"train": idx}
    from sklearn.model_selection import train_test_split

    stratify = split.stratify if split.stratify is not None else classification
    out: dict[str, np.ndarray] = {}
    rest = idx
    try:
        if split.test > 0:
            rest, out["test"] = train_test_split(
                idx, test_size=split.test, random_state=split.seed,
                stratify=y if stratify else None)
        if split.valid > 0:
            frac = split.valid / (1 - split.test)
            train, out["valid"] = train_test_split(
                rest, test_size=frac, random_state=split.seed,
                stratify=y[rest] if stratify else None)
        else:
            train = rest
    except ValueError as e:
        raise DataError(f"data.split cannot split {n} rows as asked ({e}); lower the fractions or "
                        "set data.split.stratify: false") from None
    out["train"] = np.sort(train)
    return {k: np.sort(v) for k, v in sorted(out.items(), key=lambda kv: ["train", "valid",
                                                                            "test"].index(kv[0]))}


def cv_indices(y: np.ndarray, folds: int, seed: int, *, stratify: bool) -> list[tuple]:
    """(train, valid) index pairs of seeded (stratified) K-fold cross-validation."""
    from sklearn.model_selection import KFold, StratifiedKFold

    if stratify:
        values, counts = np.unique(y, return_counts=True)
        if counts.min() < folds:
            raise DataError(f"data.split.cv={folds} needs at least {folds} rows of every class; "
                            f"class {values[counts.argmin()]!r} has {counts.min()}; use fewer "
                            "folds or data.split.stratify: false")
    splitter = (StratifiedKFold if stratify else KFold)(n_splits=folds, shuffle=True,
                                                       random_state=seed)
    try:
        return list(splitter.split(np.zeros(len(y)), y if stratify else None))
    except ValueError as e:
        raise DataError(f"data.split.cv={folds} cannot be used on these rows: {e}") from None
