"""distml's torch network and epoch loop on a CUDA device (marker ``gpu``).

Without CUDA (``torch.cuda.is_available()`` is False, as on CI and the CPU build ``make test``
installs) the test skips and says so; with ``DISTML_REQUIRE_GPU=1`` it fails instead, so a run
on a GPU machine cannot skip it unnoticed. Run it there with
``DISTML_REQUIRE_GPU=1 python -m pytest -m gpu tests/unit``.

It needs no Ray cluster: the worker group's CUDA path is this same loop with the network moved to
``ray.train.torch.get_device()``.
"""

from __future__ import annotations

import copy
import os

import numpy as np
import pandas as pd
import pytest

from distml.spec import load_spec

SPEC = {
    "name": "cuda-mlp",
    "kind": "torch",
    "data": {"source": "synthetic:classification?rows=10", "target": "target"},
    "model": {
        "hidden": [32, 16],
        "activation": "gelu",
        "epochs": 3,
        "batch_size": 64,
        "lr": 0.003,
        "task": "classification",
        "seed": 7,
    },
}


@pytest.fixture
def cuda():
    import torch

    if not torch.cuda.is_available():
        why = (
            "no CUDA device: torch.cuda.is_available() is False (torch "
            f"{torch.__version__}, CUDA build {torch.version.cuda})"
        )
        if os.environ.get("DISTML_REQUIRE_GPU") == "1":
            pytest.fail(f"DISTML_REQUIRE_GPU=1 but {why}")
        pytest.skip(why)
    return torch.device("cuda")


def _data(rows: int = 1200, features: int = 12, classes: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, features))
    logits = X @ rng.normal(size=(features, classes)) + rng.normal(scale=0.5, size=(rows, classes))
    frame = pd.DataFrame(X, columns=[f"x{i}" for i in range(features)])
    frame["cat"] = rng.choice(["a", "b", "c"], size=rows)  # one-hot columns too
    return frame, logits.argmax(axis=1)


def _train(device):
    """distml's own pieces: Inputs, build_net (seeded init), fit_loop (epochs, valid figures)."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from distml.jobs.torch.model import Inputs, LoopData, build_net, fit_loop, n_outputs

    m = load_spec(copy.deepcopy(SPEC)).model
    frame, y = _data()
    train, valid = np.arange(1000), np.arange(1000, len(frame))
    inputs = Inputs.fit(frame.iloc[train], {"cat": ["a", "b", "c"]}, y[train])

    def pair(rows):
        return (
            torch.from_numpy(inputs.design(frame.iloc[rows])),
            torch.from_numpy(inputs.target(y[rows], "classification")),
        )

    (Xt, yt), (Xv, yv) = pair(train), pair(valid)
    net = build_net(m, inputs.width, n_outputs("classification", 3)).to(device)
    gen = torch.Generator().manual_seed(m.seed)
    loader = DataLoader(TensorDataset(Xt, yt), batch_size=m.batch_size, shuffle=True, generator=gen)
    return fit_loop(
        m, "classification", net, loader, LoopData(Xt, yt, Xv, yv), device=device, generator=gen
    )


@pytest.mark.gpu
def test_the_torch_loop_trains_on_cuda_as_on_cpu(cuda):
    """On CUDA: the same seeded initialisation (made on the CPU, then moved) and the same batch
    order as on the CPU, so the weights agree up to float32 summation order in the GPU's kernels
    (measured on an H200: at most 7.5e-8; a wrong order or a skipped step is ~1e-1).

    No ``batch_norm`` here: the bias of a Linear layer before BatchNorm has a gradient that is
    zero up to rounding, and Adam scales that rounding noise to full-size steps, so that bias
    (and the running mean) wander ~1e-2 apart between any two summation orders (seen: 1.4e-2).
    """
    import torch

    torch.cuda.reset_peak_memory_stats(cuda)
    on_gpu = _train(cuda)
    assert torch.cuda.max_memory_allocated(cuda) > 0, "nothing was placed on the GPU"
    on_cpu = _train(torch.device("cpu"))

    gpu_state, cpu_state = on_gpu.net.state_dict(), on_cpu.net.state_dict()
    assert all(v.device.type == "cpu" for v in gpu_state.values())  # handed back on the CPU
    assert list(gpu_state) == list(cpu_state)
    for k, v in cpu_state.items():
        if v.dtype.is_floating_point:
            diff = float((gpu_state[k] - v).abs().max())
            assert diff < 1e-5, f"{k}: CUDA and CPU weights differ by {diff:.2e}"
        else:
            assert torch.equal(gpu_state[k], v), k
    assert on_gpu.figures["epochs_trained"] == on_cpu.figures["epochs_trained"] == 3
    gpu_curve = {(h["iteration"], h["split"], h["metric"]): h["value"] for h in on_gpu.history}
    cpu_curve = {(h["iteration"], h["split"], h["metric"]): h["value"] for h in on_cpu.history}
    assert gpu_curve.keys() == cpu_curve.keys()
    for key, value in cpu_curve.items():
        assert gpu_curve[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    assert cpu_curve[(2, "valid", "accuracy")] > 0.6  # it learned (3 classes)
