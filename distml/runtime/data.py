"""Reading and checking input data before any cluster work (DESIGN.md §2, RELIABILITY.md T5).

Sources: local paths, globs, directories of parquet, ``.csv`` files, fsspec URLs
(``file://``, ``s3://``, … where the filesystem package is installed), ``builtin:NAME`` and
``synthetic:KIND?…``. :func:`inspect_source` reads only parquet footers (schema and row counts)
and CSV headers, so checking a large dataset costs little; :func:`validate_data` adds the column
and target checks; :func:`read_frame` reads the rows (on a worker, normally).
"""

from __future__ import annotations

import glob as globmod
import logging
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable

from distml.errors import DataError, one_line
from distml.runtime.read import csv_reason, open_input, read_files, read_virtual
from distml.runtime.splits import (  # noqa: F401 - the splits are imported from here too
    class_order,
    cv_indices,
    split_indices,
    values_text,
)

if TYPE_CHECKING:  # heavy: imported where used, so `distml validate` stays light
    import numpy as np
    import pandas as pd

log = logging.getLogger("distml")

PARQUET_SUFFIXES = (".parquet", ".pq", ".parq")
CSV_SUFFIXES = (".csv", ".csv.gz", ".tsv")
#: fsspec protocols a data source may use without opting in: local files and object stores.
#: Others (http, https, ftp, ssh, …) reach arbitrary hosts and need DISTML_ALLOWED_PROTOCOLS.
DEFAULT_PROTOCOLS = frozenset(
    {"file", "local", "s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "hdfs"}
)
ALLOWED_PROTOCOLS_ENV = "DISTML_ALLOWED_PROTOCOLS"


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
        out: dict[str, Any] = {
            "source": self.source,
            "kind": self.kind,
            "rows": self.rows,
            "columns": len(self.columns),
        }
        if self.files:
            out.update(
                format=self.format,
                files=self.files[:1000],
                n_files=len(self.files),
                bytes=int(sum(self.sizes)),
            )
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
        fp = {
            "source": self.source.fingerprint(),
            "target": self.target,
            "features": self.features,
            "categorical": self.categorical,
        }
        if self.test is not None:
            fp["test_source"] = self.test.fingerprint()
        return fp


def _scheme(source: str) -> str:
    return source.split("://", 1)[0] if "://" in source else ""


def allowed_protocols() -> frozenset[str]:
    """The default protocols plus those listed (comma-separated) in DISTML_ALLOWED_PROTOCOLS."""
    extra = os.environ.get(ALLOWED_PROTOCOLS_ENV, "")
    return DEFAULT_PROTOCOLS | {p.strip().lower() for p in extra.split(",") if p.strip()}


def check_protocol(source: str, field_name: str = "data.source") -> None:
    """Refuse a URL whose protocol (any of a chain such as ``simplecache::http``) is not
    allowed; local paths, ``builtin:`` and ``synthetic:`` always are."""
    scheme = _scheme(source)
    if not scheme and "::" in source:  # fsspec chains without '://' (e.g. 'zip::...')
        scheme = source.split("::", 1)[0] + "::"
    if not scheme:
        return
    allowed = allowed_protocols()
    for proto in filter(None, (p.strip().lower() for p in scheme.split("::"))):
        if proto not in allowed:
            raise DataError(
                f"{field_name}: the {proto!r} protocol is not allowed by default (it "
                "can reach any host); use a local path or an object store "
                f"({', '.join(sorted(DEFAULT_PROTOCOLS))}), or add {proto!r} to "
                f"{ALLOWED_PROTOCOLS_ENV} (comma-separated)"
            )


def _fs_for(source: str):
    import fsspec

    try:
        fs, _ = fsspec.core.url_to_fs(source)
    except (ImportError, ValueError) as e:
        raise DataError(
            f"data source {source!r}: no filesystem for this URL ({e}); install the "
            "fsspec backend for it (e.g. s3fs, gcsfs)"
        ) from None
    return fs


def resolve_files(source: str, field_name: str = "data.source") -> tuple[str, list[str], Any]:
    """Expand a path, glob, directory or URL into (format, files, filesystem or None).

    A directory means the parquet and CSV files below it: other files (a README, Spark's
    ``_SUCCESS``) are skipped and counted in the log; a directory without any is a DataError.
    """
    scheme = _scheme(source)
    fs = None
    listed: list[str] = []  # files found under a directory, before the suffix filter
    if scheme and scheme != "file":
        fs = _fs_for(source)
        paths = sorted(fs.glob(source) if any(c in source for c in "*?[") else [source])
        listed = sorted(f for p in paths if fs.isdir(p) for f in fs.find(p))
        files = [p for p in paths if fs.isfile(p)]
        files = [fs.unstrip_protocol(p) for p in files]
        listed = [fs.unstrip_protocol(p) for p in listed]
    else:
        local = source[len("file://") :] if scheme == "file" else source
        local = os.path.expanduser(local)
        if any(c in local for c in "*?["):
            files = sorted(globmod.glob(local, recursive=True))
        elif os.path.isdir(local):
            files = []
            listed = sorted(os.path.join(d, f) for d, _, fs_ in os.walk(local) for f in fs_)
        else:
            files = [local] if os.path.exists(local) else []
        files = [
            f for f in files if os.path.isfile(f) and not os.path.basename(f).startswith((".", "_"))
        ]
    if listed:
        data_files = [
            f
            for f in listed
            if f.lower().endswith(PARQUET_SUFFIXES + CSV_SUFFIXES)
            and not os.path.basename(f).startswith((".", "_"))
        ]
        skipped = len(listed) - len(data_files)
        if not data_files and not files:
            raise DataError(
                f"{field_name}: directory {source!r} holds no parquet or CSV files "
                f"({skipped} other file{'s' if skipped != 1 else ''} skipped); point "
                "it at the data files"
            )
        if skipped:
            log.info(
                "%s: skipped %d file%s under %s that are not parquet or CSV",
                field_name,
                skipped,
                "s" if skipped != 1 else "",
                source,
            )
        files = sorted(files + data_files)
    if not files:
        raise DataError(
            f"{field_name}: no file matches {source!r}; check the path (cwd: {os.getcwd()})"
        )
    parquet = [f for f in files if f.lower().endswith(PARQUET_SUFFIXES)]
    csv = [f for f in files if f.lower().endswith(CSV_SUFFIXES)]
    if parquet and csv:
        raise DataError(
            f"{field_name}: {source!r} mixes parquet and CSV files; point it at one kind"
        )
    if csv:
        return "csv", csv, fs
    if parquet:
        return "parquet", parquet, fs
    # Files without a known suffix (e.g. Spark part files): parquet is the default format.
    return "parquet", files, fs


def inspect_source(source: str, field_name: str = "data.source") -> SourceInfo:
    """Resolve ``source`` and read its schema and size cheaply; unreadable files are DataErrors.

    This is the driver's entry point for every source, so the protocol allow-list is enforced
    here (workers re-resolve a source the driver accepted, under their own environment).
    """
    check_protocol(source, field_name)
    if source.startswith("builtin:"):
        from distml.runtime import builtin_facts

        known = builtin_facts.source_facts(source)  # no scikit-learn import for these
        if known is not None:
            return SourceInfo(source, "builtin", rows=known[0], columns=known[1])
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


def _inspect_parquet(info: SourceInfo, fs, field_name: str) -> None:
    import pyarrow.parquet as pq

    rows = 0
    schema = None
    for f in info.files:
        try:
            with open_input(f, fs) as fh:
                meta = pq.ParquetFile(fh)
                rows += meta.metadata.num_rows
                file_schema = meta.schema_arrow
            info.sizes.append(fs.size(f) if fs is not None else os.path.getsize(f))
        except OSError as e:
            raise DataError(
                f"{field_name}: file {f!r} is not readable parquet "
                f"({one_line(e, 200)}); it may be truncated or another format"
            ) from None
        except Exception as e:  # pyarrow raises ArrowInvalid for corrupt footers
            raise DataError(
                f"{field_name}: file {f!r} is not readable parquet "
                f"({one_line(e, 200)}); it may be truncated or another format"
            ) from None
        _check_unique(list(file_schema.names), f, field_name)
        if schema is None:
            schema = file_schema
        elif set(file_schema.names) != set(schema.names):
            missing = sorted(set(schema.names) - set(file_schema.names))
            extra = sorted(set(file_schema.names) - set(schema.names))
            raise DataError(
                f"{field_name}: file {f!r} has different columns from {info.files[0]!r}"
                f" (missing {missing}, extra {extra})"
            )
    info.rows = rows
    info.columns = {name: str(schema.field(name).type) for name in schema.names}


def _compression(path: str) -> str | None:
    """pandas cannot infer the compression of an open file: say it (``.csv.gz``)."""
    return "gzip" if path.lower().endswith(".gz") else None


def _check_unique(names: list[str], path: str, field_name: str) -> None:
    dup = sorted({str(n) for n in names if names.count(n) > 1})
    if dup:
        raise DataError(
            f"{field_name}: file {path!r} has the column {dup[0]!r} more than once; "
            "give every column a distinct name"
        )


_HEAD_ROWS = 1000


def _inspect_csv(info: SourceInfo, fs, field_name: str) -> None:
    import pandas as pd

    rows: int | None = 0
    for f in info.files:
        try:
            with open_input(f, fs) as fh:
                # The header as written: pandas renames a repeated name ('x1' -> 'x1.1').
                header = pd.read_csv(
                    fh,
                    nrows=1,
                    header=None,
                    dtype=str,
                    keep_default_na=False,
                    compression=_compression(f),
                )
            with open_input(f, fs) as fh:
                head = pd.read_csv(fh, nrows=_HEAD_ROWS, compression=_compression(f))
            info.sizes.append(fs.size(f) if fs is not None else os.path.getsize(f))
        except (
            pd.errors.ParserError,
            pd.errors.EmptyDataError,
            UnicodeDecodeError,
            OSError,
            ValueError,
        ) as e:
            raise DataError(
                f"{field_name}: file {f!r} is not readable CSV ({csv_reason(e)})"
            ) from None
        _check_unique([str(c) for c in header.iloc[0]] if len(header) else [], f, field_name)
        # Only a short file's rows are known here; the target check reads the rest.
        rows = rows + len(head) if rows is not None and len(head) < _HEAD_ROWS else None
        if not info.columns:
            info.columns = _dtypes(head)
        elif set(head.columns) != set(info.columns):
            raise DataError(
                f"{field_name}: file {f!r} has different columns from {info.files[0]!r}"
            )
    info.rows = rows


def _dtypes(frame: pd.DataFrame) -> dict[str, str]:
    return {str(c): str(t) for c, t in frame.dtypes.items()}


def read_frame(
    source: str, columns: list[str] | None = None, field_name: str = "data.source"
) -> pd.DataFrame:
    """Read the rows of ``source`` (only ``columns`` when given) into a DataFrame."""
    if source.startswith(("builtin:", "synthetic:")):
        return read_virtual(source, columns)
    fmt, files, fs = resolve_files(source, field_name)
    return read_files(files, fmt, columns, fs, field_name, source)


def is_categorical_dtype(dtype: str) -> bool:
    d = dtype.lower()
    return d in ("object", "str", "string", "category", "bool", "large_string") or d.startswith(
        ("dictionary", "string", "category")
    )


def is_numeric_dtype(dtype: str) -> bool:
    d = dtype.lower()
    return d.startswith(("int", "uint", "float", "double", "halffloat", "decimal")) or d == "bool"


def _names(columns: Iterable[str], limit: int = 30, width: int = 40) -> str:
    """Column names for a message, each cut to ``width`` characters: a file that is not really
    a table (a text file named .csv) has a 'header' that is its first line of content."""
    names = list(columns)
    shown = [n if len(n) <= width else n[: width - 1] + "…" for n in names[:limit]]
    return ", ".join(shown) + (f", … ({len(names)} in all)" if len(names) > limit else "")


def _check_columns(names: Iterable[str], info: SourceInfo, what: str) -> None:
    import difflib

    for c in names:
        if c not in info.columns:
            close = difflib.get_close_matches(c, list(info.columns), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise DataError(
                f"{what}: column {c!r} is not in {info.source!r}{hint} "
                f"(columns: {_names(info.columns)})"
            )


def validate_data(
    data,
    *,
    needs_target: bool,
    group_by: list[str] | None = None,
    check_features: bool = True,
    task: str | None = None,
) -> DataInfo:
    """Check the data a spec points at before the cluster starts; returns the resolved columns.

    ``data`` is a :class:`distml.spec.DataSpec`. Raises :class:`DataError` naming the file or
    column: missing file, unreadable parquet/CSV, duplicate column, missing column, NaN target
    (with the count), unusable feature dtype, empty data. ``task`` (a supervised kind's
    ``classification``/``regression``, or ``infer`` to infer it from the target as the fit
    does) adds the target checks a fit would fail on: a numeric target for regression, and at
    least 2 classes in the data, in the train rows of the split and of every cv fold.
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
            raise DataError(
                f"data.features: {clash} are also the target, a group or excluded; "
                "remove them from data.features"
            )
        features = list(data.features)
    else:
        features = [c for c in src.columns if c not in skip]
    if check_features and not features:
        raise DataError(
            "data.features: no feature columns are left after removing target, groups and exclude"
        )
    categorical = (
        list(data.categorical)
        if data.categorical is not None
        else [c for c in features if is_categorical_dtype(src.columns[c])]
    )
    if check_features:
        for c in features:
            dt = src.columns[c]
            if c not in categorical and not is_numeric_dtype(dt):
                raise DataError(
                    f"data.features: column {c!r} has dtype {dt}, which is neither "
                    "numeric nor categorical; list it in data.exclude or "
                    "data.categorical"
                )
    test = None
    if data.test_source:
        test = inspect_source(data.test_source, "data.test_source")
        need = features + ([data.target] if data.target else [])
        _check_columns(need, test, "data.test_source")
    if data.target and test is None and _target_known_good(data, src, task):
        pass  # a bundled data set's target, proven fine without loading it
    elif data.target:
        y = _check_target(data.target, src, "data.source")
        y_test = _check_target(data.target, test, "data.test_source") if test is not None else None
        if task is not None and not (y_test is None and _target_proven(y, data, task)):
            check_target_task(y, data, task, y_test)
    return DataInfo(src, test, data.target, features, categorical, group_by)


def _target_proven(y: pd.Series, data, task: str) -> bool:
    """The target checks provably pass from the target's counts alone (the proof a bundled
    data set's recorded facts get, :func:`distml.runtime.builtin_facts.target_checks_pass`),
    so the split itself need not be drawn here: no scikit-learn in the driver (~0.9 s)."""
    from distml.runtime import builtin_facts

    facts = {**builtin_facts.target_facts_of(y), "rows": len(y)}
    return builtin_facts.target_checks_pass(facts, data.split_spec, task)


def _target_known_good(data, src: SourceInfo, task: str | None) -> bool:
    """The target checks below provably pass for a ``builtin:`` source's default target
    (:mod:`distml.runtime.builtin_facts`): ``distml validate`` then loads nothing."""
    if src.kind != "builtin":
        return False
    from distml.runtime import builtin_facts

    facts = builtin_facts.target_facts(src.source, data.target)
    return facts is not None and builtin_facts.target_checks_pass(facts, data.split_spec, task)


def _check_target(target: str, info: SourceInfo, field_name: str) -> pd.Series:
    y = read_frame(info.source, [target], field_name)[target]
    if len(y) == 0:
        raise DataError(f"{field_name}: {info.source!r} has no rows")
    if info.rows is None:
        info.rows = len(y)
    n_nan = int(y.isna().sum())
    if n_nan:
        raise DataError(
            f"data.target: column {target!r} has {n_nan} missing value"
            f"{'s' if n_nan != 1 else ''} of {len(y)} rows in {info.source!r}; drop or "
            "impute those rows first"
        )
    return y


def infer_task(y: pd.Series) -> str:
    """classification for bool/string/category targets or integers with ≤ 20 distinct values."""
    import pandas as pd

    if not pd.api.types.is_numeric_dtype(y) or pd.api.types.is_bool_dtype(y):
        return "classification"
    if pd.api.types.is_integer_dtype(y) and y.nunique() <= 20:
        return "classification"
    return "regression"


def check_target_task(y: pd.Series, data, task: str, y_test: pd.Series | None = None) -> None:
    """The target checks a supervised fit would otherwise fail on, on the worker, much later.

    Mirrors the supervised kinds' ``prepare`` and the split of ``fit_and_evaluate`` /
    ``fold_metrics``: same task inference, class order, :func:`split_indices` and
    :func:`cv_indices`, so a split the run cannot make fails here with the same sentence.
    """
    import numpy as np
    import pandas as pd

    target = data.target
    if task == "infer":
        task = infer_task(y)
    if task == "regression":
        for col, where in ((y, "data.source"), (y_test, "data.test_source")):
            if col is not None and not pd.api.types.is_numeric_dtype(col):
                raise DataError(
                    f"data.target: column {target!r} in {where} has dtype "
                    f"{col.dtype}, but a regression target must be numeric; use a "
                    "classifier or a numeric column"
                )
        split = data.split_spec  # the worker's split and folds, so too few rows fail here
        values = y.to_numpy(dtype=np.float64)
        rows = split_indices(values, split, classification=False)["train"]
        if split is not None and split.cv:
            cv_indices(values[rows], split.cv, split.seed, stratify=bool(split.stratify))
        return
    classes = class_order(pd.unique(y).tolist())
    if len(classes) < 2:
        raise DataError(
            f"data.target: column {target!r} has a single class ({values_text(classes)}) "
            f"in {data.source!r}; a classifier needs at least 2 classes"
        )
    if y_test is not None:
        unseen = sorted(set(pd.unique(y_test).tolist()) - set(classes), key=str)
        if unseen:
            raise DataError(
                f"data.test_source: target column {target!r} has classes "
                f"{values_text(unseen)} that do not occur in data.source"
            )
    index = {c: i for i, c in enumerate(classes)}
    codes = y.map(index).to_numpy(dtype=np.int64)
    split = data.split_spec
    if split is not None and (split.test > 0 or split.valid > 0) and split.stratify is not False:
        counts = np.bincount(codes, minlength=len(classes))
        if counts.min() < 2:  # train_test_split's rule, said with the real class
            raise DataError(
                f"data.split: class {values_text([classes[int(counts.argmin())]])} of "
                f"target column {target!r} has {int(counts.min())} row; a stratified "
                "split needs at least 2 rows of every class; add rows, drop that "
                "class or set data.split.stratify: false"
            )
    parts = split_indices(codes, split, classification=True)

    def need_two(rows: np.ndarray, what: str) -> None:
        present = np.unique(codes[rows])
        if len(present) < 2:
            raise DataError(
                f"data.split: the {what} of target column {target!r} hold only "
                f"class {values_text([classes[present[0]]])}; a classifier needs at "
                "least 2 classes there; use more rows, fewer holdout rows or "
                "data.split.stratify: true"
            )

    need_two(parts["train"], "train rows")
    if split is not None and split.cv:
        stratify = split.stratify if split.stratify is not None else True
        rows = parts["train"]
        for i, (train, _) in enumerate(
            cv_indices(codes[rows], split.cv, split.seed, stratify=stratify, labels=classes)
        ):
            need_two(rows[train], f"training rows of cv fold {i}")
