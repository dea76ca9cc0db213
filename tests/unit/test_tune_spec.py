"""The tune section without a cluster: parsing, error sentences, cross-field checks (paths applied
to the kind's spec), search-space translation to Tune domains, the trials table."""

from __future__ import annotations

import math

import pytest

from distml.errors import SpecError
from distml.spec import json_schema, load_spec
from distml.spec.tune import TuneSpec, representative_values

XGB = {
    "name": "t",
    "kind": "xgboost",
    "data": {"source": "builtin:breast_cancer", "target": "target"},
    "model": {"params": {"objective": "binary:logistic"}, "num_boost_round": 50},
}
SK = {
    "name": "s",
    "kind": "sklearn",
    "data": {"source": "builtin:iris", "target": "target"},
    "model": {"estimator": "random_forest_classifier"},
}


def spec(base: dict = XGB, **tune) -> dict:
    tune.setdefault("metric", "valid.logloss")
    tune.setdefault("space", {"model.params.max_depth": {"randint": [2, 8]}})
    return {**base, "tune": tune}


def error_of(raw: dict) -> str:
    with pytest.raises(SpecError) as e:
        load_spec(raw)
    return e.value.message


# ------------------------------------------------------------------ parsing and defaults


def test_a_valid_search_loads_with_inferred_defaults():
    s = load_spec(
        spec(
            space={
                "model.params.eta": {"loguniform": [0.005, 0.3]},
                "model.params.max_depth": {"randint": [2, 10]},
                "model.params.grow_policy": {"choice": ["depthwise", "lossguide"]},
                "model.num_boost_round": {"lograndint": [10, 200]},
            }
        )
    )
    t = s.tune
    assert (t.mode, t.num_samples, t.search, t.scheduler, t.seed) == (
        "min",
        10,
        "random",
        "none",
        0,
    )
    assert t.split == "valid" and t.metric_name == "logloss"
    # The resolved spec round-trips (what spec.yaml holds reloads to the same spec).
    assert load_spec(s.to_dict()).to_dict() == s.to_dict()


@pytest.mark.parametrize(
    "metric,mode",
    [
        ("valid.roc_auc", "max"),
        ("valid.accuracy", "max"),
        ("valid.rmse", "min"),
        ("cv.f1", "max"),
        ("train.mae", "min"),
    ],
)
def test_mode_is_inferred_from_the_metric(metric, mode):
    assert TuneSpec(metric=metric, space={"model.x": {"uniform": [0, 1]}}).mode == mode


def test_grid_defaults_to_one_pass_and_counts_combinations():
    t = TuneSpec(
        metric="valid.rmse",
        search="grid",
        space={"model.a": {"grid": [1, 2, 3]}, "model.b": {"choice": ["x", "y"]}},
    )
    assert t.num_samples == 1 and t.n_grid == 6
    r = TuneSpec(
        metric="valid.rmse",
        num_samples=4,
        space={"model.a": {"grid": [1, 2]}, "model.b": {"uniform": [0, 1]}},
    )
    assert r.n_grid == 2  # random search: choice is sampled, grid is crossed


@pytest.mark.parametrize(
    "entry,message",
    [
        (
            {"loguniform": [0, 0.3]},
            "tune.space.model.params.eta: loguniform needs 0 < low < high; got [0, 0.3]",
        ),
        ({"uniform": [1, 1]}, "tune.space.model.params.eta: uniform needs low < high; got [1, 1]"),
        ({"uniform": [0.1]}, "tune.space.model.params.eta: uniform needs [low, high]; got [0.1]"),
        (
            {"randint": [1.5, 4]},
            "tune.space.model.params.eta: randint needs integer bounds [low, high]; got [1.5, 4]",
        ),
        (
            {"quniform": [0, 1, 2]},
            "tune.space.model.params.eta: quniform needs 0 < q <= high - low; got [0, 1, 2]",
        ),
        ({"choice": []}, "tune.space.model.params.eta: choice needs at least one value; got []"),
        (
            {"loguniformm": [0.1, 1]},
            "tune.space.model.params.eta: 'loguniformm' is not a distribution (one of uniform, "
            "loguniform, quniform, randint, lograndint, choice, grid); did you mean 'loguniform'?",
        ),
        (
            {"uniform": [0, 1], "choice": [1]},
            "tune.space.model.params.eta must be a mapping with one distribution",
        ),
        ({"uniform": [0, float("nan")]}, "uniform needs finite numbers"),
        ({"uniform": [True, 2]}, "uniform needs finite numbers"),
    ],
)
def test_bad_distributions_name_path_rule_and_value(entry, message):
    assert message in error_of(spec(space={"model.params.eta": entry}))


@pytest.mark.parametrize("entry", [{"uniform": [0, 10**400]}, {"randint": [-(10**400), 8]}])
def test_a_bound_past_floats_range_is_a_spec_error_naming_the_entry(entry):
    """An int too large for a float (math.isfinite raised OverflowError; found by
    test_spec_fuzz.py) is refused with the entry's path, like every other bad bound."""
    with pytest.raises(SpecError) as e:
        load_spec(spec(space={"model.params.eta": entry}))
    name = next(iter(entry))
    assert f"tune.space.model.params.eta: {name} needs finite numbers [low, high]" in str(e.value)


@pytest.mark.parametrize(
    "path,message",
    [
        ("data.source", "tune.space.data.source: data.* cannot be searched"),
        (
            "name",
            "tune.space keys must be dotted spec paths such as model.params.max_depth; got 'name'",
        ),
        ("kind.x", "tune.space.kind.x: kind.* cannot be searched"),
        (
            "resources.cpus_per_worker",
            "tune.space.resources.cpus_per_worker: resources.* cannot be searched",
        ),
    ],
)
def test_unsearchable_paths_are_rejected(path, message):
    assert message in error_of(spec(space={path: {"choice": [1]}}))


def test_paths_are_checked_by_applying_values_to_the_kind_spec():
    msg = error_of(spec(space={"model.num_boost_rounds": {"randint": [5, 10]}}))
    assert msg.startswith(
        "tune.space.model.num_boost_rounds: the value 5 does not fit the spec "
        "(model.num_boost_rounds is not a known field"
    )
    assert "did you mean 'num_boost_round'?" in msg
    msg = error_of(spec(space={"model.num_boost_round": {"randint": [0, 10]}}))
    assert msg == (
        "tune.space.model.num_boost_round: the value 0 does not fit the spec "
        "(model.num_boost_round must be >= 1; got 0)"
    )
    msg = error_of(
        spec(SK, metric="valid.accuracy", space={"model.scale": {"choice": [True, "x"]}})
    )
    assert msg.startswith("tune.space.model.scale: the value 'x' does not fit the spec")


@pytest.mark.parametrize(
    "tune,message",
    [
        ({"metric": "test.logloss"}, "tune.metric must not use the test split"),
        ({"metric": "valid.loss thing"}, "tune.metric must be SPLIT.NAME"),
        (
            {"metric": "valid.logloss", "search": "grid"},
            "tune.search grid needs grid or choice values for every path",
        ),
        (
            {
                "metric": "valid.logloss",
                "search": "optuna",
                "space": {"model.params.max_depth": {"grid": [2, 3]}},
            },
            "tune.space.model.params.max_depth: grid does not combine with search optuna",
        ),
        ({"metric": "valid.custom_score"}, "tune.mode is required for metric 'valid.custom_score'"),
        (
            {"metric": "valid.logloss", "report_every": 3, "checkpoint_every": 4},
            "tune.checkpoint_every must be a multiple of tune.report_every",
        ),
        ({"metric": "valid.logloss", "mode": "up"}, "tune.mode must be 'min' or 'max'"),
        ({"metric": "valid.logloss", "num_samples": 0}, "tune.num_samples must be >= 1; got 0"),
        ({"metric": "valid.logloss", "max_failures": -1}, "tune.max_failures must be >= 0"),
        ({"metric": "valid.logloss", "schedular": "asha"}, "did you mean 'scheduler'?"),
    ],
)
def test_tune_field_errors(tune, message):
    assert message in error_of(spec(**tune))


def test_cross_checks_against_the_data_split_and_the_kind():
    no_valid = {**XGB, "data": {**XGB["data"], "split": "none"}}
    assert "tune.metric valid.logloss needs a validation split" in error_of(spec(no_valid))
    assert "tune.metric cv.logloss needs cross-validation" in error_of(spec(metric="cv.logloss"))
    with_cv = {**XGB, "data": {**XGB["data"], "split": {"cv": 3}}}
    assert "use cv.logloss" in error_of(spec(with_cv))
    assert "tune.metric 'valid.rsme' is not a metric of kind xgboost" in error_of(
        spec(metric="valid.rsme", mode="min")
    )
    # The objective fixes the task: a regression metric for a classifier is an error at once.
    assert error_of(spec(metric="valid.rmse")) == (
        "tune.metric 'valid.rmse' is not a metric of kind xgboost (accuracy, f1, logloss, "
        "precision, recall, roc_auc)"
    )
    # A scheduler needs a kind that reports every iteration, and a metric it computes then.
    msg = error_of(spec(SK, metric="valid.accuracy", scheduler="asha"))
    assert msg == (
        "tune.scheduler asha needs trials that report every iteration (boosting "
        "rounds, epochs); kind sklearn fits in one shot; set tune.scheduler: none"
    )
    assert "needs a metric kind xgboost computes every iteration" in error_of(
        spec(metric="valid.f1", scheduler="median")
    )
    assert "tune.report_every must be at most the iterations of a trial (50); got 80" in error_of(
        spec(scheduler="asha", report_every=80)
    )
    assert load_spec(spec(scheduler="asha")).tune.scheduler == "asha"


def test_sklearn_parameter_names_are_checked_before_the_cluster():
    import distml

    raw = spec(SK, metric="valid.accuracy", space={"model.params.max_dept": {"randint": [2, 5]}})
    with pytest.raises(SpecError) as e:
        distml.validate(raw)
    assert e.value.message.startswith(
        "tune.space.model.params.max_dept: the value 2 does not fit "
        "the spec (model.params.max_dept is not a parameter of "
        "RandomForestClassifier; did you mean 'max_depth'?"
    )


def test_schema_describes_the_tune_section():
    schema = json_schema()
    tune = schema["$defs"]["TuneSpec"]
    assert {"metric", "space", "search", "scheduler", "max_failures", "seed"} <= set(
        tune["properties"]
    )
    entry = tune["properties"]["space"]["additionalProperties"]
    assert entry["minProperties"] == entry["maxProperties"] == 1


def test_representative_values_cover_the_ends_and_every_choice():
    assert representative_values({"randint": [2, 10]}) == [2, 10]
    assert representative_values({"quniform": [0.05, 1.0, 0.1]}) == pytest.approx([0.0, 1.0])
    assert representative_values({"choice": ["a", [1, 2]]}) == ["a", [1, 2]]


# ------------------------------------------------------------------ translation to Tune


def test_space_translates_to_tune_domains_with_inclusive_integers():
    from ray.tune.search.sample import Categorical, Float, Integer

    from distml.tune.space import Space

    t = TuneSpec(
        metric="valid.rmse",
        space={
            "model.a": {"uniform": [0, 1]},
            "model.b": {"loguniform": [1e-3, 1]},
            "model.c": {"quniform": [0, 1, 0.25]},
            "model.d": {"randint": [2, 4]},
            "model.e": {"lograndint": [1, 100]},
            "model.f": {"choice": ["x", "y"]},
            "model.g": {"grid": [1, 2]},
            "model.h": {"choice": [[8], [16, 8]]},
        },
    )
    ps = Space(t).param_space()
    assert isinstance(ps["model.a"], Float) and (ps["model.a"].lower, ps["model.a"].upper) == (0, 1)
    assert "LogUniform" in type(ps["model.b"].get_sampler()).__name__
    assert ps["model.c"].get_sampler().q == 0.25
    assert isinstance(ps["model.d"], Integer) and (ps["model.d"].lower, ps["model.d"].upper) == (
        2,
        5,
    )  # Tune's upper bound is exclusive; the spec's is not
    assert (ps["model.e"].lower, ps["model.e"].upper) == (1, 101)
    assert isinstance(ps["model.f"], Categorical) and ps["model.f"].categories == ["x", "y"]
    assert ps["model.g"] == {"grid_search": [1, 2]}
    assert ps["model.h"].categories == [0, 1]  # non-scalar choices travel as indices
    assert Space(t).decode({"model.h": 1, "model.d": 4}) == {"model.h": [16, 8], "model.d": 4}


def test_seeded_sampling_is_reproducible_and_inclusive():
    from ray.tune.search.variant_generator import generate_variants

    from distml.tune.space import Space

    t = TuneSpec(
        metric="valid.rmse",
        seed=3,
        space={"model.d": {"randint": [2, 3]}, "model.u": {"uniform": [0.5, 1.0]}},
    )

    def draw(seed):
        import numpy as np

        rng = np.random.default_rng(seed)
        out = []
        for _ in range(40):
            _, config = next(generate_variants(Space(t).param_space(), random_state=rng))
            out.append(Space(t).decode(config))
        return out

    a, b = draw(7), draw(7)
    assert a == b
    assert {c["model.d"] for c in a} == {2, 3}
    assert all(0.5 <= c["model.u"] <= 1.0 for c in a)


def test_search_grid_turns_choices_into_a_grid():
    from distml.tune.space import Space

    t = TuneSpec(metric="valid.rmse", search="grid", space={"model.f": {"choice": ["x", "y"]}})
    assert Space(t).param_space() == {"model.f": {"grid_search": ["x", "y"]}}


# ------------------------------------------------------------------ table and schedule


def test_trials_table_statuses_columns_and_best():
    from distml.tune.table import TrialRecord, best_record, failure_summary, trials_table

    def res(v, final=True, **kw):
        return {
            "objective": v,
            "iteration": 10 if final else 4,
            "final": final,
            "best": v,
            "best_iteration": 3,
            "elapsed_s": 0.5,
            "resumed_from": 0,
            "failed": False,
            "error": "",
            "valid.logloss": v,
            "valid.accuracy": 0.9,
            **kw,
        }

    records = [
        TrialRecord(0, {"model.a": 1, "model.h": [8]}, res(0.3)),
        TrialRecord(1, {"model.a": 2, "model.h": "x"}, res(0.2, final=False)),
        TrialRecord(
            2,
            {"model.a": 3, "model.h": [8]},
            {**res(math.nan), "failed": True, "error": "ValueError: bad"},
        ),
        TrialRecord(
            3, {"model.a": 4, "model.h": [8]}, {}, error="RayActorError: died", num_failures=2
        ),
        TrialRecord(4, {"model.a": 5, "model.h": [8]}, {}),
    ]
    t = trials_table(records, ["model.a", "model.h"], "valid.logloss")
    assert list(t["trial_id"]) == [f"trial_000{i}" for i in range(5)]
    assert list(t["status"]) == ["completed", "stopped", "failed", "failed", "not_run"]
    assert list(t.columns[:10]) == [
        "trial_id",
        "status",
        "model.a",
        "model.h",
        "valid.logloss",
        "valid.logloss.best",
        "best_iteration",
        "iterations",
        "time_s",
        "num_failures",
    ]
    assert list(t["model.h"]) == ["[8]", "x", "[8]", "[8]", "[8]"]
    assert t["num_failures"].tolist() == [0, 0, 0, 2, 0]
    assert t["valid.accuracy"].iloc[0] == 0.9 and math.isnan(t["valid.logloss"].iloc[2])
    assert t["error"].iloc[2] == "ValueError: bad" and t["error"].iloc[3] == "RayActorError: died"
    assert best_record(records, "min").index == 1 and best_record(records, "max").index == 0
    assert failure_summary(records) == (
        "trial_0002: ValueError: bad; trial_0003: RayActorError: died; trial_0004: never ran"
    )
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pandas(t, preserve_index=False), io.BytesIO())  # parquet-safe


def test_report_schedule_and_concurrency():
    from distml.tune.tuner import concurrency_for, report_schedule

    # grace: a quarter of the iterations, rounded down (docs/tuning.md; issue 18 #15: 60 → 15)
    assert report_schedule(100, None, None) == (10, 25)
    assert report_schedule(60, None, None) == (6, 15)
    assert report_schedule(30, None, None) == (3, 7)
    assert report_schedule(3, None, None) == (1, 1)
    assert report_schedule(60, None, 9) == (6, 9)
    assert report_schedule(300, 1, None) == (1, 75)
    assert report_schedule(None, None, None) == (None, 1)
    # what the scheduler reads: ASHA its rungs (grace x 3^k), none nothing but the final report
    # ASHA's grace: half of the iterations (one rung, at the middle), unless set
    assert report_schedule(100, None, None, "asha") == (50, 50)
    assert report_schedule(60, None, None, "asha") == (30, 30)
    assert report_schedule(1, None, None, "asha") == (1, 1)
    assert report_schedule(60, None, 9, "asha") == (9, 9)
    assert report_schedule(100, None, None, "none") == (0, 25)
    assert report_schedule(100, 5, None, "none") == (5, 25)  # the spec's report_every wins
    assert concurrency_for({"CPU": 2}, 1, 0, None, 64) == 2
    assert concurrency_for({"CPU": 16}, 2, 0, 3, 64) == 3
    assert concurrency_for({"CPU": 16}, 1, 0, None, 5) == 5
    assert concurrency_for({"CPU": 8, "GPU": 1}, 1, 1, None, 64) == 1
    assert concurrency_for({"CPU": 1}, 2, 0, None, 64) == 1


def test_example_specs_load():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    for name in ("tune_xgboost.yaml", "tune_sklearn.yaml"):
        assert load_spec(root / "jobs" / name).tune is not None
