"""The ladder's Ray tasks and what they run: the data read once with the folds drawn, one
candidate fitted and scored on one fold (with its nested search when it has ``tune``), the
winner's search on every training row. Plain functions of plain data, so they also run (and
are tested) without a cluster."""

from __future__ import annotations

import time
from typing import Any

from distml.errors import error_text
from distml.runtime.data import read_frame
from distml.runtime.splits import class_order


def fold_plan(y, split, task: str):
    """(train, test) row positions of every fold: the rows left after ``data.split.test``,
    folded as ``data.split.cv`` folds them for a single kind (the same seed, stratification
    and class codes), so every candidate sees the same folds."""
    import numpy as np
    import pandas as pd

    from distml.runtime.data import cv_indices, split_indices

    if task == "classification":
        classes = class_order(pd.unique(y).tolist())
        codes = y.map({c: i for i, c in enumerate(classes)}).to_numpy(dtype=np.int64)
    else:
        codes = y.to_numpy(dtype=np.float64)
    rows = split_indices(codes, split, classification=task == "classification")["train"]
    stratify = split.stratify if split.stratify is not None else task == "classification"
    return [
        (rows[tr], rows[te])
        for tr, te in cv_indices(codes[rows], split.cv, split.seed, stratify=stratify)
    ]


def read_task(source: str, columns: list[str], target: str, split, task: str):
    """Read the columns every candidate uses, once; return (frame, folds)."""
    frame = read_frame(source, columns)
    return frame, fold_plan(frame[target], split, task)


def fold_metrics(out: dict) -> dict:
    """Every metric of one fold's predictions (:mod:`distml.runtime.metrics`)."""
    import numpy as np

    from distml.runtime import metrics as M

    if out["task"] == "classification":
        return M.classification_metrics(
            np.asarray(out["y_true"]), np.asarray(out["pred"]), out["proba"], len(out["classes"])
        )
    return M.regression_metrics(
        np.asarray(out["y_true"], dtype=float), np.asarray(out["pred"], dtype=float)
    )


def fit_fold(job: Any, frame, columns: list[str], train, test, nested: dict | None = None) -> dict:
    """Fit one candidate on one fold and score it; a fit error is returned, not raised. With
    ``nested`` (:meth:`Rung.nested`) the candidate's search runs on the fold's training rows
    first (:mod:`distml.jobs.ladder.nested`) and the best configuration is fitted."""
    t0, c0 = time.perf_counter(), time.process_time()
    config = None
    try:
        if nested is not None:
            from distml.jobs import kind_module
            from distml.jobs.ladder.nested import search
            from distml.spec.load import apply_overrides, load_spec

            config, _ = search(
                nested["kind"],
                nested["base"],
                nested["tune"],
                frame.iloc[train],
                columns,
                nested["target"],
                nested["task"],
            )
            job = kind_module(nested["kind"]).Job(
                load_spec(apply_overrides(nested["base"], config))
            )
        out = job.fit_predict_fold(
            frame.iloc[train][columns].reset_index(drop=True),
            frame.iloc[test][columns].reset_index(drop=True),
        )
        metrics, error = fold_metrics(out), None
    except Exception as e:  # one rung's failure never stops the ladder
        metrics, error = {}, error_text(e)
    return {
        "metrics": metrics,
        "error": error,
        "fit_s": time.perf_counter() - t0,
        "cpu_s": time.process_time() - c0,
        "n_train": int(len(train)),
        "n_test": int(len(test)),
        "config": config,
    }


def fold_task(job: Any, frame, columns: list[str], train, test, nested: dict | None = None) -> dict:
    return fit_fold(job, frame, columns, train, test, nested)


def search_task(nested: dict, frame, columns: list[str], rows) -> tuple[dict, list[dict]]:
    """The winner's search on every training row (before its refit)."""
    from distml.jobs.ladder.nested import search

    return search(
        nested["kind"],
        nested["base"],
        nested["tune"],
        frame.iloc[rows],
        columns,
        nested["target"],
        nested["task"],
    )
