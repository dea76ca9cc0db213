"""B3 baseline: plain single-process ``xgboost.train(nthread=2)`` on the same parquet files.

Run as its own process (``python benchmarks/b3_plain_train.py --data DIR``): read the parquet
files with pyarrow, split rows exactly as distml does (stratified, valid 0.2, seed 42, via
sklearn's ``train_test_split`` — the same call distml's ``split_indices`` makes), build the
DMatrix, boost 100 rounds of ``hist`` with ``nthread=2`` evaluating AUC on valid every round, and
report the valid AUC. Prints one JSON object with in-process timings (``train_s`` is
``xgboost.train`` alone: the figure distml's inner-train time is compared with).
"""

import time

T0 = time.perf_counter()

import argparse  # noqa: E402
import glob  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402

import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import xgboost as xgb  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

T_IMPORT = time.perf_counter()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--params", required=True, help="booster params as JSON")
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--nthread", type=int, default=2)
    args = ap.parse_args()
    t0 = time.perf_counter()
    files = sorted(glob.glob(os.path.join(args.data, "*.parquet")))
    frame = pq.read_table(files).to_pandas()
    y = frame.pop("target").to_numpy(np.float64)
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    train, valid = train_test_split(idx, test_size=0.2, random_state=42, stratify=y)
    train, valid = np.sort(train), np.sort(valid)
    t_read = time.perf_counter() - t0
    t1 = time.perf_counter()
    dtrain = xgb.DMatrix(frame.iloc[train], label=y[train], nthread=args.nthread)
    dvalid = xgb.DMatrix(frame.iloc[valid], label=y[valid], nthread=args.nthread)
    t_dm = time.perf_counter() - t1
    params = dict(json.loads(args.params), nthread=args.nthread, seed=0)
    t2 = time.perf_counter()
    bst = xgb.train(
        params,
        dtrain,
        args.rounds,
        evals=[(dtrain, "train"), (dvalid, "valid")],
        verbose_eval=False,
    )
    t_train = time.perf_counter() - t2
    auc = float(roc_auc_score(y[valid], bst.predict(dvalid)))
    print(
        json.dumps(
            {
                "valid_roc_auc": auc,
                "rows": int(len(y)),
                "timings": {
                    "import_s": T_IMPORT - T0,
                    "read_split_s": t_read,
                    "dmatrix_s": t_dm,
                    "train_s": t_train,
                    "in_process_s": time.perf_counter() - T0,
                },
            }
        )
    )


if __name__ == "__main__":
    main()
