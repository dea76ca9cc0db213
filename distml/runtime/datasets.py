"""Virtual data sources (DESIGN.md §2): ``builtin:NAME`` and ``synthetic:KIND?k=v&...``.

Built-ins are the small datasets bundled with scikit-learn and statsmodels (they work offline).
Synthetic data are produced in fixed blocks of ``BLOCK_ROWS`` rows; block ``b`` draws from
``numpy.random.default_rng([seed, b, stream])`` and the true model (weights, centres, per-group
coefficients) from ``default_rng([seed, GLOBAL_BLOCK])``, so a source and a row count give the
same data whatever the chunking or the number of files. ``generate_dataset`` streams them to
parquet block by block, in bounded memory.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from distml.errors import DataError, SpecError
from distml.runtime.artifacts import atomic_file

BLOCK_ROWS = 65_536
GLOBAL_BLOCK = 2**31 - 1
_SKLEARN = ("iris", "digits", "breast_cancer", "diabetes", "wine")
_STATSMODELS = {
    "longley": "TOTEMP",
    "spector": "GRADE",
    "grunfeld": "invest",
    "star98": "NABOVE",
    "macrodata": "realgdp",
    "sunspots": "SUNACTIVITY",
}
BUILTIN_NAMES: tuple[str, ...] = _SKLEARN + tuple(_STATSMODELS)


def _did_you_mean(value: str, known: tuple[str, ...] | list[str]) -> str:
    close = difflib.get_close_matches(value, list(known), n=1)
    return f"did you mean '{close[0]}'? " if close else ""


def _clean_column(name: str) -> str:
    """``'mean radius'`` -> ``'mean_radius'``, ``'sepal length (cm)'`` -> ``'sepal_length_cm'``."""
    return re.sub(r"[^0-9A-Za-z_]+", "_", str(name)).strip("_") or "col"


def _builtin_key(name: str) -> str:
    key = name.strip()
    key = key[len("builtin:") :] if key.startswith("builtin:") else key
    key = key.strip().lower()
    if key not in BUILTIN_NAMES:
        raise DataError(
            f"data.source: unknown builtin dataset '{key}'; "
            f"{_did_you_mean(key, BUILTIN_NAMES)}Known: {', '.join(BUILTIN_NAMES)}."
        )
    return key


@lru_cache(maxsize=None)
def _load_builtin_cached(key: str) -> pd.DataFrame:
    if key in _SKLEARN:
        import sklearn.datasets

        frame = getattr(sklearn.datasets, f"load_{key}")(as_frame=True).frame
        frame = frame.rename(columns=_clean_column)
    else:
        import statsmodels.datasets

        frame = getattr(statsmodels.datasets, key).load_pandas().data
    return frame.reset_index(drop=True)


def load_builtin(name: str) -> pd.DataFrame:
    """The bundled dataset ``name`` (``'iris'`` or ``'builtin:iris'``) as a fresh DataFrame.

    scikit-learn sets carry their target as ``target`` and parquet/formula-friendly feature
    names; statsmodels sets keep their natural column names. Raises DataError for an unknown name.
    """
    return _load_builtin_cached(_builtin_key(name)).copy()


def builtin_default_target(name: str) -> str | None:
    """The conventional target column of builtin dataset ``name``."""
    key = _builtin_key(name)
    return "target" if key in _SKLEARN else _STATSMODELS.get(key)


# --- synthetic: parameter schema -----------------------------------------------------------
# name -> (parser, default, rule text, check); a default of None is resolved in _resolve.
_Int, _Float = "int", "float"
_POS = ("> 0", lambda v: v > 0)
_NONNEG = (">= 0", lambda v: v >= 0)
_OPEN1 = ("in (-1, 1)", lambda v: -1 < v < 1)
_COMMON = {"rows": (_Int, 1000, _POS), "seed": (_Int, 0, _NONNEG)}
_FEAT = {"features": (_Int, 10, _POS)}
SYNTHETIC_KINDS: dict[str, dict[str, tuple]] = {
    "classification": {
        **_COMMON,
        **_FEAT,
        "informative": (_Int, None, _POS),
        "classes": (_Int, 2, (">= 2", lambda v: v >= 2)),
    },
    "regression": {
        **_COMMON,
        **_FEAT,
        "informative": (_Int, None, _POS),
        "noise": (_Float, 1.0, _NONNEG),
    },
    "blobs": {**_COMMON, **_FEAT, "centers": (_Int, 3, _POS), "cluster_std": (_Float, 1.0, _POS)},
    "panel": {**_COMMON, **_FEAT, "groups": (_Int, 10, _POS), "noise": (_Float, 1.0, _NONNEG)},
    "timeseries": {
        **_COMMON,
        "series": (_Int, 1, _POS),
        "phi": (_Float, 0.6, _OPEN1),
        "theta": (_Float, 0.3, _OPEN1),
        "noise": (_Float, 1.0, _NONNEG),
    },
}


def _bad(name: str, rule: str, value: Any) -> SpecError:
    return SpecError(f"data.source: synthetic parameter '{name}' must be {rule}; got {value!r}.")


def _convert(name: str, kind: str, raw: Any) -> int | float:
    is_int = kind == _Int
    rule = "an integer" if is_int else "a number"
    if isinstance(raw, bool):
        raise _bad(name, rule, raw)
    if isinstance(raw, (int, float, np.integer, np.floating)):
        value: int | float = raw
    else:
        text = str(raw).strip()
        try:
            value = int(text)
        except ValueError:
            try:
                value = float(text)
            except ValueError:
                raise _bad(name, rule, raw) from None
    if is_int:
        if not float(value).is_integer():
            raise _bad(name, rule, raw)
        return int(value)
    if not np.isfinite(value):
        raise _bad(name, "a finite number", raw)
    return float(value)


def _resolve(kind: str, params: dict[str, Any]) -> dict[str, Any]:
    """Validate ``params`` for ``kind`` and fill the defaults; SpecError names the parameter."""
    if kind not in SYNTHETIC_KINDS:
        raise SpecError(
            f"data.source: unknown synthetic kind '{kind}'; "
            f"{_did_you_mean(kind, list(SYNTHETIC_KINDS))}"
            f"Known: {', '.join(SYNTHETIC_KINDS)}."
        )
    schema = SYNTHETIC_KINDS[kind]
    out: dict[str, Any] = {}
    for name, raw in params.items():
        if name not in schema:
            raise SpecError(
                f"data.source: unknown synthetic parameter '{name}' for kind '{kind}'; "
                f"{_did_you_mean(name, list(schema))}Known: {', '.join(schema)}."
            )
        typ, _, (rule, check) = schema[name]
        value = _convert(name, typ, raw)
        if not check(value):
            raise _bad(name, ("an integer " if typ == _Int else "") + rule, raw)
        out[name] = value
    for name, (_, default, _) in schema.items():
        out.setdefault(name, default)
    if "informative" in schema:
        if out["informative"] is None:
            out["informative"] = min(out["features"], 5)
        if out["informative"] > out["features"]:
            raise _bad("informative", f"<= features ({out['features']})", out["informative"])
    for name in ("groups", "series"):
        if name in schema and out[name] > out["rows"]:
            raise _bad(name, f"<= rows ({out['rows']})", out[name])
    return out


def _split_synthetic(source: str) -> tuple[str, dict[str, str]]:
    """``'synthetic:KIND?a=1&b=2'`` -> ``('KIND', {'a': '1', 'b': '2'})``, unvalidated values."""
    body = source.strip()
    if not body.startswith("synthetic:"):
        raise SpecError(
            f"data.source: a synthetic source must start with 'synthetic:'; got {source!r}."
        )
    kind, _, query = body[len("synthetic:") :].partition("?")
    params: dict[str, str] = {}
    for pair in filter(None, query.split("&")):
        name, eq, value = (part.strip() for part in pair.partition("="))
        if not eq or not name or not value:
            raise SpecError(
                f"data.source: synthetic parameter {pair!r} must be written "
                f"'name=value'; got {source!r}."
            )
        if name in params:
            raise SpecError(
                f"data.source: synthetic parameter '{name}' is given twice; got {source!r}."
            )
        params[name] = value
    return kind.strip(), params


def parse_synthetic(source: str) -> tuple[str, dict[str, Any]]:
    """``'synthetic:regression?rows=500&noise=0.5'`` -> ``('regression', {all parameters})``.

    Raises SpecError naming the kind or parameter that is unknown or out of range.
    """
    kind, params = _split_synthetic(source)
    return kind, _resolve(kind, params)


# --- synthetic: generation -----------------------------------------------------------------
def _global(kind: str, p: dict[str, Any]) -> dict[str, Any]:
    """The true model of a synthetic source, drawn once from the seed."""
    rng = np.random.default_rng([p["seed"], GLOBAL_BLOCK])
    if kind == "classification":
        k = p["informative"]
        return {"w": rng.standard_normal((k, p["classes"])) * 4.0 / np.sqrt(k)}
    if kind == "regression":
        return {
            "w": rng.uniform(1, 10, p["informative"]) * rng.choice([-1, 1], p["informative"]),
            "b": float(rng.normal(0, 5)),
        }
    if kind == "blobs":
        return {"c": rng.uniform(-10, 10, (p["centers"], p["features"]))}
    if kind == "panel":
        g = p["groups"]
        width = max(4, len(str(g - 1)))
        return {
            "a": rng.normal(0, 5, g),
            "b": rng.normal(0, 2, (g, p["features"])),
            "labels": np.array([f"g{i:0{width}d}" for i in range(g)], dtype=object),
        }
    s = p["series"]
    width = max(4, len(str(s - 1)))
    return {
        "mu": rng.normal(10, 5, s),
        "beta": rng.normal(0, 2, s),
        "labels": np.array([f"s{i:0{width}d}" for i in range(s)], dtype=object),
    }


def _segment(i: np.ndarray, n_units: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Contiguous unit id of global rows ``i`` (``rows`` split into ``n_units``) and its start."""
    unit = (i * n_units) // rows
    return unit, -((-unit * rows) // n_units)


def _block(
    kind: str, p: dict[str, Any], g: dict[str, Any], rows: int, b: int, state: dict[Any, Any]
) -> pd.DataFrame:
    """Rows ``[b*BLOCK_ROWS, min((b+1)*BLOCK_ROWS, rows))`` of the source."""
    start = b * BLOCK_ROWS
    n = min(BLOCK_ROWS, rows - start)
    rng = [np.random.default_rng([p["seed"], b, k]) for k in range(2)]
    if kind == "timeseries":
        return _timeseries_block(p, g, rows, start, n, rng, state)
    x = rng[0].standard_normal((n, p["features"]))
    cols: dict[str, Any] = {}
    if kind == "classification":
        logits = x[:, : p["informative"]] @ g["w"] + rng[1].gumbel(size=(n, p["classes"]))
        y: np.ndarray = logits.argmax(axis=1).astype(np.int64)
    elif kind == "regression":
        y = x[:, : p["informative"]] @ g["w"] + g["b"] + p["noise"] * rng[1].standard_normal(n)
    elif kind == "blobs":
        y = rng[1].integers(0, p["centers"], n, dtype=np.int64)
        x = g["c"][y] + p["cluster_std"] * x
    else:  # panel
        unit, _ = _segment(np.arange(start, start + n, dtype=np.int64), p["groups"], rows)
        cols["group"] = pd.array(g["labels"][unit], dtype="str")
        y = (
            g["a"][unit]
            + np.einsum("ij,ij->i", x, g["b"][unit])
            + p["noise"] * rng[1].standard_normal(n)
        )
    cols.update({f"x{j}": x[:, j] for j in range(x.shape[1])})
    cols["target"] = y
    return pd.DataFrame(cols)


def _timeseries_block(
    p: dict[str, Any],
    g: dict[str, Any],
    rows: int,
    start: int,
    n: int,
    rng: list[np.random.Generator],
    state: dict[Any, Any],
) -> pd.DataFrame:
    """``y = mu_s + beta_s * x0 + z``, ``z`` ARMA(1,1) with innovations ``N(0, noise)``.

    Series are contiguous and ordered by ``t``; ``state`` carries the ARMA filter state from one
    block to the next, so blocks must be produced in order.
    """
    from scipy.signal import lfilter

    i = np.arange(start, start + n, dtype=np.int64)
    unit, first = _segment(i, p["series"], rows)
    x0 = rng[0].standard_normal(n)
    e = p["noise"] * rng[1].standard_normal(n)
    z = np.empty(n)
    bounds = np.flatnonzero(np.diff(unit)) + 1
    zf = np.zeros(1)
    for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, n]):
        s = int(unit[lo])
        zi = state.get(s, np.zeros(1)) if i[lo] != first[lo] else np.zeros(1)
        z[lo:hi], zf = lfilter([1.0, p["theta"]], [1.0, -p["phi"]], e[lo:hi], zi=zi)
    state.clear()
    state[int(unit[-1])] = zf
    cols: dict[str, Any] = {}
    if p["series"] > 1:
        cols["series"] = pd.array(g["labels"][unit], dtype="str")
    cols.update({"t": i - first, "x0": x0, "y": g["mu"][unit] + g["beta"][unit] * x0 + z})
    return pd.DataFrame(cols)


def _rechunk(frames: Iterator[pd.DataFrame], chunk_rows: int) -> Iterator[pd.DataFrame]:
    """Re-cut a stream of frames into frames of exactly ``chunk_rows`` rows (the last shorter)."""
    buf: list[pd.DataFrame] = []
    have = 0
    for frame in frames:
        while len(frame):
            take = min(chunk_rows - have, len(frame))
            buf.append(frame.iloc[:take])
            have += take
            frame = frame.iloc[take:]
            if have == chunk_rows:
                yield (
                    pd.concat(buf, ignore_index=True)
                    if len(buf) > 1
                    else buf[0].reset_index(drop=True)
                )
                buf, have = [], 0
    if buf:
        yield pd.concat(buf, ignore_index=True)


def _check_count(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise SpecError(f"{name} must be an integer >= {minimum}; got {value!r}.")
    return int(value)


def iter_synthetic(
    kind: str, params: dict[str, Any], rows: int | None = None, chunk_rows: int = BLOCK_ROWS
) -> Iterator[pd.DataFrame]:
    """Yield the synthetic source in frames of ``chunk_rows`` rows; ``rows`` overrides
    ``params['rows']``. The data do not depend on ``chunk_rows``."""
    p = _resolve(kind, {**params, **({} if rows is None else {"rows": rows})})
    chunk_rows = _check_count("chunk_rows", chunk_rows)
    g, state, total = _global(kind, p), {}, p["rows"]
    blocks = (_block(kind, p, g, total, b, state) for b in range(-(-total // BLOCK_ROWS)))
    return _rechunk(blocks, chunk_rows)


def synthetic_frame(
    source_or_kind: str, params: dict[str, Any] | None = None, rows: int | None = None
) -> pd.DataFrame:
    """The whole synthetic source as one DataFrame (for sizes that fit in memory)."""
    if source_or_kind.strip().startswith("synthetic:"):
        kind, parsed = _split_synthetic(source_or_kind)
        params = {**parsed, **(params or {})}
    else:
        kind = source_or_kind.strip()
    chunks = list(iter_synthetic(kind, params or {}, rows=rows, chunk_rows=1 << 20))
    return pd.concat(chunks, ignore_index=True) if len(chunks) > 1 else chunks[0]


def reads_row_ranges(source: str) -> bool:
    """Whether :func:`read_rows` generates only the blocks a row range needs (synthetic sources
    whose blocks are independent: every kind but ``timeseries``)."""
    if not source.strip().startswith("synthetic:"):
        return False
    return _split_synthetic(source)[0] != "timeseries"


def read_rows(source: str, lo: int, hi: int) -> pd.DataFrame:
    """Rows ``[lo, hi)`` of a ``synthetic:`` or ``builtin:`` source, the same rows as the whole
    source holds there; blocks outside the range are not generated where the kind allows it."""
    if reads_row_ranges(source):
        kind, params = parse_synthetic(source)
        g, total = _global(kind, params), params["rows"]
        hi = min(hi, total)
        if hi <= lo:
            return _block(kind, params, g, total, 0, {}).iloc[:0]
        first, last = lo // BLOCK_ROWS, (hi - 1) // BLOCK_ROWS
        frames = [_block(kind, params, g, total, b, {}) for b in range(first, last + 1)]
        frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
        start = lo - first * BLOCK_ROWS
        return frame.iloc[start : start + hi - lo].reset_index(drop=True)
    whole = (
        synthetic_frame(source) if source.strip().startswith("synthetic:") else load_builtin(source)
    )
    return whole.iloc[lo:hi].reset_index(drop=True)


def _iter_builtin(name: str, rows: int | None, chunk_rows: int) -> Iterator[pd.DataFrame]:
    frame = load_builtin(name)
    total = len(frame) if rows is None else rows
    for lo in range(0, total, chunk_rows):
        idx = np.arange(lo, min(lo + chunk_rows, total)) % len(frame)
        yield frame.take(idx).reset_index(drop=True)


def iter_source(
    source: str, rows: int | None = None, chunk_rows: int = BLOCK_ROWS
) -> Iterator[pd.DataFrame]:
    """Chunks of a ``synthetic:`` or ``builtin:`` source; a builtin cycles to fill ``rows``."""
    if source.strip().startswith("synthetic:"):
        kind, params = _split_synthetic(source)
        return iter_synthetic(kind, params, rows=rows, chunk_rows=chunk_rows)
    if source.strip().startswith("builtin:"):
        return _iter_builtin(source, rows, _check_count("chunk_rows", chunk_rows))
    raise SpecError(
        f"data.source must start with 'synthetic:' or 'builtin:' to be generated; got {source!r}."
    )


def generate_dataset(
    source: str,
    output: str | Path,
    rows: int | None = None,
    files: int = 1,
    *,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write ``rows`` rows of ``source`` as ``files`` parquet files ``part-00000.parquet``...

    Streams block by block (memory bounded by one block), each file written through the one
    atomic writer (:func:`distml.runtime.artifacts.atomic_file`: a temp name, then renamed).
    Existing ``part-*.parquet`` files in ``output`` are an error unless ``overwrite``. Returns ``{"files": [paths], "rows": N, "bytes": B}``.
    """
    if rows is None:
        if source.strip().startswith("synthetic:"):
            rows = parse_synthetic(source)[1]["rows"]
        else:
            rows = len(load_builtin(source))
    rows = _check_count("rows", rows)
    files = _check_count("files", files)
    if files > rows:
        raise SpecError(f"files must be <= rows ({rows}); got {files}.")
    chunks = iter_source(source, rows)  # validates the source before touching the disk
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    stale = sorted(out.glob("part-*.parquet"))
    if stale and not overwrite:
        raise DataError(
            f"output {str(out)!r} already holds {len(stale)} part-*.parquet files; "
            f"choose an empty directory or pass overwrite=True."
        )
    for path in stale:
        path.unlink()
    bounds = [k * rows // files for k in range(files + 1)]
    paths = [out / f"part-{k:05d}.parquet" for k in range(files)]
    schema: pa.Schema | None = None
    writer: pq.ParquetWriter | None = None
    dictionary: list[str] = []
    k, written = -1, 0
    with contextlib.ExitStack() as stack:  # one atomic_file per part, closed in order
        for chunk in chunks:
            table = pa.Table.from_pandas(chunk, schema=schema, preserve_index=False)
            if schema is None:  # dictionary-encoding random floats is slow and grows the file
                schema = table.schema
                dictionary = [f.name for f in schema if not pa.types.is_floating(f.type)]
            lo = 0
            while lo < table.num_rows:
                if writer is None or written == bounds[k + 1]:
                    if writer is not None:
                        writer.close()
                        stack.close()  # renames part k onto its name
                    k += 1
                    tmp = stack.enter_context(atomic_file(paths[k]))
                    writer = stack.enter_context(
                        pq.ParquetWriter(tmp, schema, use_dictionary=dictionary)
                    )
                take = min(table.num_rows - lo, bounds[k + 1] - written)
                writer.write_table(table.slice(lo, take))
                lo += take
                written += take
    names = [str(p) for p in paths]
    return {"files": names, "rows": written, "bytes": sum(os.path.getsize(p) for p in names)}
