"""Loading a run directory for ``distml predict`` runs none of its code (RELIABILITY promise 6,
issue 17): skops models hold only the node types distml saves (a frozen list, regenerated here),
a torch run's user module loads only with ``--allow-module``, its config numbers are checked as
numbers, estimator lookup imports only public scikit-learn modules; and random or adversarial
model files in fake finished run dirs of every predictable kind never run code (a marker-file
canary) and never fail with anything but exit 2."""

from __future__ import annotations

import importlib
import io
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import warnings
import zipfile
from functools import partial

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distml.errors import DataError, DistmlError, SpecError
from distml.scoring import load_predictor

PREDICT = importlib.import_module("distml.jobs.predictors")  # skops allow-lists and loading
ROOT = pathlib.Path(__file__).resolve().parents[2]
FEATURES = ["a", "b"]


# ------------------------------------------------------------------ the frozen skops list


def _variants():
    """Every registered estimator with its defaults and the loss/algorithm choices that change
    what its fitted state holds."""
    from distml.jobs.sklearn import ESTIMATORS

    extra = {
        "sgd_classifier": [
            {"loss": x}
            for x in (
                "hinge",
                "log_loss",
                "modified_huber",
                "squared_hinge",
                "perceptron",
                "squared_error",
                "huber",
                "epsilon_insensitive",
                "squared_epsilon_insensitive",
            )
        ],
        "sgd_regressor": [
            {"loss": x}
            for x in (
                "squared_error",
                "huber",
                "epsilon_insensitive",
                "squared_epsilon_insensitive",
            )
        ],
        "gradient_boosting_classifier": [{"loss": "exponential"}],
        "gradient_boosting_regressor": [
            {"loss": x} for x in ("absolute_error", "huber", "quantile")
        ],
        "hist_gradient_boosting_regressor": [
            {"loss": x} for x in ("absolute_error", "gamma", "poisson")
        ]
        + [{"loss": "quantile", "quantile": 0.5}],
        "knn_classifier": [{"algorithm": x} for x in ("ball_tree", "kd_tree", "brute")]
        + [{"p": 1}, {"metric": "manhattan"}, {"metric": "chebyshev"}, {"weights": "distance"}],
        "knn_regressor": [{"algorithm": x} for x in ("ball_tree", "kd_tree", "brute")]
        + [{"p": 1}, {"metric": "manhattan"}, {"metric": "chebyshev"}],
        "svc": [{"probability": True}, {"kernel": "linear"}],
        "logistic_regression": [{"class_weight": "balanced"}],
    }
    for name, (path, task) in ESTIMATORS.items():
        for params in [{}] + extra.get(name, []):
            yield path, task, params


def saved_nodes() -> set[str]:
    """Fit every variant on small data as distml does (one-hot or native categorical design,
    integer-coded classes), save it with skops and collect its nodes as ``Loader:type``."""
    import skops.io as sio

    rng = np.random.default_rng(0)
    X = pd.DataFrame({"a": rng.normal(size=80), "b": rng.normal(size=80)})
    Xc = X.assign(c=pd.Categorical(rng.choice(["x", "y", "z"], 80)))
    targets = {
        "classification": [rng.integers(0, 2, 80), rng.integers(0, 3, 80)],
        "regression": [np.abs(rng.normal(size=80)) + 0.1],
    }
    found = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path, task, params in _variants():
            module, _, attr = path.rpartition(".")
            cls = getattr(importlib.import_module(module), attr)
            for D in [X, Xc] if attr.startswith("HistGradientBoosting") else [X]:
                for y in targets[task]:
                    p = dict(params)
                    if p.get("loss") == "exponential" and len(np.unique(y)) > 2:
                        continue
                    if D is Xc:
                        p["categorical_features"] = "from_dtype"
                    est = cls(**p).fit(D, y)
                    found |= {f"{loader}:{t}" for loader, t in PREDICT.skops_nodes(sio.dumps(est))}
    return found


def test_skops_allow_list_is_what_distml_saves():
    """A scikit-learn upgrade that saves a new type fails here, not silently at predict."""
    found = saved_nodes()
    new, gone = sorted(found - PREDICT.SKOPS_SAVED), sorted(PREDICT.SKOPS_SAVED - found)
    assert not new and not gone, (
        f"distml.jobs.predictors.SKOPS_SAVED is stale for this scikit-learn: add {new}, drop {gone} "
        "(after checking that every added type is plain data, not a function)"
    )
    assert not any(
        n.startswith("FunctionNode:") and n.split(":", 1)[1] not in PREDICT.SKOPS_FUNCTIONS
        for n in PREDICT.SKOPS_NODES
    )
    assert not any(PREDICT.never_trusted(n.split(":", 1)[1]) for n in PREDICT.SKOPS_NODES)


# ------------------------------------------------------------------ fake finished run dirs


def _write_common(run: pathlib.Path, kind: str, spec_model: dict | None) -> None:
    (run / "model").mkdir(parents=True)
    (run / "manifest.json").write_text(json.dumps({"kind": kind, "run_id": "r1"}))
    if spec_model is not None:
        spec = {
            "name": "fake",
            "kind": kind,
            "data": {"source": "builtin:iris", "target": "target"},
            "model": spec_model,
        }
        (run / "spec.yaml").write_text(json.dumps(spec))  # JSON is YAML


def seal(run: pathlib.Path) -> pathlib.Path:
    """Finish a hand-made run dir as distml does (artifact digests, then ``_SUCCESS``). Whoever
    crafts a run directory can do the same, so the loaders — not the digest check — are what
    these tests reach."""
    from distml.runtime.artifacts import RunDir

    RunDir(run.parent.parent, run.parent.name, run.name).mark_success()
    return run


def _schema(task="classification", classes=(0, 1)) -> dict:
    return {
        "features": FEATURES,
        "task": task,
        "target": "target",
        "classes": list(classes) if task == "classification" else None,
        "dtypes": {c: "float64" for c in FEATURES},
        "categorical": {},
    }


def _train_xy(n=60, seed=0):
    rng = np.random.default_rng(seed)
    X = pd.DataFrame({c: rng.normal(size=n) for c in FEATURES})
    return X, (X["a"] > 0).astype(int).to_numpy()


def make_sklearn_run(run: pathlib.Path, estimator=None) -> pathlib.Path:
    import skops.io as sio
    from sklearn.linear_model import LogisticRegression

    X, y = _train_xy()
    _write_common(run, "sklearn", {"estimator": "logistic_regression"})
    (run / "model" / "schema.json").write_text(json.dumps(_schema()))
    (run / "model" / "model.skops").write_bytes(
        sio.dumps(estimator if estimator is not None else LogisticRegression().fit(X, y))
    )
    return seal(run)


def make_xgboost_run(run: pathlib.Path) -> pathlib.Path:
    import xgboost as xgb

    X, y = _train_xy()
    _write_common(run, "xgboost", {"params": {"objective": "binary:logistic"}})
    booster = xgb.train(
        {"objective": "binary:logistic", "max_depth": 2}, xgb.DMatrix(X, label=y), num_boost_round=3
    )
    booster.set_attr(distml_objective="binary:logistic")
    booster.save_model(str(run / "model" / "model.ubj"))
    (run / "model" / "schema.json").write_text(json.dumps(_schema()))
    return seal(run)


def torch_config(module: str | None = None, module_args: dict | None = None, **over) -> dict:
    from distml.jobs.torch import TorchModel
    from distml.jobs.torch.model import Inputs

    m = TorchModel(
        hidden=[4], **({"module": module, "module_args": module_args or {}} if module else {})
    )
    inputs = Inputs({c: (0.0, 1.0) for c in FEATURES}, {}, list(FEATURES))
    return {
        "format": "distml-torch/1",
        "model": m.model_dump(mode="json"),
        "in_features": 2,
        "out_features": 2,
        "task": "classification",
        "classes": [0, 1],
        "inputs": inputs.to_dict(),
        **over,
    }


def make_torch_run(run: pathlib.Path, config: dict | None = None, net=None) -> pathlib.Path:
    import torch

    from distml.jobs.torch import TorchModel
    from distml.jobs.torch.model import build_net

    config = config or torch_config()
    _write_common(run, "torch", {"hidden": [4]})
    if net is None:
        net = build_net(TorchModel.model_validate(config["model"]), 2, 2)
    buf = io.BytesIO()
    torch.save({k: v.detach() for k, v in net.state_dict().items()}, buf)
    (run / "model" / "model.pt").write_bytes(buf.getvalue())
    (run / "model" / "config.json").write_text(json.dumps(config))
    (run / "model" / "schema.json").write_text(json.dumps(_schema()))
    return seal(run)


def make_array_run(run: pathlib.Path, kind: str) -> pathlib.Path:
    _write_common(run, kind, None)
    meta = {"kind": kind, "features": FEATURES, "scale": False}
    if kind == "pca":
        meta |= {
            "n_samples": 60,
            "whiten": False,
            "mode": "exact",
            "output_columns": ["pca0", "pca1"],
        }
        np.savez(
            run / "model" / "pca.npz",
            mean=np.zeros(2),
            components=np.eye(2),
            explained_variance=np.ones(2),
            explained_variance_ratio=np.full(2, 0.5),
            singular_values=np.ones(2),
            noise_variance=np.float64(0.0),
        )
    else:
        meta |= {"output_columns": ["cluster"]}
        np.savez(
            run / "model" / "kmeans.npz",
            centers=np.array([[0.0, 0.0], [1.0, 1.0]]),
            sizes=np.array([30, 30]),
        )
    (run / "model" / "model.json").write_text(json.dumps(meta))
    return seal(run)


MAKERS = {
    "sklearn": make_sklearn_run,
    "xgboost": make_xgboost_run,
    "torch": make_torch_run,
    "pca": partial(make_array_run, kind="pca"),
    "kmeans": partial(make_array_run, kind="kmeans"),
}


@pytest.fixture(scope="module")
def baselines(tmp_path_factory) -> dict[str, pathlib.Path]:
    root = tmp_path_factory.mktemp("baselines")
    return {kind: make(root / kind) for kind, make in MAKERS.items()}


def test_baseline_runs_load_and_score(baselines):
    """The fuzz below mutates run dirs that do load: a refusal there is the mutation's doing."""
    frame = pd.DataFrame({"a": [-1.0, 2.0], "b": [0.5, 0.0]})
    for kind, run in baselines.items():
        out = load_predictor(run).score(frame)
        assert len(out) == 2, kind


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "distml", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )


def _input_csv(path: pathlib.Path) -> str:
    pd.DataFrame({"a": [0.1, -0.2], "b": [1.0, 2.0]}).to_csv(path, index=False)
    return str(path)


# ------------------------------------------------------------------ item 1: skops


def _savetxt_pipeline(marker: pathlib.Path):
    """A Pipeline whose transform writes ``marker`` through a numpy function: the old loader
    trusted every ``numpy.*``/``sklearn.*`` name plus functools.partial, so this ran."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    X, y = _train_xy()
    clf = LogisticRegression().fit(X.to_numpy(), y)
    pipe = Pipeline([("f", FunctionTransformer(func=partial(np.savetxt, str(marker)))), ("m", clf)])
    return pipe


def test_crafted_pipeline_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "MARKER"
    control = tmp_path / "control"  # the payload is live: run in memory, it writes its file
    try:
        _savetxt_pipeline(control).predict(_train_xy()[0].to_numpy())
    except Exception:
        pass
    assert control.exists()
    pipe = _savetxt_pipeline(marker)
    run = make_sklearn_run(tmp_path / "run", estimator=pipe)
    with pytest.raises(DataError) as e:
        load_predictor(run)
    assert "numpy.savetxt" in str(e.value) and "sklearn.pipeline.Pipeline" in str(e.value)
    assert "functools.partial" in str(e.value)
    assert not marker.exists()
    # the command line: exit 2, one sentence naming the type, no traceback, no marker
    res = _cli(
        "predict",
        str(run),
        "--input",
        _input_csv(tmp_path / "in.csv"),
        "--output",
        str(tmp_path / "out"),
    )
    assert res.returncode == 2, res.stderr
    assert "numpy.savetxt" in res.stderr and "Traceback" not in res.stderr
    assert not marker.exists() and not (tmp_path / "out" / "_SUCCESS").exists()


def _rewrite_schema(path: pathlib.Path, edit) -> None:
    """Rewrite a skops file's schema.json (what an attacker can do with any zip tool)."""
    src = zipfile.ZipFile(io.BytesIO(path.read_bytes()))
    schema = json.loads(src.read("schema.json"))
    edit(schema)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as dst:
        for name in src.namelist():
            dst.writestr(name, json.dumps(schema) if name == "schema.json" else src.read(name))
    path.write_bytes(buf.getvalue())


def _nodes(schema):
    stack = [schema]
    while stack:
        cur = stack.pop()
        if isinstance(cur, list):
            stack += cur
        elif isinstance(cur, dict):
            if "__loader__" in cur:
                yield cur
            stack += list(cur.values())


def test_testing_helpers_and_partials_of_other_functions_are_refused(tmp_path):
    """``sklearn.utils._testing`` re-exports subprocess.check_output; a partial may only wrap
    check_array, the one function distml's models hold (HistGradientBoosting)."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    X, y = _train_xy()
    Xc = X.assign(c=pd.Categorical(np.where(X["b"] > 0, "x", "y")))
    hgb = HistGradientBoostingClassifier(max_iter=3, categorical_features="from_dtype").fit(Xc, y)
    path = tmp_path / "m.skops"
    import skops.io as sio

    path.write_bytes(sio.dumps(hgb))
    assert type(PREDICT.load_skops(path)).__name__ == "HistGradientBoostingClassifier"

    def to_testing(schema):
        for node in _nodes(schema):
            if node["__loader__"] == "FunctionNode":
                node["__module__"], node["__class__"] = "sklearn.utils._testing", "check_output"

    _rewrite_schema(path, to_testing)
    with pytest.raises(DataError, match=r"sklearn\.utils\._testing\.check_output"):
        PREDICT.load_skops(path)

    path.write_bytes(sio.dumps(hgb))

    def to_numpy_function(schema):
        for node in _nodes(schema):
            if node["__loader__"] == "FunctionNode":
                node["__module__"], node["__class__"] = "numpy", "savetxt"

    _rewrite_schema(path, to_numpy_function)
    with pytest.raises(DataError, match=r"numpy\.savetxt"):
        PREDICT.load_skops(path)


def test_spec_named_public_estimator_is_trusted_but_not_its_unknown_parts(tmp_path):
    """A dotted-path estimator of the run's spec loads (its class is trusted by name)."""
    import skops.io as sio
    from sklearn.naive_bayes import GaussianNB

    X, y = _train_xy()
    path = tmp_path / "nb.skops"
    path.write_bytes(sio.dumps(GaussianNB().fit(X, y)))
    with pytest.raises(DataError, match="GaussianNB"):
        PREDICT.load_skops(path)
    est = PREDICT.load_skops(path, extra=["sklearn.naive_bayes.GaussianNB"])
    assert list(est.predict(X)) == list(GaussianNB().fit(X, y).predict(X))


# ------------------------------------------------------------------ item 2: torch


@pytest.mark.parametrize("shape", ["args", "in_features"])
def test_torch_config_naming_a_callable_never_runs_it(tmp_path, shape):
    """``subprocess:call`` built as ``call(in_features, out_features, **module_args)``: with
    the command in ``in_features`` (and ``out_features`` a valid bufsize) the old loader ran it."""
    marker = tmp_path / "MARKER"
    if shape == "args":
        config = torch_config("subprocess:call", {"shell": True, "args": f"touch {marker}"})
    else:
        config = torch_config(
            "subprocess:call", {"shell": True}, in_features=f"touch {marker}", out_features=-1
        )
    run = make_torch_run(tmp_path / "run", config=config, net=_plain_net())
    with pytest.raises(DataError) as e:
        load_predictor(run)
    if shape == "args":
        assert "model.module" in str(e.value) and "--allow-module subprocess:call" in str(e.value)
    else:
        assert "'in_features' must be an integer" in str(e.value)
    assert not marker.exists()
    # even allowed, a callable that is no torch.nn.Module subclass is never called
    with pytest.raises(DataError, match="not a torch.nn.Module subclass|'in_features'"):
        load_predictor(run, allow_module=["subprocess:call"])
    assert not marker.exists()
    if shape == "in_features":
        return
    res = _cli(
        "predict",
        str(run),
        "--input",
        _input_csv(tmp_path / "in.csv"),
        "--output",
        str(tmp_path / "out"),
        "--allow-module",
        "subprocess:call",
    )
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert "model.module" in res.stderr
    assert not marker.exists()


def _plain_net():
    from distml.jobs.torch import TorchModel
    from distml.jobs.torch.model import build_net

    return build_net(TorchModel(hidden=[4]), 2, 2)


USER_MODULE = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, in_features, out_features, width=3):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(in_features, width), nn.ReLU(),
                                  nn.Linear(width, out_features))

    def forward(self, x):
        return self.body(x)
"""


def test_user_module_scores_only_when_allowed(tmp_path, monkeypatch):
    pkg = tmp_path / "userpkg"
    pkg.mkdir()
    (pkg / "trusted_net_mod.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(pkg))
    net = importlib.import_module("trusted_net_mod").Net(2, 2, width=3)
    run = make_torch_run(
        tmp_path / "run", torch_config("trusted_net_mod:Net", {"width": 3}), net=net
    )
    with pytest.raises(DataError, match="--allow-module trusted_net_mod:Net"):
        load_predictor(run)
    p = load_predictor(run, allow_module=["trusted_net_mod:Net"])
    out = p.score(pd.DataFrame({"a": [1.0], "b": [2.0]}))
    assert set(out.columns) == {"prediction", "proba_0", "proba_1"}
    res = _cli(
        "predict",
        str(run),
        "--input",
        _input_csv(tmp_path / "in.csv"),
        "--output",
        str(tmp_path / "out"),
        env={"PYTHONPATH": f"{ROOT}:{pkg}"},
    )
    assert res.returncode == 2 and "--allow-module trusted_net_mod:Net" in res.stderr


@pytest.mark.parametrize(
    "field,value",
    [
        ("in_features", "2"),
        ("in_features", True),
        ("in_features", 10**12),
        ("out_features", -1),
        ("out_features", 2.5),
        ("task", "exec"),
    ],
)
def test_torch_config_numbers_are_checked_as_numbers(tmp_path, field, value):
    run = make_torch_run(tmp_path / "run", torch_config(**{field: value}))
    with pytest.raises(DataError, match=f"'{field}'"):
        load_predictor(run)


@pytest.mark.parametrize(
    "model,field",
    [
        ({"hidden": [1_000_000, 1_000_000, 1_000_000]}, "hidden"),
        ({"hidden": ["4"]}, "model.hidden"),
        ({"seed": -1}, "model.seed"),
        (
            {"module": "trusted_net_mod:Net", "module_args": {"w": {"nested": "dict"}}},
            "model.module_args.w",
        ),
    ],
)
def test_torch_model_section_is_checked(tmp_path, model, field):
    config = torch_config()
    config["model"].update(model)
    run = make_torch_run(tmp_path / "run", config, net=_plain_net())
    with pytest.raises(DataError, match=field.replace(".", r"\.")):
        load_predictor(run, allow_module=["trusted_net_mod:Net"])


# ------------------------------------------------------------------ item 4: estimators


def test_estimator_needing_constructor_arguments_is_a_spec_error():
    from distml.spec import load_spec

    spec = {
        "name": "ovr",
        "kind": "sklearn",
        "data": {"source": "builtin:iris", "target": "target"},
        "model": {"estimator": "sklearn.multiclass.OneVsRestClassifier"},
    }
    with pytest.raises(SpecError) as e:
        load_spec(spec)
    assert str(e.value).startswith("model.estimator") and "estimator" in str(e.value)
    assert e.value.exit_code == 2


@pytest.mark.parametrize(
    "name",
    [
        "sklearn.conftest.pytest_runtest_setup",
        "sklearn.utils._testing.check_output",
        "sklearn.tests.test_base.T",
        "sklearn.svm._classes.SVC",
        "sklearn.svm.l1_min_c",
        "sklearn.utils.check_array",
        "sklearn.linear_model.NotAClass",
    ],
)
def test_estimator_lookup_imports_only_public_modules(name):
    from distml.jobs.sklearn import estimator_class
    from distml.spec import load_spec

    for mod in ("sklearn.conftest", "sklearn.tests.test_base"):
        sys.modules.pop(mod, None)
    spec = {
        "name": "x",
        "kind": "sklearn",
        "data": {"source": "builtin:iris", "target": "target"},
        "model": {"estimator": name},
    }
    with pytest.raises(SpecError, match="model.estimator"):
        load_spec(spec)
    with pytest.raises(SpecError, match="model.estimator"):
        estimator_class(name)
    assert "sklearn.conftest" not in sys.modules and "sklearn.tests.test_base" not in sys.modules


def test_public_dotted_estimators_still_resolve():
    from distml.jobs.sklearn import estimator_class

    assert estimator_class("sklearn.svm.NuSVC").__name__ == "NuSVC"
    assert estimator_class("sklearn.dummy.DummyClassifier").__name__ == "DummyClassifier"
    assert estimator_class("random_forest_classifier").__name__ == "RandomForestClassifier"


# ------------------------------------------------------------------ item 3: the fuzz


class _Touch:
    """A pickle payload: unpickling it creates the canary file."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.path),))


EVIL_TYPES = [
    "os.system",
    "builtins.eval",
    "subprocess.call",
    "sklearn.utils._testing.check_output",
    "numpy.savetxt",
    "functools.partial",
    "sklearn.conftest.x",
    "numpy.load",
]
ADVERSARIAL_JSON = [
    None,
    True,
    -1,
    0,
    2**63,
    1e308,
    float("nan"),
    "",
    "subprocess:call",
    "os:system",
    "../../etc/passwd",
    [],
    [None],
    {},
    {"__class__": "x"},
    [1_000_000] * 3,
    "x" * 1000,
]


def _mutate_json(data: bytes, draw) -> bytes:
    try:
        obj = json.loads(data)
    except ValueError:
        return data
    paths = []

    def walk(o, path):
        paths.append(path)
        if isinstance(o, dict):
            for k, v in o.items():
                walk(v, path + [k])
        elif isinstance(o, list):
            for i, v in enumerate(o[:5]):
                walk(v, path + [i])

    walk(obj, [])
    path = draw(st.sampled_from(paths))
    value = draw(
        st.one_of(
            st.sampled_from(ADVERSARIAL_JSON),
            st.recursive(
                st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                lambda c: (
                    st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3)
                ),
                max_leaves=6,
            ),
        )
    )
    if not path:
        return json.dumps(value).encode()
    cur = obj
    for p in path[:-1]:
        cur = cur[p]
    cur[path[-1]] = value
    return json.dumps(obj).encode()


def _mutate_skops(data: bytes, draw, marker: str) -> bytes:
    choice = draw(st.sampled_from(["type", "function", "partial", "npy"]))
    src = zipfile.ZipFile(io.BytesIO(data))
    schema = json.loads(src.read("schema.json"))
    nodes = list(_nodes(schema))
    node = draw(st.sampled_from(nodes))
    files = {n: src.read(n) for n in src.namelist()}
    if choice == "type":
        node["__module__"], _, node["__class__"] = draw(st.sampled_from(EVIL_TYPES)).rpartition(".")
    elif choice == "function":
        node.clear()
        node.update(
            {
                "__class__": "savetxt",
                "__module__": "numpy",
                "__loader__": "FunctionNode",
                "content": {"module_path": "numpy", "function": "savetxt"},
                "__id__": 1,
            }
        )
    elif choice == "partial":
        node.clear()
        node.update(
            {
                "__class__": "partial",
                "__module__": "functools",
                "__loader__": "PartialNode",
                "__id__": 2,
                "content": {
                    "func": {
                        "__class__": "savetxt",
                        "__module__": "numpy",
                        "__loader__": "FunctionNode",
                        "__id__": 3,
                        "content": {"module_path": "numpy", "function": "savetxt"},
                    },
                    "args": {
                        "__class__": "tuple",
                        "__module__": "builtins",
                        "__loader__": "TupleNode",
                        "__id__": 4,
                        "content": [
                            {
                                "__class__": "str",
                                "__module__": "builtins",
                                "__loader__": "JsonNode",
                                "content": json.dumps(marker),
                                "is_json": True,
                                "__id__": 5,
                            }
                        ],
                    },
                    "keywords": {
                        "__class__": "dict",
                        "__module__": "builtins",
                        "__loader__": "DictNode",
                        "content": {},
                        "__id__": 6,
                    },
                },
            }
        )
    else:  # an array file that is a pickle (np.save of an object array)
        npys = [n for n in files if n.endswith(".npy")]
        if npys:
            buf = io.BytesIO()
            np.save(buf, np.array([_Touch(marker)], dtype=object), allow_pickle=True)
            files[draw(st.sampled_from(npys))] = buf.getvalue()
    files["schema.json"] = json.dumps(schema).encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as dst:
        for n, b in files.items():
            dst.writestr(n, b)
    return buf.getvalue()


def _pickle_payload(marker: str, kind: str) -> bytes:
    buf = io.BytesIO()
    if kind == "pt":
        import torch

        torch.save({"w": _Touch(marker)}, buf)
    else:
        np.savez(buf, centers=np.array([_Touch(marker)], dtype=object))
    return buf.getvalue()


MODEL_FILES = {
    "sklearn": ["model/model.skops", "model/schema.json", "manifest.json"],
    "xgboost": ["model/model.ubj", "model/schema.json"],
    "torch": ["model/model.pt", "model/config.json", "model/schema.json"],
    "pca": ["model/pca.npz", "model/model.json"],
    "kmeans": ["model/kmeans.npz", "model/model.json"],
}


@settings(
    max_examples=50,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_fuzzed_model_files_never_run_code_and_exit_2(baselines, data):
    draw = data.draw
    kind = draw(st.sampled_from(sorted(MODEL_FILES)))
    name = draw(st.sampled_from(MODEL_FILES[kind]))
    how = draw(st.sampled_from(["bytes", "truncate", "flip", "structured", "pickle", "empty"]))
    with tempfile.TemporaryDirectory() as tmp:
        run = pathlib.Path(tmp) / "run"
        shutil.copytree(baselines[kind], run)
        marker = str(pathlib.Path(tmp) / "MARKER")
        target = run / name
        content = target.read_bytes()
        if how == "bytes":
            content = draw(st.binary(max_size=256))
        elif how == "truncate":
            content = content[: draw(st.integers(0, max(len(content) - 1, 0)))]
        elif how == "flip":
            i = draw(st.integers(0, len(content) - 1))
            flipped = content[i] ^ draw(st.integers(1, 255))
            content = content[:i] + bytes([flipped]) + content[i + 1 :]
        elif how == "empty":
            content = b""
        elif how == "pickle":
            content = _pickle_payload(marker, "pt" if name.endswith(".pt") else "npz")
        elif name.endswith(".json"):
            content = _mutate_json(content, draw)
        elif name.endswith(".skops"):
            content = _mutate_skops(content, draw, marker)
        else:
            content = _pickle_payload(marker, "pt" if name.endswith(".pt") else "npz")
        target.write_bytes(content)
        seal(run)
        try:
            p = load_predictor(run)
            p.score(pd.DataFrame({"a": [0.5, -1.0], "b": [2.0, 0.0]}))
        except DistmlError as e:
            assert e.exit_code == 2, f"{kind} {name} {how}: exit {e.exit_code}: {e}"
        assert not os.path.exists(marker), f"{kind} {name} {how}: the canary ran"


@pytest.mark.parametrize(
    "kind,name",
    [("xgboost", "model/model.ubj"), ("torch", "model/model.pt"), ("kmeans", "model/kmeans.npz")],
)
def test_fuzzed_model_files_on_the_command_line(baselines, tmp_path, kind, name):
    run = tmp_path / "run"
    shutil.copytree(baselines[kind], run)
    marker = tmp_path / "MARKER"
    if name.endswith(".ubj"):
        (run / name).write_bytes(os.urandom(200))
    else:
        (run / name).write_bytes(_pickle_payload(str(marker), "pt" if kind == "torch" else "npz"))
    seal(run)
    res = _cli(
        "predict",
        str(run),
        "--input",
        _input_csv(tmp_path / "in.csv"),
        "--output",
        str(tmp_path / "out"),
    )
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr and res.stderr.strip().count("\n") == 0, res.stderr
    assert not marker.exists()
