"""The contract every registered kind honours, without a cluster (as scikit-learn's
``check_estimator``): parametrised over the registry, so a new kind gets these tests for free.

The cluster half (its example runs, predict round-trip, report sections) is
``tests/integration/test_kind_contract_cluster.py``.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import typing

import jsonschema
import pytest
import yaml

from distml.cli import main
from distml.jobs.base import Job
from distml.registry import KINDS, job_class, kind_module
from distml.spec import json_schema, load_spec
from tests.kinds import ROOT, examples_of


@pytest.fixture(params=sorted(KINDS))
def kind(request) -> str:
    return request.param


def test_registry_entry_exposes_spec_and_job(kind):
    module = kind_module(kind)
    assert issubclass(module.Job, Job), f"{kind}: Job must subclass distml.jobs.base.Job"
    assert job_class(kind) is module.Job
    literal = module.Spec.model_fields["kind"].annotation
    assert typing.get_args(literal) == (kind,), f"{kind}: Spec.kind must be Literal[{kind!r}]"


def test_every_kind_has_a_runnable_example_spec(kind):
    assert examples_of(kind), f"kind {kind} has no example spec in jobs/ (DESIGN.md §1)"


def test_example_specs_round_trip_and_match_the_json_schema(kind):
    schema = json_schema()
    for path in examples_of(kind):
        raw = yaml.safe_load(path.read_text())
        jsonschema.validate(raw, schema)
        spec = load_spec(path)
        again = load_spec(json.loads(json.dumps(spec.to_dict())))
        assert again.to_dict() == spec.to_dict(), path.name
        jsonschema.validate(json.loads(json.dumps(spec.to_dict())), schema)


def test_validate_needs_no_cluster_and_no_ray(kind):
    """``distml.validate`` of every example (data included) imports neither Ray nor the
    kind's heavy library at module import time."""
    for path in examples_of(kind):
        code = (
            "import sys, distml; distml.validate(sys.argv[1]); "
            "assert 'ray' not in sys.modules, 'validate imported ray'"
        )
        res = subprocess.run(
            [sys.executable, "-c", code, str(path)],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
        )
        assert res.returncode == 0, f"{path.name}: {res.stderr[-2000:]}"


@pytest.mark.parametrize("case", ["missing_source", "missing_feature"])
def test_bad_input_exits_2_before_any_cluster_and_writes_no_success(
    kind, case, tmp_path, capsys, monkeypatch
):
    """Data that cannot be used is exit 2 with a sentence naming what is wrong, found before
    any cluster work (an unreachable RAY_ADDRESS would make a late check exit 3 instead), and
    no ``_SUCCESS`` is written."""
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:9")
    raw = yaml.safe_load(examples_of(kind)[0].read_text())
    raw.pop("tune", None)
    if case == "missing_source":
        raw["data"]["source"] = str(tmp_path / "nowhere" / "data.parquet")
        named = "nowhere"
    else:
        raw["data"]["features"] = ["no_such_column_zq"]
        named = None  # some kinds refuse the spec itself first (e.g. exogenous regressors)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    code = main(["run", str(path), "--output", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "distml: error: " in err and len(err.strip()) > 30, err
    if named:
        assert named in err, err
    assert not list((tmp_path / "runs").rglob("_SUCCESS"))


def test_abilities_are_declared_on_the_job(kind):
    """What tune, predict and report ask of a kind is declared on its Job with the base's
    signatures (they never look a kind up by name or probe it with hasattr)."""
    cls = job_class(kind)
    base = {
        name: inspect.signature(getattr(Job, name))
        for name in (
            "check_spec",
            "check_data",
            "run",
            "tune_metric_names",
            "tune_iterations",
            "tune_iteration_metrics",
            "tune_final_overrides",
            "train_execution",
        )
    }
    for name, sig in base.items():
        params = list(inspect.signature(getattr(cls, name)).parameters.values())
        assert [p.name for p in params[: len(sig.parameters)]] == list(sig.parameters), (
            f"{kind}: Job.{name} must keep the signature of distml.jobs.base.Job.{name}"
        )
        assert all(p.default is not p.empty for p in params[len(sig.parameters) :]), (
            f"{kind}: Job.{name} may add parameters only with defaults"
        )
    for name in ("load_predictor", "report_sections"):
        assert inspect.ismethod(getattr(cls, name)), f"{kind}: Job.{name} must be a classmethod"
    sections = cls.report_sections()
    assert isinstance(sections, list) and all(callable(s) for s in sections)
    spec = load_spec(examples_of(kind)[0])
    job = cls(spec)
    names = job.tune_metric_names()
    assert names is None or (isinstance(names, set) and all(isinstance(n, str) for n in names))
    iterations = job.tune_iterations()
    assert iterations is None or (isinstance(iterations, int) and iterations > 0)
    per_round = job.tune_iteration_metrics()
    if per_round is not None and names is not None:  # some searchable metric every iteration
        assert per_round & names, f"{kind}: no metric of this spec is computed every iteration"
    if cls.tune_trial_hook:  # a kind that runs a trial itself implements all three hooks
        for name in ("tune_prepare", "tune_trial", "tune_refit"):
            assert callable(getattr(cls, name, None)), f"{kind}: tune_trial_hook needs {name}"


def test_kind_modules_stay_light_at_import():
    """Importing every kind module imports no heavy library (validate and --help stay fast)."""
    code = (
        "import sys; from distml.registry import KINDS, kind_module; "
        "[kind_module(k) for k in KINDS]; "
        "heavy = [m for m in ('ray', 'torch', 'xgboost', 'lightgbm', 'dask', 'statsmodels') "
        "if m in sys.modules]; assert not heavy, heavy"
    )
    res = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ},
    )
    assert res.returncode == 0, res.stderr[-2000:]
