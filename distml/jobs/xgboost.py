"""Kind ``xgboost``: gradient boosting with ``params`` passed to xgboost unchanged.

With ``resources.num_workers: 1`` the whole job (read, split, train, evaluate) runs in one Ray
task: a Ray Train worker group costs ~13 s to start here and does not pay for data that fits one
worker. Early stopping watches the valid split; the evaluation history is kept as the
``learning_curve`` table; feature importance is xgboost's ``gain``; the model is saved as
``model/model.ubj`` (xgboost's native binary JSON).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field, model_validator

from distml.errors import DataError
from distml.jobs._supervised import Prepared, SupervisedJob
from distml.spec.base import JobSpec, StrictModel


class XGBoostModel(StrictModel):
    """The ``model`` section of an xgboost job."""

    params: dict[str, Any] = Field(
        default_factory=dict, description="Booster parameters, passed to xgboost.train unchanged.")
    num_boost_round: int = Field(100, ge=1, le=1_000_000, description="Boosting rounds.")
    early_stopping_rounds: int | None = Field(
        None, ge=1, description="Stop when the last valid eval_metric has not improved for N rounds.")


class Spec(JobSpec):
    """An xgboost job."""

    kind: Literal["xgboost"]
    model: XGBoostModel = Field(default_factory=XGBoostModel)

    @model_validator(mode="after")
    def _checks(self) -> "Spec":
        split = self.data.split_spec
        if self.model.early_stopping_rounds and (split is None or split.valid == 0):
            raise ValueError(
                "model.early_stopping_rounds needs a validation split; data.split has no valid "
                "fraction; set data.split.valid (e.g. 0.2) or drop early_stopping_rounds")
        if self.resources.num_workers > 1:
            raise ValueError(
                "resources.num_workers must be 1 for kind xgboost in this version (multi-worker "
                f"training through Ray Train is not available yet); got {self.resources.num_workers}")
        return self


_CLASSIFICATION_PREFIXES = ("binary:", "multi:")


class Job(SupervisedJob):
    """Single-task xgboost training."""

    spec: Spec

    def check_data(self):
        info = super().check_data()
        bad = [c for c in info.features if any(ch in c for ch in "[]<")]
        if bad:
            raise DataError(f"data.features: column {bad[0]!r} has a name xgboost cannot use "
                            "(it may not contain [, ] or <); rename it or list it in data.exclude")
        return info

    def task(self) -> str | None:
        objective = self.spec.model.params.get("objective")
        if objective is None:
            return None
        return ("classification" if str(objective).startswith(_CLASSIFICATION_PREFIXES)
                else "regression")

    def booster_params(self, prep: Prepared) -> dict[str, Any]:
        """The user's params, plus only what xgboost cannot infer (objective, num_class, threads)."""
        params = dict(self.spec.model.params)
        if "objective" not in params:
            if prep.task == "classification":
                params["objective"] = "binary:logistic" if prep.n_classes == 2 else "multi:softprob"
            else:
                params["objective"] = "reg:squarederror"
        if str(params["objective"]).startswith("multi:") and "num_class" not in params:
            params["num_class"] = prep.n_classes
        if "nthread" not in params and "n_jobs" not in params:
            params["nthread"] = max(1, int(self.spec.resources.cpus_per_worker))
        if self.spec.resources.gpus_per_worker > 0 and "device" not in params:
            params["device"] = "cuda"
        params.setdefault("seed", 0)
        return params

    def fit(self, prep: Prepared, train: np.ndarray, valid: np.ndarray | None):
        import xgboost as xgb

        params = self.booster_params(prep)
        nthread = params.get("nthread", -1)
        dtrain = xgb.DMatrix(prep.X.iloc[train], label=prep.y[train], enable_categorical=True,
                             nthread=nthread)
        evals = [(dtrain, "train")]
        if valid is not None and len(valid):
            evals.append((xgb.DMatrix(prep.X.iloc[valid], label=prep.y[valid],
                                      enable_categorical=True, nthread=nthread), "valid"))
        history: dict = {}
        model = self.spec.model
        booster = xgb.train(params, dtrain, num_boost_round=model.num_boost_round, evals=evals,
                            early_stopping_rounds=model.early_stopping_rounds if len(evals) > 1
                            else None, evals_result=history, verbose_eval=False)
        figures: dict[str, Any] = {"num_boosted_rounds": int(booster.num_boosted_rounds())}
        if model.early_stopping_rounds and len(evals) > 1:
            figures["best_iteration"] = int(booster.best_iteration)
        curve = pd.DataFrame([
            {"iteration": i, "split": split, "metric": metric, "value": float(v)}
            for split, by_metric in history.items() for metric, values in by_metric.items()
            for i, v in enumerate(values)])
        booster.set_attr(distml_objective=str(params["objective"]))
        return booster, figures, {"learning_curve": curve} if len(curve) else {}

    def predict(self, model, prep: Prepared, X: pd.DataFrame):
        import xgboost as xgb

        best = model.attr("best_iteration")
        rng = (0, int(best) + 1) if best is not None and self.spec.model.early_stopping_rounds \
            else (0, 0)
        raw = model.predict(xgb.DMatrix(X, enable_categorical=True), iteration_range=rng)
        objective = model.attr("distml_objective") or ""
        if prep.task != "classification":
            return raw.astype(np.float64), None
        if objective in ("binary:logistic",):
            proba = np.column_stack([1 - raw, raw])
            return (raw >= 0.5).astype(np.int64), proba
        if objective == "multi:softprob":
            return raw.argmax(axis=1).astype(np.int64), raw
        if objective == "binary:logitraw":
            return (raw >= 0).astype(np.int64), None
        return np.rint(raw).astype(np.int64), None

    def importance(self, model, prep: Prepared) -> pd.DataFrame:
        gain = model.get_score(importance_type="gain")
        feats = list(prep.X.columns)
        return pd.DataFrame({"feature": feats,
                             "importance": [float(gain.get(f, 0.0)) for f in feats]})

    def model_files(self, model) -> dict[str, bytes]:
        return {"model/model.ubj": bytes(model.save_raw("ubj"))}
