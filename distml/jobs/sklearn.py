"""Kind ``sklearn``: one scikit-learn estimator, fitted in one Ray task.

``estimator`` is a short name from :data:`ESTIMATORS` or a dotted path ``sklearn.MODULE.Class``
into a public scikit-learn module (:data:`PUBLIC_MODULES`);
``params`` go to the estimator unchanged. The data are used as they are: no scaling unless
``scale: true``; categorical columns (listed in ``data.categorical`` or of string/category dtype)
are one-hot encoded with the levels seen in the data, except for the hist gradient boosting
estimators, which take them natively (``categorical_features="from_dtype"``). The fitted
estimator is saved with skops (``model/model.skops``), never pickle.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field, field_validator, model_validator

from distml.errors import DataError, SpecError
from distml.jobs._supervised import Prepared, SupervisedJob
from distml.spec.base import JobSpec, StrictModel
from distml.spec.bounds import check_work_params

_C, _R = "classification", "regression"
#: short name → (class path, task)
ESTIMATORS: dict[str, tuple[str, str]] = {
    "linear_regression": ("sklearn.linear_model.LinearRegression", _R),
    "ridge": ("sklearn.linear_model.Ridge", _R),
    "ridge_classifier": ("sklearn.linear_model.RidgeClassifier", _C),
    "lasso": ("sklearn.linear_model.Lasso", _R),
    "elastic_net": ("sklearn.linear_model.ElasticNet", _R),
    "logistic_regression": ("sklearn.linear_model.LogisticRegression", _C),
    "sgd_classifier": ("sklearn.linear_model.SGDClassifier", _C),
    "sgd_regressor": ("sklearn.linear_model.SGDRegressor", _R),
    "random_forest_classifier": ("sklearn.ensemble.RandomForestClassifier", _C),
    "random_forest_regressor": ("sklearn.ensemble.RandomForestRegressor", _R),
    "extra_trees_classifier": ("sklearn.ensemble.ExtraTreesClassifier", _C),
    "extra_trees_regressor": ("sklearn.ensemble.ExtraTreesRegressor", _R),
    "gradient_boosting_classifier": ("sklearn.ensemble.GradientBoostingClassifier", _C),
    "gradient_boosting_regressor": ("sklearn.ensemble.GradientBoostingRegressor", _R),
    "hist_gradient_boosting_classifier": ("sklearn.ensemble.HistGradientBoostingClassifier", _C),
    "hist_gradient_boosting_regressor": ("sklearn.ensemble.HistGradientBoostingRegressor", _R),
    "decision_tree_classifier": ("sklearn.tree.DecisionTreeClassifier", _C),
    "decision_tree_regressor": ("sklearn.tree.DecisionTreeRegressor", _R),
    "svc": ("sklearn.svm.SVC", _C),
    "svr": ("sklearn.svm.SVR", _R),
    "linear_svc": ("sklearn.svm.LinearSVC", _C),
    "linear_svr": ("sklearn.svm.LinearSVR", _R),
    "knn_classifier": ("sklearn.neighbors.KNeighborsClassifier", _C),
    "knn_regressor": ("sklearn.neighbors.KNeighborsRegressor", _R),
    "dummy_classifier": ("sklearn.dummy.DummyClassifier", _C),  # baselines (a ladder's first rung)
    "dummy_regressor": ("sklearn.dummy.DummyRegressor", _R),
}
#: the public scikit-learn modules a dotted ``estimator`` path may name (``sklearn.MOD.Class``):
#: lookup imports nothing else, so neither private modules nor test helpers (``conftest``,
#: ``utils._testing``) are ever imported through a spec
PUBLIC_MODULES = frozenset(
    {
        "calibration",
        "cluster",
        "compose",
        "covariance",
        "cross_decomposition",
        "decomposition",
        "discriminant_analysis",
        "dummy",
        "ensemble",
        "feature_selection",
        "gaussian_process",
        "impute",
        "isotonic",
        "kernel_approximation",
        "kernel_ridge",
        "linear_model",
        "manifold",
        "mixture",
        "multiclass",
        "multioutput",
        "naive_bayes",
        "neighbors",
        "neural_network",
        "pipeline",
        "preprocessing",
        "random_projection",
        "semi_supervised",
        "svm",
        "tree",
    }
)
_NATIVE_CATEGORICAL = ("HistGradientBoostingClassifier", "HistGradientBoostingRegressor")


class SklearnModel(StrictModel):
    """The ``model`` section of an sklearn job."""

    estimator: str = Field(
        ...,
        description="Short name (e.g. random_forest_classifier) or a "
        "dotted path inside sklearn (sklearn.svm.SVC).",
    )
    params: dict[str, Any] = Field(
        default_factory=dict, description="Estimator parameters, passed unchanged."
    )
    scale: bool = Field(False, description="Standardise numeric features (fitted on train only).")

    @field_validator("estimator")
    @classmethod
    def _known(cls, v: str) -> str:
        if v in ESTIMATORS or _public_path(v):
            try:  # at validation, so that no cluster starts for an estimator that cannot build
                estimator_class(v)
            except SpecError as e:
                raise ValueError(e.message) from None
            return v
        close = difflib.get_close_matches(v, list(ESTIMATORS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"model.estimator must be a registered short name or a public dotted "
            f"path inside sklearn. (sklearn.MODULE.Class of a public module, e.g. "
            f"sklearn.svm.SVC); got {v!r}{hint} "
            f"(short names: {', '.join(ESTIMATORS)})"
        )

    @field_validator("params")
    @classmethod
    def _work_bounds(cls, v: dict[str, Any]) -> dict[str, Any]:
        check_work_params(v)  # n_estimators, max_iter, … within sanity bounds (distml.spec.bounds)
        return v


def _public_path(v: str) -> bool:
    """``sklearn.MODULE.Class`` with MODULE public and Class a public name (no import)."""
    parts = v.split(".")
    return (
        len(parts) == 3
        and parts[0] == "sklearn"
        and parts[1] in PUBLIC_MODULES
        and parts[2].isidentifier()
        and not parts[2].startswith("_")
    )


class Spec(JobSpec):
    """A scikit-learn job."""

    kind: Literal["sklearn"]
    model: SklearnModel

    @model_validator(mode="after")
    def _one_worker(self) -> "Spec":
        if self.resources.num_workers > 1:
            raise ValueError(
                "resources.num_workers must be 1 for kind sklearn (an estimator fits "
                "in one worker; cross-validation folds run in parallel anyway); got "
                f"{self.resources.num_workers}"
            )
        return self


def estimator_class(name: str) -> type:
    """Resolve a short name or ``sklearn.MODULE.Class`` to an sklearn estimator class that
    builds without arguments (SpecError naming model.estimator if not). Only the public
    modules of :data:`PUBLIC_MODULES` are ever imported."""
    path = ESTIMATORS[name][0] if name in ESTIMATORS else name
    if not _public_path(path):
        raise SpecError(
            f"model.estimator {name!r} is not a class of a public scikit-learn "
            "module (sklearn.MODULE.Class, e.g. sklearn.svm.SVC)"
        )
    module, _, attr = path.rpartition(".")
    try:
        mod = importlib.import_module(module)
    except ImportError:
        raise SpecError(f"model.estimator {name!r}: scikit-learn has no module {module}") from None
    public = getattr(mod, "__all__", None)
    cls = getattr(mod, attr, None) if public is None or attr in public else None
    if cls is None:
        raise SpecError(f"model.estimator {name!r} does not name a public class of {module}")
    from sklearn.base import BaseEstimator

    if not (isinstance(cls, type) and issubclass(cls, BaseEstimator)):
        raise SpecError(f"model.estimator {name!r} is not a scikit-learn estimator class")
    try:
        params = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):
        params = []
    required = [
        p.name
        for p in params
        if p.default is inspect.Parameter.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    if required:
        raise SpecError(
            f"model.estimator {name!r} needs constructor argument"
            f"{'s' if len(required) > 1 else ''} {', '.join(required)} that a spec "
            "cannot give (an estimator object); choose an estimator that builds "
            "from parameters alone"
        )
    return cls


class Job(SupervisedJob):
    """Single-task scikit-learn fit."""

    spec: Spec

    @classmethod
    def load_model(cls, run_dir: Path, spec: Spec, schema: dict) -> dict:
        """The estimator (skops, checked node by node) and the feature scaler of a run."""
        from distml.jobs.predictors import load_skops

        run = Path(run_dir)
        try:  # the estimator class the run's spec names (a public scikit-learn estimator)
            est = estimator_class(spec.model.estimator)
        except SpecError as e:
            raise DataError(f"run dir {str(run)!r}: {e.message}") from None
        scaler_path = run / "model" / "scaler.json"
        try:
            scaler = json.loads(scaler_path.read_text()) if scaler_path.is_file() else None
            if scaler is not None and not (
                isinstance(scaler, dict)
                and all(
                    isinstance(v, list)
                    and len(v) == 2
                    and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
                    for v in scaler.values()
                )
            ):
                raise ValueError("not a mapping of column to [mean, sd]")
        except (OSError, ValueError) as e:
            raise DataError(
                f"run dir {str(run)!r}: model/scaler.json is unreadable ({e})"
            ) from None
        return {
            "estimator": load_skops(
                run / "model" / "model.skops", extra=[f"{est.__module__}.{est.__qualname__}"]
            ),
            "scaler": scaler,
        }

    def check_spec(self) -> None:
        """The estimator exists and takes every key of ``model.params`` (SpecError if not)."""
        cls = estimator_class(self.spec.model.estimator)
        valid = cls().get_params(deep=False)
        for key in self.spec.model.params:
            if key not in valid:
                close = difflib.get_close_matches(key, list(valid), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise SpecError(
                    f"model.params.{key} is not a parameter of {cls.__name__}{hint} "
                    f"(parameters: {', '.join(valid)})"
                )

    def check_data(self):
        self.check_spec()
        return super().check_data()

    def task(self) -> str | None:
        from sklearn.base import is_classifier, is_regressor

        est = estimator_class(self.spec.model.estimator)()
        if is_classifier(est):
            return "classification"
        if is_regressor(est):
            return "regression"
        raise SpecError(
            f"model.estimator {self.spec.model.estimator!r} is neither a classifier "
            "nor a regressor; the sklearn kind fits supervised estimators"
        )

    # ---- encoding: one-hot (or native categorical), optional scaling fitted on train rows
    def _native(self) -> bool:
        return estimator_class(self.spec.model.estimator).__name__ in _NATIVE_CATEGORICAL

    def _design(self, prep: Prepared, X: pd.DataFrame, scaler: dict | None) -> pd.DataFrame:
        if prep.categories and not self._native():
            X = pd.get_dummies(X, columns=list(prep.categories), prefix_sep="=", dtype=np.float64)
        if scaler:
            X = X.copy()
            for c, (mu, sd) in scaler.items():
                X[c] = (X[c] - mu) / sd
        return X

    def fit(self, prep: Prepared, train: np.ndarray, valid: np.ndarray | None):
        params = dict(self.spec.model.params)
        cls = estimator_class(self.spec.model.estimator)
        if self._native() and prep.categories:
            params.setdefault("categorical_features", "from_dtype")
        est = cls(**params)
        scaler = None
        if self.spec.model.scale:
            Xt = prep.X.iloc[train]
            num = [c for c in Xt.columns if c not in prep.categories]
            sd = Xt[num].std(ddof=0).replace(0, 1.0)
            scaler = {c: (float(Xt[c].mean()), float(sd[c])) for c in num}
        est.fit(self._design(prep, prep.X.iloc[train], scaler), prep.y[train])
        model = {"estimator": est, "scaler": scaler}
        return model, {}, {}

    def predict(self, model, prep: Prepared, X: pd.DataFrame):
        est = model["estimator"]
        D = self._design(prep, X, model["scaler"])
        pred = est.predict(D)
        if prep.task != "classification":
            return np.asarray(pred, dtype=np.float64), None
        proba = None
        if hasattr(est, "predict_proba"):
            try:
                p = est.predict_proba(D)
                proba = np.zeros((len(D), prep.n_classes))
                proba[:, np.asarray(est.classes_, dtype=int)] = p
            except (AttributeError, NotImplementedError):
                proba = None
        return np.asarray(pred, dtype=np.int64), proba

    def importance(self, model, prep: Prepared) -> pd.DataFrame | None:
        est = model["estimator"]
        names = getattr(est, "feature_names_in_", None)
        if hasattr(est, "feature_importances_"):
            values = np.asarray(est.feature_importances_, dtype=float)
        elif hasattr(est, "coef_"):
            coef = np.atleast_2d(np.asarray(est.coef_, dtype=float))
            values = np.abs(coef).mean(axis=0)
        else:
            return None
        if names is None or len(names) != len(values):
            return None
        return pd.DataFrame({"feature": [str(n) for n in names], "importance": values})

    def model_files(self, model) -> dict[str, bytes]:
        import json

        from distml.jobs.predictors import skops_io

        files = {"model/model.skops": skops_io().dumps(model["estimator"])}
        if model["scaler"]:
            files["model/scaler.json"] = json.dumps(model["scaler"], indent=2).encode()
        return files
