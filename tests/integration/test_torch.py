"""Kind ``torch`` end to end on the shared 2-CPU cluster: the one-worker path equals a plain
torch loop, beats the majority class by a wide margin and scores through ``distml predict``; DDP
on 2 workers trains as well as 1 worker with the same global batch and survives a worker death
(RELIABILITY.md T3/T10); a search with ASHA stops trials every epoch. One worker-group run
(plus its restart)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch  # the `torch` extra, which `make test` installs: missing, this fails
from ray_checks import wait_resources_free as _wait_resources_free

import distml
from distml.runtime.data import split_indices

pytestmark = pytest.mark.usefixtures("ray_cluster")


def _digits() -> pd.DataFrame:
    from distml.runtime.datasets import load_builtin

    return load_builtin("digits")


def _spec(tmp_path, **model) -> dict:
    return {
        "name": "digits",
        "kind": "torch",
        "data": {
            "source": "builtin:digits",
            "target": "target",
            "split": {"valid": 0.1, "test": 0.2, "stratify": True, "seed": 3},
        },
        "model": {
            "hidden": [32],
            "epochs": 4,
            "batch_size": 32,
            "lr": 0.003,
            "task": "classification",
            "seed": 11,
            **model,
        },
        "output": {"dir": str(tmp_path)},
    }


def _plain_loop(spec: dict, parts: dict, X: np.ndarray, y: np.ndarray):
    """What a user writes without distml: standardise on train rows, seeded init and shuffle."""
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    m = spec["model"]
    tr = parts["train"]
    mu, sd = X[tr].mean(axis=0), X[tr].std(axis=0)
    sd[sd == 0] = 1.0
    Z = ((X - mu) / sd).astype(np.float32)
    torch.set_num_threads(1)
    torch.manual_seed(m["seed"])
    net = nn.Sequential(
        nn.Linear(X.shape[1], m["hidden"][0]), nn.ReLU(), nn.Linear(m["hidden"][0], 10)
    )
    gen = torch.Generator().manual_seed(m["seed"])
    loader = DataLoader(
        TensorDataset(torch.from_numpy(Z[tr]), torch.from_numpy(y[tr])),
        batch_size=m["batch_size"],
        shuffle=True,
        generator=gen,
    )
    opt = torch.optim.Adam(net.parameters(), lr=m["lr"])
    lossf = nn.CrossEntropyLoss()
    for _ in range(m["epochs"]):
        net.train()
        for xb, yb in loader:
            opt.zero_grad()
            lossf(net(xb), yb).backward()
            opt.step()
    return net.eval(), Z


def test_one_worker_equals_a_plain_torch_loop_and_predicts(tmp_path):
    spec = _spec(tmp_path)
    r = distml.run(spec)
    assert r.status == "succeeded" and r.manifest["execution"]["path"] == "single_task"
    df = _digits()
    X = df.drop(columns="target").to_numpy(np.float64)
    y = df["target"].to_numpy(np.int64)
    parts = split_indices(y, distml.load_spec(spec).data.split_spec, classification=True)
    net, Z = _plain_loop(spec, parts, X, y)

    # Same data, same seed, same steps: the same weights (to float rounding).
    saved = torch.load(r.run_dir / "model" / "model.pt", weights_only=True)
    for (k, v), (k2, v2) in zip(saved.items(), net.state_dict().items()):
        assert k == k2 and torch.allclose(v, v2, atol=1e-5), k
    with torch.no_grad():
        plain_pred = net(torch.from_numpy(Z[parts["test"]])).argmax(dim=1).numpy()
    acc = float((plain_pred == y[parts["test"]]).mean())
    assert r.metrics["test"]["accuracy"] == pytest.approx(acc, abs=1e-12)

    # A wide margin over the trivial baseline (majority class of the train rows).
    majority = np.bincount(y[parts["train"]]).argmax()
    baseline = float((y[parts["test"]] == majority).mean())
    assert baseline < 0.15 and r.metrics["test"]["accuracy"] > baseline + 0.6

    curve = r.tables["learning_curve"]
    assert list(curve.columns) == ["iteration", "split", "metric", "value"]
    assert sorted(curve["iteration"].unique()) == list(range(4))
    assert set(zip(curve.split, curve.metric)) == {
        ("train", "loss"),
        ("valid", "loss"),
        ("valid", "logloss"),
        ("valid", "accuracy"),
    }
    config = json.loads((r.run_dir / "model" / "config.json").read_text())
    assert config["in_features"] == 64 and config["out_features"] == 10
    # input scaling is the train rows' (saved with the model)
    assert config["inputs"]["numeric"]["pixel_2_3"][0] == pytest.approx(
        float(df["pixel_2_3"].to_numpy()[parts["train"]].mean())
    )

    # distml predict scores with the saved model and scaling
    data = tmp_path / "digits.parquet"
    df.to_parquet(data)
    p = distml.predict(r.run_dir, str(data), tmp_path / "scores")
    scores = pd.read_parquet(tmp_path / "scores")
    assert p.rows == len(df) and {f"proba_{c}" for c in range(10)} <= set(scores.columns)
    test_acc = float((scores["prediction"].to_numpy()[parts["test"]] == y[parts["test"]]).mean())
    assert test_acc == pytest.approx(r.metrics["test"]["accuracy"], abs=1e-12)


def test_ddp_two_workers_match_one_worker_and_survive_a_worker_death(
    tmp_path, monkeypatch, ray_cluster
):
    epochs = 8
    one = distml.run(_spec(tmp_path / "one", epochs=epochs, batch_size=64))
    marker = tmp_path / "crashed"
    monkeypatch.setenv("DISTML_TRAIN_FAULT", f"{marker}:4")
    spec = _spec(tmp_path / "two", epochs=epochs, batch_size=64)  # the same global batch
    spec["resources"] = {"num_workers": 2, "max_failures": 1}
    two = distml.run(spec)
    assert two.status == "succeeded"
    _wait_resources_free(ray_cluster)

    ex = two.manifest["execution"]
    assert ex["path"] == "train_worker_group" and ex["backend"] == "gloo"
    assert ex["per_worker_batch_size"] == 32
    # T3: rank 1 died at epoch 4 on the first attempt; the group resumed from a checkpoint > 0
    assert json.loads(marker.read_text())["iteration"] == 4
    assert ex["attempts"] == 2 and 0 < ex["resumed_from"] < 4
    assert two.metrics["epochs_trained"] == epochs
    curve = two.tables["learning_curve"]
    assert sorted(curve["iteration"].unique()) == list(range(epochs))  # no epoch lost or twice
    # the same quality as one worker with the same global batch
    for split in ("valid", "test"):
        assert two.metrics[split]["accuracy"] > 0.9
        assert abs(two.metrics[split]["accuracy"] - one.metrics[split]["accuracy"]) < 0.04
    assert not (two.run_dir / "checkpoints" / "train").exists()


def test_search_with_asha_reports_every_epoch(tmp_path):
    spec = _spec(tmp_path, epochs=6)
    spec["tune"] = {
        "metric": "valid.logloss",
        "mode": "min",
        "num_samples": 4,
        "seed": 0,
        "scheduler": "asha",
        "grace_period": 2,
        "space": {"model.lr": {"loguniform": [1e-4, 3e-2]}},
    }
    r = distml.run(spec)
    assert r.status == "succeeded"
    trials = r.tables["trials"]
    assert len(trials) == 4 and (trials["status"] != "failed").all()
    assert trials["iterations"].max() == 6  # trials report every epoch
    assert r.metrics["valid"]["accuracy"] > 0.8
    assert (r.run_dir / "model" / "model.pt").is_file()
