"""Kind ``torch`` on 2 workers (DDP over gloo) equals a plain single-process torch loop.

Why the two can agree step for step: distml's worker group gives each of the ``W`` workers a
``DistributedSampler`` share of the train rows (Ray's ``prepare_data_loader``: shuffled with
seed 0 and ``set_epoch(epoch)``, padded to equal shares) and batches of ``batch_size // W``
rows; DDP averages the workers' gradients of their mean losses. With equal per-worker batches
that average is the gradient of the mean loss over the concatenated batch, so a single process
that, at step ``k``, takes worker 0's ``k``-th batch followed by worker 1's ``k``-th batch and
steps the same optimizer from the same seeded initialisation walks the same path. The plain
loop below is written with torch alone (it uses torch's ``DistributedSampler`` only to produce
the same index order; no process group). The one difference left is float32 summation order
(gloo sums two half-batch gradients; the plain loop sums one batch), hence a 1e-5 tolerance on
weights and losses rather than equality.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch  # the `torch` extra, which `make test` installs: missing, this fails
from ray_checks import wait_resources_free as _wait_resources_free

import distml
from distml.runtime.data import split_indices

pytestmark = pytest.mark.usefixtures("ray_cluster")

WORKERS = 2


def _spec(tmp_path) -> dict:
    return {
        "name": "digits-ddp",
        "kind": "torch",
        "data": {
            "source": "builtin:digits",
            "target": "target",
            "split": {"valid": 0.1, "test": 0.2, "stratify": True, "seed": 3},
        },
        "model": {
            "hidden": [32],
            "epochs": 3,
            "batch_size": 64,
            "lr": 0.003,
            "task": "classification",
            "seed": 11,
        },
        "resources": {"num_workers": WORKERS},
        "output": {"dir": str(tmp_path)},
    }


def _plain_loop(m: dict, parts: dict, X: np.ndarray, y: np.ndarray):
    """One process, the same seed, data order and optimizer as the 2-worker run."""
    from torch import nn
    from torch.utils.data import DistributedSampler

    tr, va = parts["train"], parts["valid"]
    mu, sd = X[tr].mean(axis=0), X[tr].std(axis=0)
    sd[sd == 0] = 1.0
    Z = ((X - mu) / sd).astype(np.float32)
    Xt, yt = torch.from_numpy(Z[tr]), torch.from_numpy(y[tr])
    Xv, yv = torch.from_numpy(Z[va]), torch.from_numpy(y[va])
    torch.set_num_threads(1)
    torch.manual_seed(m["seed"])
    net = nn.Sequential(
        nn.Linear(X.shape[1], m["hidden"][0]), nn.ReLU(), nn.Linear(m["hidden"][0], 10)
    )
    opt = torch.optim.Adam(net.parameters(), lr=m["lr"])
    lossf = nn.CrossEntropyLoss()
    per_worker = m["batch_size"] // WORKERS
    curve = []
    for epoch in range(m["epochs"]):
        shares = []
        for rank in range(WORKERS):
            sampler = DistributedSampler(
                range(len(tr)), num_replicas=WORKERS, rank=rank, shuffle=True, seed=0
            )
            sampler.set_epoch(epoch)
            shares.append(list(sampler))
        assert len({len(s) for s in shares}) == 1  # padded to equal shares
        net.train()
        total = count = 0.0
        for lo in range(0, len(shares[0]), per_worker):
            rows = torch.tensor([i for share in shares for i in share[lo : lo + per_worker]])
            opt.zero_grad()
            loss = lossf(net(Xt[rows]), yt[rows])
            loss.backward()
            opt.step()
            total, count = total + float(loss.detach()) * len(rows), count + len(rows)
        net.eval()
        with torch.no_grad():
            valid_loss = float(lossf(net(Xv), yv))
        curve.append((total / count, valid_loss))
    return net, Z, curve


def test_ddp_on_two_workers_equals_a_plain_torch_loop(tmp_path, ray_cluster):
    spec = _spec(tmp_path)
    r = distml.run(spec)
    assert r.status == "succeeded"
    _wait_resources_free(ray_cluster)
    ex = r.manifest["execution"]
    assert (ex["path"], ex["backend"], ex["workers"]) == ("train_worker_group", "gloo", WORKERS)
    assert ex["per_worker_batch_size"] == spec["model"]["batch_size"] // WORKERS

    from distml.runtime.datasets import load_builtin

    df = load_builtin("digits")
    X = df.drop(columns="target").to_numpy(np.float64)
    y = df["target"].to_numpy(np.int64)
    parts = split_indices(y, distml.load_spec(spec).data.split_spec, classification=True)
    net, Z, curve = _plain_loop(spec["model"], parts, X, y)

    saved = torch.load(r.run_dir / "model" / "model.pt", weights_only=True)
    plain = net.state_dict()
    assert list(saved) == list(plain)
    for k in plain:
        diff = float((saved[k] - plain[k]).abs().max())
        assert diff < 1e-5, f"{k}: DDP and the plain loop differ by {diff:.2e}"

    lc = r.tables["learning_curve"]
    for epoch, (train_loss, valid_loss) in enumerate(curve):
        at = lc[lc.iteration == epoch].set_index(["split", "metric"])["value"]
        assert at[("train", "loss")] == pytest.approx(train_loss, rel=1e-5, abs=1e-6), epoch
        assert at[("valid", "loss")] == pytest.approx(valid_loss, rel=1e-5, abs=1e-6), epoch

    with torch.no_grad():
        pred = net(torch.from_numpy(Z[parts["test"]])).argmax(dim=1).numpy()
    assert r.metrics["test"]["accuracy"] == pytest.approx(
        float((pred == y[parts["test"]]).mean()), abs=1e-12
    )
    assert r.metrics["test"]["accuracy"] > 0.85  # and it learned (10 classes)
