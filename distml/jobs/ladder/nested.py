"""A candidate's own ``tune:`` inside each fold of the ladder (nested cross-validation).

The outer folds are the ladder's; inside a fold, the search sees only that fold's training rows:
each configuration is scored by an inner :data:`INNER_FOLDS`-fold cross-validation of those rows
(seeded by ``tune.seed``, stratified for classification), the best one (``tune.metric``,
``tune.mode``) is refitted on the fold's training rows and scored on its test rows. The fold's
test rows never take part in choosing, so the ladder's fold scores stay honest. The winner's
refit runs the same search on every training row.

Configurations are drawn without Ray Tune (they run one after the other inside the fold's task;
the ladder's parallelism is over candidates and folds): ``grid`` values (and ``choice`` values
under ``search: grid``) are crossed, and every other distribution is sampled ``num_samples`` times
per grid point with a seeded numpy generator — Ray Tune's rules for mixing grid and random
(a configuration drawn twice is fitted once).
``search: optuna``, schedulers and the trial-runtime settings have no meaning here and are
refused when the spec loads.
"""

from __future__ import annotations

import itertools
import json
import math
from typing import Any

import numpy as np

from distml.jobs.ladder.stats import CLASSIFICATION_METRICS, REGRESSION_METRICS
from distml.runtime.splits import class_order

INNER_FOLDS = 3
#: TuneSpec fields that only mean something for Ray Tune trials
RUNTIME_FIELDS = (
    "max_concurrent",
    "time_budget_s",
    "grace_period",
    "report_every",
    "checkpoint_every",
)


def check_nested(tune: Any) -> None:
    """The parts of a ``tune`` section a nested search can honour (ValueError otherwise)."""
    if tune.search == "optuna":
        raise ValueError(
            "tune.search optuna is not supported inside a ladder's folds; use random or grid"
        )
    if tune.scheduler != "none":
        raise ValueError(
            f"tune.scheduler {tune.scheduler} is not supported inside a ladder's "
            "folds (each configuration is one fit); use scheduler: none"
        )
    for name in RUNTIME_FIELDS:
        if getattr(tune, name) is not None:
            raise ValueError(
                f"tune.{name} has no meaning inside a ladder's folds (the "
                "configurations run one after the other in the fold's task); "
                "drop it"
            )
    if tune.max_failures:
        raise ValueError(
            "tune.max_failures has no meaning inside a ladder's folds (a "
            "configuration that fails is skipped); drop it"
        )
    name = tune.metric.rsplit(".", 1)[-1]
    valid = CLASSIFICATION_METRICS + REGRESSION_METRICS
    if name not in valid:
        raise ValueError(
            f"tune.metric must name a metric the folds compute ({', '.join(valid)}"
            f"), e.g. cv.roc_auc; got {tune.metric!r}"
        )


def _draw(kind: str, values: list, rng: np.random.Generator) -> Any:
    if kind == "choice" or kind == "grid":
        return values[int(rng.integers(len(values)))]
    if kind == "uniform":
        return float(rng.uniform(values[0], values[1]))
    if kind == "loguniform":
        return float(math.exp(rng.uniform(math.log(values[0]), math.log(values[1]))))
    if kind == "quniform":
        low, high, q = values
        return float(min(high, max(low, round(rng.uniform(low, high) / q) * q)))
    if kind == "randint":
        return int(rng.integers(values[0], values[1] + 1))
    if kind == "lograndint":
        x = math.exp(rng.uniform(math.log(values[0]), math.log(values[1] + 1)))
        return int(min(values[1], max(values[0], math.floor(x))))
    raise ValueError(f"unknown distribution {kind!r}")  # pragma: no cover - TuneSpec admits none


def configurations(tune: Any) -> list[dict[str, Any]]:
    """Every configuration the search tries, as ``{spec path: value}``, in a fixed order.

    >>> from distml.spec.base import TuneSpec
    >>> t = TuneSpec(metric="cv.r2", space={"model.params.alpha": {"grid": [0.1, 1.0]}})
    >>> configurations(t)
    [{'model.params.alpha': 0.1}, {'model.params.alpha': 1.0}]
    """
    entries = {path: next(iter(entry.items())) for path, entry in tune.space.items()}
    crossed = [
        p
        for p, (kind, _) in entries.items()
        if kind == "grid" or (kind == "choice" and tune.search == "grid")
    ]
    rng = np.random.default_rng(tune.seed)
    out = []
    for _ in range(tune.num_samples):
        for combo in itertools.product(*(entries[p][1] for p in crossed)):
            config = dict(zip(crossed, combo))
            for path, (kind, values) in entries.items():
                if path not in config:
                    config[path] = _draw(kind, values, rng)
            out.append({p: config[p] for p in entries})
    seen: set[str] = set()
    unique = []
    for config in out:  # a repeated grid point (no sampled dimension) would refit the same
        key = json.dumps(config, sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            unique.append(config)
    return unique


def inner_folds(y, seed: int, task: str, folds: int = INNER_FOLDS) -> list[tuple]:
    """(train, valid) positions of the inner cross-validation of one fold's training rows."""
    import pandas as pd

    from distml.runtime.data import cv_indices

    if task == "classification":
        classes = class_order(pd.unique(y).tolist())
        codes = y.map({c: i for i, c in enumerate(classes)}).to_numpy(dtype=np.int64)
        return cv_indices(codes, folds, seed, stratify=True)
    return cv_indices(y.to_numpy(dtype=np.float64), folds, seed, stratify=False)


def search(
    kind: str, base: dict, tune: Any, rows, columns: list[str], target: str, task: str
) -> tuple[dict[str, Any], list[dict]]:
    """The best configuration on ``rows`` (a DataFrame: the training rows of one fold) by the
    inner cross-validation, and every configuration's record (config, score, error)."""
    from distml.errors import JobFailed, error_text
    from distml.jobs import kind_module
    from distml.jobs.ladder.tasks import fold_metrics
    from distml.spec.load import apply_overrides, load_spec

    name = tune.metric.rsplit(".", 1)[-1]
    rows = rows.reset_index(drop=True)
    inner = inner_folds(rows[target], tune.seed, task)
    trials = []
    for config in configurations(tune):
        score, error = None, None
        try:
            job = kind_module(kind).Job(load_spec(apply_overrides(base, config)))
            values = []
            for tr, va in inner:
                out = job.fit_predict_fold(
                    rows.iloc[tr][columns].reset_index(drop=True),
                    rows.iloc[va][columns].reset_index(drop=True),
                )
                values.append(fold_metrics(out).get(name))
            if any(v is None for v in values):
                raise ValueError(f"the fit gives no {name}")
            score = float(np.mean(values))
        except Exception as e:  # a configuration that fails is skipped, as a failed trial
            error = error_text(e)
        trials.append({"config": config, "score": score, "error": error})
    ok = [t for t in trials if t["score"] is not None]
    if not ok:
        raise JobFailed(
            f"every configuration of the nested search failed; the first: {trials[0]['error']}"
        )
    pick = max if tune.mode == "max" else min
    return pick(ok, key=lambda t: t["score"])["config"], trials
