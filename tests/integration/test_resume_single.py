"""RELIABILITY.md promise 4 for single-task fits (issue 18.7): a run killed part way and rerun
with ``--resume`` (same run id) continues from its checkpoint in ``checkpoints/`` — fewer
rounds/epochs/groups in the second attempt — and ends with what an uninterrupted run gives;
a kind that cannot resume says so in the manifest (``resumed_from: null`` + the reason).

Faults are injected deterministically: ``DISTML_TRAIN_FAULT=MARKER:K`` makes the fit's task exit
at round/epoch K once (the marker file records it); with ``max_failures: 0`` the run fails, as
when the driver is killed, and the rerun with ``resume=True`` continues. Checkpoints are made
every step here (``DISTML_CHECKPOINT_INTERVAL_S=0``).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import distml
from distml.errors import JobFailed

pytestmark = pytest.mark.usefixtures("ray_cluster")

SOURCE = "synthetic:classification?rows=1500&features=6&seed=3"


def _xgb_spec(tmp_path, **model) -> dict:
    return {
        "name": "resume-xgb",
        "kind": "xgboost",
        "data": {
            "source": SOURCE,
            "target": "target",
            "split": {"valid": 0.2, "test": 0.2, "seed": 1},
        },
        "model": {
            "params": {"objective": "binary:logistic", "max_depth": 3, "eta": 0.3},
            "num_boost_round": 20,
            **model,
        },
        "resources": {"max_failures": 0},
        "output": {"dir": str(tmp_path)},
    }


def _proba(r) -> pd.DataFrame:
    p = pd.read_parquet(r.run_dir / "tables" / "predictions.parquet")
    return p.sort_values(["split", "row"]).reset_index(drop=True)


def _interrupt_then_resume(spec: dict, marker, at: int, monkeypatch):
    """The run dies at step ``at`` (failed), then ``--resume`` with the same run id."""
    monkeypatch.setenv("DISTML_CHECKPOINT_INTERVAL_S", "0")
    monkeypatch.setenv("DISTML_TRAIN_FAULT", f"{marker}:{at}")
    with pytest.raises(JobFailed):
        distml.run(spec, run_id="r1")
    assert json.loads(marker.read_text())["iteration"] >= at  # groups: a few tasks at a time
    monkeypatch.delenv("DISTML_TRAIN_FAULT")
    return distml.run(spec, run_id="r1", resume=True)


def test_xgboost_resumes_from_its_last_round(tmp_path, monkeypatch):
    base = distml.run(_xgb_spec(tmp_path / "a"))
    assert base.manifest["execution"]["path"] == "single_task"
    assert "resume_reason" not in base.manifest["execution"]

    r = _interrupt_then_resume(_xgb_spec(tmp_path / "b"), tmp_path / "crash", 8, monkeypatch)
    ex = r.manifest["execution"]
    assert r.status == "succeeded" and r.manifest["resume"] is True
    # continued after round 8: only 12 of the 20 rounds were boosted in the second attempt
    assert ex["resumed_from"] == {"round": 8, "of": 20}
    assert ex["checkpoints"]["saved"] == 12
    assert r.metrics["num_boosted_rounds"] == 20
    a, b = _proba(base), _proba(r)
    np.testing.assert_allclose(b["proba_1"], a["proba_1"], atol=1e-6)
    assert (a["y_pred"] == b["y_pred"]).all()
    # the learning curve covers all 20 rounds, the first 8 from the checkpoint
    curve = pd.read_parquet(r.run_dir / "tables" / "learning_curve.parquet")
    assert sorted(curve["iteration"].unique()) == list(range(20))
    # checkpoints are gone with _SUCCESS and were never listed as artifacts
    assert not (r.run_dir / "checkpoints").exists()


def test_xgboost_retry_keeps_early_stopping_state(tmp_path, monkeypatch):
    """A task retried in the same run (max_failures 1) continues from its checkpoint too, with
    the early-stopping state: it stops where an undisturbed run stops."""
    model = {
        "num_boost_round": 200,
        "early_stopping_rounds": 5,
        "params": {"objective": "binary:logistic", "max_depth": 4, "eta": 0.6},
    }
    base = distml.run(_xgb_spec(tmp_path / "a", **model))
    stop_at = base.metrics["num_boosted_rounds"]
    assert stop_at < 200  # early stopping did stop it
    monkeypatch.setenv("DISTML_CHECKPOINT_INTERVAL_S", "0")
    monkeypatch.setenv("DISTML_TRAIN_FAULT", f"{tmp_path / 'crash'}:{stop_at - 3}")
    spec = _xgb_spec(tmp_path / "b", **model)
    spec["resources"]["max_failures"] = 1
    r = distml.run(spec)
    ex = r.manifest["execution"]
    assert ex["resumed_from"]["round"] == stop_at - 3
    assert r.metrics["num_boosted_rounds"] == stop_at
    assert r.metrics["best_iteration"] == base.metrics["best_iteration"]
    np.testing.assert_allclose(_proba(r)["proba_1"], _proba(base)["proba_1"], atol=1e-6)


@pytest.mark.parametrize(
    "kind, reason", [("sklearn", "does not checkpoint"), ("pca", "passes are not checkpointed")]
)
def test_resume_of_a_kind_without_checkpoints_says_why(tmp_path, kind, reason):
    spec = {
        "name": "resume-sk",
        "kind": "sklearn",
        "data": {"source": SOURCE, "target": "target", "split": {"valid": 0.2, "seed": 1}},
        "model": {"estimator": "logistic_regression"},
        "output": {"dir": str(tmp_path)},
    }
    if kind == "pca":
        spec = {
            "name": "resume-pca",
            "kind": "pca",
            "data": {"source": SOURCE, "exclude": ["target"]},
            "model": {"n_components": 2},
            "output": {"dir": str(tmp_path)},
        }
    fresh = distml.run(spec)
    assert "resumed_from" not in fresh.manifest["execution"]  # said only on --resume
    r = distml.run(spec, run_id="r1", resume=True)
    ex = r.manifest["execution"]
    assert ex["resumed_from"] is None and reason in ex["resume_reason"]
    assert "--resume: not resumed" in (r.run_dir / "run.log").read_text()


def _torch_spec(tmp_path) -> dict:
    return {
        "name": "resume-torch",
        "kind": "torch",
        "data": {
            "source": SOURCE,
            "target": "target",
            "split": {"valid": 0.2, "test": 0.2, "seed": 1},
        },
        "model": {
            "hidden": [16],
            "dropout": 0.1,
            "epochs": 6,
            "batch_size": 64,
            "lr": 0.01,
            "task": "classification",
            "seed": 5,
            "lr_schedule": {"type": "step", "step_size": 2, "gamma": 0.5},
        },
        "resources": {"max_failures": 0},
        "output": {"dir": str(tmp_path)},
    }


def test_torch_resumes_from_its_last_epoch(tmp_path, monkeypatch):
    """Weights, optimizer, schedule, epoch and the RNG states (shuffling, dropout) come back:
    the resumed run is the uninterrupted one."""
    base = distml.run(_torch_spec(tmp_path / "a"))
    r = _interrupt_then_resume(_torch_spec(tmp_path / "b"), tmp_path / "crash", 3, monkeypatch)
    ex = r.manifest["execution"]
    assert ex["resumed_from"] == {"epoch": 3, "of": 6}
    assert ex["checkpoints"]["saved"] == 3  # epochs 4-6 only in the second attempt
    assert r.metrics["epochs_trained"] == 6
    np.testing.assert_allclose(_proba(r)["proba_1"], _proba(base)["proba_1"], atol=1e-6)
    assert not (r.run_dir / "checkpoints").exists()


def _panel(path):
    rng = np.random.default_rng(4)
    frames = []
    for i in range(40):
        n = 30 + i
        x1 = rng.normal(size=n)
        frames.append(
            pd.DataFrame(
                {
                    "g": f"s{i:02d}",
                    "x1": x1,
                    "x2": rng.normal(size=n),
                    "y": 0.5 + i * 0.1 * x1 + rng.normal(size=n),
                }
            )
        )
    df = pd.concat(frames, ignore_index=True)
    df.loc[df["g"] == "s07", "x2"] = 1.0  # a failed group (singular design) is resumed too
    df.to_parquet(path, index=False)
    return str(path)


def _mm_spec(tmp_path, source) -> dict:
    return {
        "name": "resume-mm",
        "kind": "statsmodels",
        "group_by": ["g"],
        "data": {"source": source, "split": {"valid": 0.25, "seed": 2}},
        "model": {"formula": "y ~ x1 + x2 + I(x1 ** 2)", "groups_per_task": 5},
        "output": {"dir": str(tmp_path)},
    }


def test_many_models_resume_fits_only_the_missing_groups(tmp_path, monkeypatch):
    source = _panel(tmp_path / "panel.parquet")
    base = distml.run(_mm_spec(tmp_path / "a", source))
    assert base.manifest["execution"]["tasks"] == 8
    r = _interrupt_then_resume(
        _mm_spec(tmp_path / "b", source), tmp_path / "crash", 10, monkeypatch
    )
    ex = r.manifest["execution"]
    done = ex["resumed_from"]["groups"]
    assert 10 <= done < 40 and done % 5 == 0 and ex["resumed_from"]["of"] == 40
    assert ex["tasks"] == (40 - done) // 5  # only the missing groups were fitted
    for name in ("coefficients", "model_stats"):
        pd.testing.assert_frame_equal(
            pd.read_parquet(r.run_dir / "tables" / f"{name}.parquet"),
            pd.read_parquet(base.run_dir / "tables" / f"{name}.parquet"),
        )
    assert r.metrics == base.metrics
    assert not (r.run_dir / "checkpoints").exists()


def _km_spec(tmp_path, scale: bool = True) -> dict:
    return {
        "name": "resume-km",
        "kind": "kmeans",
        "data": {"source": SOURCE, "exclude": ["target"]},
        "model": {
            "n_clusters": 3,
            "batch_size": 200,
            "seed": 0,
            "tol": 0.0,
            "max_passes": 4,
            "refine_passes": 2,
            "scale": scale,
            **({} if scale else {"keep_decoded": False}),
        },
        "output": {"dir": str(tmp_path)},
    }


@pytest.mark.parametrize("scale", [True, False])
def test_kmeans_resumes_after_its_last_pass(tmp_path, monkeypatch, scale):
    """Scaled, the sample pass measures the moments; not scaled, it decodes only the drawn rows
    and the first mini-batch pass measures the tolerance, which the checkpoints then carry."""
    base = distml.run(_km_spec(tmp_path / "a", scale))
    assert base.metrics["passes"] == 4 and base.metrics["refine_passes"] == 2
    decoded = "every row" if scale else "the rows drawn"
    assert base.manifest["execution"]["sample"]["decoded"] == decoded
    r = _interrupt_then_resume(_km_spec(tmp_path / "b", scale), tmp_path / "crash", 3, monkeypatch)
    ex = r.manifest["execution"]
    assert ex["resumed_from"] == {"passes": 3, "phase": "minibatch"}
    assert ex["checkpoints"]["saved"] == 3  # passes 4, 5 and 6 only in the second attempt
    for name in ("centers", "pass_history"):
        pd.testing.assert_frame_equal(
            pd.read_parquet(r.run_dir / "tables" / f"{name}.parquet"),
            pd.read_parquet(base.run_dir / "tables" / f"{name}.parquet"),
        )
    assert r.metrics["inertia"] == base.metrics["inertia"]
    assert not (r.run_dir / "checkpoints").exists()
