"""B7 baseline: the plain script a user would write instead of ``distml run jobs/quickstart.yaml``.

Run as its own process (``python benchmarks/b7_plain_fit.py --out DIR [--source PATH]``), so the
interpreter start and every import are part of the timed wall clock, as for ``distml run``. It
does the same work as distml's xgboost kind: load the data, the same two-step stratified split
(``distml.runtime.data.split_indices``: test first, then valid from the rest, seed 42),
``xgboost.train`` with the spec's params plus what distml adds (``nthread`` =
``resources.cpus_per_worker`` = 1, ``seed`` 0), early stopping on valid, predictions at the best
iteration, the same metrics, and the model saved as ``.ubj``. It deliberately imports nothing
from distml. Prints one JSON object (metrics + in-process timings) on stdout.
"""

import time

T0 = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import xgboost as xgb  # noqa: E402
from sklearn import metrics as skm  # noqa: E402
from sklearn.datasets import load_breast_cancer  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

T_IMPORT = time.perf_counter()

PARAMS = {
    "objective": "binary:logistic",
    "eval_metric": ["auc", "logloss"],
    "max_depth": 4,
    "eta": 0.1,
}
ROUNDS, EARLY_STOP, SEED, VALID, TEST = 200, 20, 42, 0.2, 0.2


def split_metrics(y, proba):
    pred = (proba >= 0.5).astype(np.int64)
    p2 = np.column_stack([1 - proba, proba])
    return {
        "accuracy": float(skm.accuracy_score(y, pred)),
        "precision": float(skm.precision_score(y, pred, zero_division=0)),
        "recall": float(skm.recall_score(y, pred, zero_division=0)),
        "f1": float(skm.f1_score(y, pred, zero_division=0)),
        "roc_auc": float(skm.roc_auc_score(y, proba)),
        "logloss": float(skm.log_loss(y, np.clip(p2, 1e-15, 1), labels=[0, 1])),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--source",
        default="builtin:breast_cancer",
        help="builtin:breast_cancer or a parquet file with a 'target' column",
    )
    ap.add_argument("--out", required=True)
    ap.add_argument("--nthread", type=int, default=1)
    args = ap.parse_args()

    t = time.perf_counter()
    if args.source == "builtin:breast_cancer":
        X, y = load_breast_cancer(return_X_y=True, as_frame=True)
    else:
        frame = pd.read_parquet(args.source)
        X, y = frame.drop(columns="target"), frame["target"]
    y = y.to_numpy(dtype=np.int64)
    idx = np.arange(len(y))
    rest, test = train_test_split(idx, test_size=TEST, random_state=SEED, stratify=y)
    train, valid = train_test_split(
        rest, test_size=VALID / (1 - TEST), random_state=SEED, stratify=y[rest]
    )
    train, valid, test = np.sort(train), np.sort(valid), np.sort(test)
    t_read = time.perf_counter() - t

    t = time.perf_counter()
    params = {**PARAMS, "nthread": args.nthread, "seed": 0}
    dtrain = xgb.DMatrix(X.iloc[train], label=y[train], nthread=args.nthread)
    dvalid = xgb.DMatrix(X.iloc[valid], label=y[valid], nthread=args.nthread)
    booster = xgb.train(
        params,
        dtrain,
        num_boost_round=ROUNDS,
        evals=[(dtrain, "train"), (dvalid, "valid")],
        early_stopping_rounds=EARLY_STOP,
        verbose_eval=False,
    )
    t_fit = time.perf_counter() - t

    t = time.perf_counter()
    rng = (0, booster.best_iteration + 1)
    metrics = {
        name: split_metrics(
            y[rows], booster.predict(xgb.DMatrix(X.iloc[rows]), iteration_range=rng)
        )
        for name, rows in (("train", train), ("valid", valid), ("test", test))
    }
    metrics.update(
        num_boosted_rounds=int(booster.num_boosted_rounds()),
        best_iteration=int(booster.best_iteration),
        n_rows=int(len(y)),
        n_features=int(X.shape[1]),
    )
    os.makedirs(args.out, exist_ok=True)
    booster.save_model(os.path.join(args.out, "model.ubj"))
    t_eval = time.perf_counter() - t

    print(
        json.dumps(
            {
                "metrics": metrics,
                "timings": {
                    "import_s": round(T_IMPORT - T0, 4),
                    "read_split_s": round(t_read, 4),
                    "fit_s": round(t_fit, 4),
                    "eval_save_s": round(t_eval, 4),
                    "in_process_s": round(time.perf_counter() - T0, 4),
                },
            }
        )
    )


if __name__ == "__main__":
    main()
