"""Kind ``torch`` without a cluster: the spec and its error messages, the missing-torch hint,
input scaling, the network built from the spec, safe checkpoint loading, and the right-sizing
decision shared with multi-worker xgboost (DESIGN.md §5)."""

from __future__ import annotations

import copy
import importlib.util
import pickle

import numpy as np
import pandas as pd
import pytest

from distml.errors import MissingDependency, SpecError
from distml.jobs import KINDS, kind_module
from distml.spec import load_spec

TORCH = {
    "name": "digits-mlp",
    "kind": "torch",
    "data": {
        "source": "builtin:digits",
        "target": "target",
        "split": {"valid": 0.1, "test": 0.2, "stratify": True},
    },
    "model": {
        "architecture": "mlp",
        "hidden": [128, 64],
        "dropout": 0.1,
        "task": "classification",
        "epochs": 30,
        "batch_size": 64,
        "optimizer": "adam",
        "lr": 0.001,
        "early_stopping": {"patience": 5},
    },
    "resources": {"num_workers": 2},
}


def error(overrides: dict, base: dict = TORCH) -> str:
    with pytest.raises(SpecError) as info:
        load_spec(copy.deepcopy(base), overrides)
    return str(info.value)


def test_the_example_spec_loads_with_its_defaults():
    s = load_spec(copy.deepcopy(TORCH))
    assert "torch" in KINDS and s.kind == "torch"
    m = s.model
    assert (m.activation, m.batch_norm, m.loss, m.weight_decay, m.lr_schedule) == (
        "relu",
        False,
        None,
        0.0,
        None,
    )
    assert m.early_stopping.patience == 5 and m.early_stopping.metric == "loss"
    assert s.resources.num_workers == 2


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            {"model.optimizer": "rmsprop"},
            "model.optimizer must be 'sgd', 'adam' or 'adamw'; got 'rmsprop'",
        ),
        ({"model.lr": 0}, "model.lr must be > 0; got 0"),
        ({"model.dropout": 1.0}, "model.dropout must be < 1; got 1.0"),
        ({"model.hidden": [64, 0]}, "model.hidden must list widths in [1, 1000000]; got 0"),
        ({"model.epochs": 0}, "model.epochs must be >= 1; got 0"),
        ({"model.batch_size": 1}, "model.batch_size must be at least resources.num_workers"),
        ({"model.loss": "bce"}, "model.loss bce and model.task classification conflict"),
        ({"model.module": "not a path"}, "model.module"),
        ({"model.module_args": {"width": 3}}, "model.module_args needs model.module"),
        (
            {"model.early_stopping.metric": "rmse"},
            "model.early_stopping.metric rmse is not computed for task classification",
        ),
        ({"data.split.valid": 0}, "model.early_stopping needs a validation split"),
        (
            {"data.split": {"cv": 3}, "model.early_stopping": None},
            "data.split.cv and resources.num_workers conflict",
        ),
        (
            {"model.lr_schedule": {"type": "step", "gamma": 2}},
            "model.lr_schedule.gamma must be <= 1",
        ),
        ({"model.hiden": [3]}, "model.hiden"),
    ],
)
def test_validation_errors_name_the_field(overrides, message):
    assert message in error(overrides)


def test_unknown_key_gets_a_did_you_mean():
    text = error({"model.hiden": [3]})
    assert "hidden" in text


def test_a_missing_torch_is_a_clear_error_with_the_install_hint(monkeypatch):
    module = kind_module("torch")
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a)
    )
    job = module.Job(load_spec(copy.deepcopy(TORCH)))
    with pytest.raises(MissingDependency) as info:
        job.check_data()  # before any cluster work (distml validate / run)
    assert 'pip install "distml[torch]"' in str(info.value)
    assert info.value.exit_code == 2


def test_inputs_are_scaled_with_the_train_rows_only():
    from distml.jobs.torch.model import Inputs

    X = pd.DataFrame({"a": [0.0, 2.0, 100.0, np.nan], "c": ["x", "y", "x", "z"]})
    inputs = Inputs.fit(X.iloc[:2], {"c": ["x", "y"]}, np.array([1.0, 3.0]), regression=True)
    assert inputs.numeric["a"] == (1.0, 1.0) and inputs.y_scale == (2.0, 1.0)
    D = inputs.design(X)
    # a: (v - 1) / 1; NaN → the mean (0); c one-hot over the train levels, unseen 'z' all zero
    np.testing.assert_allclose(D, [[-1, 1, 0], [1, 0, 1], [99, 1, 0], [0, 0, 0]])
    assert D.dtype == np.float32
    again = Inputs.from_dict(inputs.to_dict())
    np.testing.assert_array_equal(again.design(X), D)


def _per_column_inputs(X, categories, standardize):
    """The plain per-column computation (pandas, one column at a time): what Inputs computes
    with one matrix for the numeric columns."""
    numeric = {}
    for c in X.columns:
        if c in categories:
            continue
        v = pd.to_numeric(X[c], errors="coerce").to_numpy(dtype=np.float64)
        seen = np.isfinite(v).any()
        mu, sd = (float(np.nanmean(v)), float(np.nanstd(v))) if seen else (0.0, 1.0)
        numeric[c] = (mu, sd if sd > 0 else 1.0) if standardize else (0.0, 1.0)
    return numeric


def _per_column_design(numeric, categories, X):
    parts = []
    for c in X.columns:
        if c in numeric:
            mu, sd = numeric[c]
            v = (pd.to_numeric(X[c], errors="coerce").to_numpy(dtype=np.float64) - mu) / sd
            parts.append(np.nan_to_num(v, nan=0.0)[:, None])
        else:
            levels = categories[c]
            values = X[c].astype("string").astype(object)
            codes = pd.Categorical(values.where(values.isin(levels)), categories=levels).codes
            onehot = np.zeros((len(X), len(levels)))
            ok = codes >= 0
            onehot[np.nonzero(ok)[0], codes[ok]] = 1.0
            parts.append(onehot)
    with np.errstate(over="ignore"):  # the inf value overflows float32, as in distml
        return np.hstack(parts).astype(np.float32)


@pytest.mark.parametrize("standardize", [True, False])
def test_inputs_equal_the_per_column_computation_bit_for_bit(standardize):
    """Numeric columns are scaled as one matrix (fast on wide data); every figure equals the
    plain per-column pandas computation exactly: floats with NaN and inf, ints, bools, an
    all-NaN column, numbers held as strings, nullable ints, and a categorical in between."""
    from distml.jobs.torch.model import Inputs

    rng = np.random.default_rng(3)
    n = 5000
    X = pd.DataFrame({f"f{j}": rng.normal(j, 1 + j, n) * 10 ** (j % 5) for j in range(40)})
    X.loc[rng.integers(0, n, 50), "f3"] = np.nan
    X.loc[7, "f4"] = np.inf
    X["ints"] = rng.integers(-5, 1000, n)
    X["flag"] = rng.random(n) < 0.3
    X["empty"] = np.nan
    X.insert(5, "cat", rng.choice(["a", "b", "c", None], n))
    X["text_num"] = pd.Series(rng.integers(0, 9, n)).astype(str).where(rng.random(n) < 0.9)
    X["nullable"] = pd.array(rng.integers(0, 50, n), dtype="Int64")
    X.loc[11, "nullable"] = pd.NA
    categories = {"cat": ["a", "b"]}
    rows = np.sort(rng.permutation(n)[: n * 4 // 5])
    inputs = Inputs.fit(X, categories, None, standardize, rows=rows)
    want = _per_column_inputs(X.iloc[rows], categories, standardize)
    assert inputs.numeric == want and list(inputs.numeric) == list(want)
    for sel in (None, rows, np.arange(n)[::7]):
        frame = X if sel is None else X.iloc[sel]
        expect = _per_column_design(want, categories, frame)
        got = inputs.design(X, sel)
        assert got.dtype == np.float32 and got.shape == expect.shape
        np.testing.assert_array_equal(got, expect)
        np.testing.assert_array_equal(inputs.design(frame), expect)


def test_the_mlp_follows_the_spec():
    import torch  # the `torch` extra (`make test` installs it)

    from distml.jobs.torch.model import build_net

    m = load_spec(
        copy.deepcopy(TORCH), {"model.batch_norm": True, "model.activation": "gelu"}
    ).model
    net = build_net(m, 64, 10)
    kinds = [type(layer).__name__ for layer in net]
    assert kinds == [
        "Linear",
        "BatchNorm1d",
        "GELU",
        "Dropout",
        "Linear",
        "BatchNorm1d",
        "GELU",
        "Dropout",
        "Linear",
    ]
    assert net[0].in_features == 64 and net[-1].out_features == 10
    again = build_net(m, 64, 10)  # seeded initialisation
    assert torch.equal(net[0].weight, again[0].weight)


def test_a_user_module_is_built_from_its_path():
    from distml.jobs.torch.model import build_net

    m = load_spec(
        copy.deepcopy(TORCH),
        {"model.module": "torch.nn:Linear", "model.module_args": {"bias": False}},
    ).model
    net = build_net(m, 5, 2)
    assert type(net).__name__ == "Linear" and net.in_features == 5 and net.bias is None


def test_checkpoints_load_without_pickle():
    import torch  # the `torch` extra (`make test` installs it)

    from distml.jobs.torch.model import load_state, save_state

    state = {"model": {"w": torch.ones(2)}, "epoch": 3, "history": [[0, "train", "loss", 1.0]]}
    back = load_state(save_state(state))
    assert back["epoch"] == 3 and torch.equal(back["model"]["w"], torch.ones(2))
    with pytest.raises(pickle.UnpicklingError):  # an arbitrary object is refused (weights_only)
        load_state(save_state({"x": np.random.default_rng(0)}))


def _info(rows: int, features: int):
    from distml.runtime.data import DataInfo, SourceInfo

    return DataInfo(
        SourceInfo("x.parquet", "files", "parquet", rows=rows),
        None,
        "y",
        [f"f{i}" for i in range(features)],
        [],
    )


@pytest.mark.parametrize(
    "resources, rows, path, workers, reason",
    [
        ({}, 1000, "single_task", 1, "resources.num_workers is 1 and the data fit one worker"),
        ({"num_workers": 3}, 1000, "train_worker_group", 3, "resources.num_workers is 3"),
        ({"gpus_per_worker": 1}, 1000, "train_worker_group", 1, "resources.gpus_per_worker is 1"),
        ({}, 10_000_000, "train_worker_group", 4, "exceed one worker's budget"),
    ],
)
def test_right_sizing(resources, rows, path, workers, reason):
    from distml.runtime.workers import choose

    spec = load_spec(
        {
            "name": "x",
            "kind": "xgboost",
            "data": {"source": "builtin:iris", "target": "target"},
            "resources": resources,
        }
    )
    cluster = {"CPU": 4.0, "memory": 8 * 2**30}  # budget: half of 2 GiB per CPU
    choice = choose(spec, _info(rows, 19), cluster)
    assert (choice.path, choice.workers) == (path, workers)
    assert reason in choice.reason and choice.record()["path"] == path


def test_right_sizing_stays_in_one_task_when_only_one_worker_fits():
    from distml.runtime.workers import choose

    spec = load_spec(
        {"name": "x", "kind": "xgboost", "data": {"source": "builtin:iris", "target": "target"}}
    )
    choice = choose(spec, _info(10_000_000, 19), {"CPU": 1.0, "memory": 2**30})
    assert choice.path == "single_task" and "room for one worker only" in choice.reason


def test_xgboost_takes_several_workers_but_not_with_cv():
    base = {"name": "x", "kind": "xgboost", "data": {"source": "builtin:iris", "target": "target"}}
    assert load_spec(copy.deepcopy(base), {"resources.num_workers": 2}).resources.num_workers == 2
    text = error({"resources.num_workers": 2, "data.split": {"cv": 3}}, base)
    assert "data.split.cv and resources.num_workers conflict" in text


def test_rank_zeros_output_reaches_the_driver_whole(tmp_path):
    """Rank 0 of a torch worker group evaluates and hands its JobOutput over in the final
    checkpoint as JSON, parquet and bytes (no pickle): what the driver loads equals what
    rank 0 made — metrics (NaN too), tables with their dtypes, model files, texts, info."""
    from distml.jobs.base import JobOutput
    from distml.jobs.torch.distributed import load_output, save_output

    out = JobOutput(
        metrics={
            "valid": {"accuracy": 0.5, "roc_auc": float("nan"), "rmse": np.float32(0.25)},
            "epochs_trained": np.int64(3),
        },
        tables={
            "predictions": pd.DataFrame(
                {
                    "split": ["valid", "valid"],
                    "row": np.array([3, 9], dtype=np.int64),
                    "actual": ["a", "b"],
                    "proba_a": np.array([0.25, 0.75], dtype=np.float32),
                }
            ),
            "learning_curve": pd.DataFrame(
                {
                    "iteration": [0, 1],
                    "split": ["train"] * 2,
                    "metric": ["loss"] * 2,
                    "value": [1.0, 0.5],
                }
            ),
        },
        files={"model/model.pt": b"\x00\x01weights", "model/schema.json": b"{}"},
        texts={"model/summary.txt": "two layers"},
        info={"task": "classification", "rows": {"train": 6, "valid": 2}},
    )
    save_output(out, str(tmp_path / "output"))
    back = load_output(str(tmp_path / "output"))
    assert back.files == out.files and back.texts == out.texts and back.info == out.info
    assert back.metrics["valid"]["accuracy"] == 0.5 and np.isnan(back.metrics["valid"]["roc_auc"])
    assert back.metrics["epochs_trained"] == 3 and back.metrics["valid"]["rmse"] == 0.25
    assert list(back.tables) == list(out.tables)
    for name, frame in out.tables.items():
        pd.testing.assert_frame_equal(back.tables[name], frame)


def test_a_failed_evaluation_on_rank_zero_is_recorded_not_raised(tmp_path):
    """A raise in rank 0's evaluation would fail the group and train it again; instead the
    error goes to the driver (which reports "torch evaluation failed: ..."), and the job
    keeps no pretrained weights."""
    from distml.jobs.torch.distributed import _evaluate

    class Broken:
        _pretrained = None

        def fit_and_evaluate(self, info, prep):
            assert self._pretrained == {"weights": b"w"}
            raise ValueError("no metric for this task")

    job = Broken()
    got = _evaluate(job, {"info": None}, None, {"weights": b"w"}, str(tmp_path))
    assert got["evaluate_error"] == "ValueError: no metric for this task"
    assert got["evaluate_s"] >= 0 and job._pretrained is None
