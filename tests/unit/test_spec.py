"""The spec: loading (dict, YAML, JobSpec), defaults, ``--set`` overrides, the JSON schema and the
wording of every validation error (CONVENTIONS.md §5). No Ray; runs in about a second."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from distml.cli import main
from distml.errors import SpecError
from distml.jobs import KINDS
from distml.spec import JobSpec, apply_overrides, json_schema, load_spec, parse_override
from distml.spec.base import check_name

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "jobs").glob("*.yaml"))

XGB = {
    "name": "churn-xgb",
    "kind": "xgboost",
    "data": {"source": "builtin:breast_cancer", "target": "target"},
}
SKL = {
    "name": "iris-forest",
    "kind": "sklearn",
    "data": {"source": "builtin:iris", "target": "target"},
    "model": {"estimator": "random_forest_classifier"},
}


def spec(base: dict | None = None, **overrides) -> JobSpec:
    """Load ``base`` (default: the minimal xgboost spec) with ``a__b``-style overrides."""
    return load_spec(copy.deepcopy(base or XGB), overrides)


def error(raw, overrides=None) -> SpecError:
    """The SpecError that loading ``raw`` raises (fails the test if it loads)."""
    with pytest.raises(SpecError) as info:
        load_spec(raw, overrides)
    return info.value


def problems(e: SpecError) -> list[str]:
    return e.details or [e.message]


# ------------------------------------------------------------------------------------- loading


def test_minimal_dict_gets_every_default():
    s = spec()
    assert type(s).__module__ == "distml.jobs.xgboost" and s.kind == "xgboost"
    assert s.name == "churn-xgb" and s.data.source == "builtin:breast_cancer"
    split = s.data.split_spec
    assert (split.valid, split.test, split.seed, split.stratify, split.cv) == (
        0.2,
        0.0,
        42,
        None,
        None,
    )
    assert (s.data.features, s.data.exclude, s.data.categorical, s.data.test_source) == (
        None,
        [],
        None,
        None,
    )
    r = s.resources
    assert (r.num_workers, r.cpus_per_worker, r.gpus_per_worker, r.max_failures) == (1, 1, 0, 0)
    assert s.output.dir == "runs"
    assert (s.model.params, s.model.num_boost_round, s.model.early_stopping_rounds) == (
        {},
        100,
        None,
    )


def test_sklearn_defaults():
    s = spec(SKL)
    assert s.kind == "sklearn" and s.model.estimator == "random_forest_classifier"
    assert s.model.params == {} and s.model.scale is False


def test_yaml_file_str_and_path(tmp_path):
    p = tmp_path / "spec.yaml"
    p.write_text(yaml.safe_dump(XGB))
    assert load_spec(str(p)) == load_spec(p) == spec()


def test_json_file_is_yaml_too(tmp_path):
    p = tmp_path / "spec.json"
    p.write_text(json.dumps(XGB))
    assert load_spec(p) == spec()


def test_yaml_with_byte_order_mark(tmp_path):
    p = tmp_path / "bom.yaml"
    p.write_bytes(b"\xef\xbb\xbf" + yaml.safe_dump(XGB).encode())
    assert load_spec(p).name == "churn-xgb"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_specs_load_and_round_trip(path):
    s = load_spec(path)
    assert s.kind in KINDS
    assert load_spec(s) == s  # a JobSpec is accepted as is
    assert load_spec(s.to_dict()) == s  # and so is its resolved form (spec.yaml)
    assert load_spec(yaml.safe_load(yaml.safe_dump(s.to_dict()))) == s


def test_examples_exist():
    assert len(EXAMPLES) >= 2


def test_split_none_and_cv():
    assert spec(data__split="none").data.split_spec is None
    s = spec(data__split={"cv": 5, "test": 0.2})
    assert s.data.split_spec.cv == 5 and s.data.split_spec.valid == 0.0
    assert spec(data__split={"cv": 3, "valid": 0}).data.split_spec.cv == 3  # explicit 0 is fine


def test_input_is_not_modified():
    raw = copy.deepcopy(XGB)
    load_spec(raw, ["model.params.max_depth=3", "data.split.valid=0.3"])
    assert raw == XGB


# ------------------------------------------------------------------------------------ overrides


@pytest.mark.parametrize(
    "item, expected",
    [
        ("model.params.max_depth=8", ("model.params.max_depth", 8)),
        ("model.params.eta=0.1", ("model.params.eta", 0.1)),
        ("data.split.stratify=true", ("data.split.stratify", True)),
        ("data.split.stratify=false", ("data.split.stratify", False)),
        ("data.features=[1,2]", ("data.features", [1, 2])),
        ("data.features=[a, b]", ("data.features", ["a", "b"])),
        ("data.split={valid: 0.1}", ("data.split", {"valid": 0.1})),
        ("data.test_source=null", ("data.test_source", None)),
        ("data.source=builtin:iris", ("data.source", "builtin:iris")),
        ("data.source=s3://bucket/a=1/x.parquet", ("data.source", "s3://bucket/a=1/x.parquet")),
        ("model.params.objective='7'", ("model.params.objective", "7")),
        ("name=", ("name", "")),
        (" name =x", ("name", "x")),
        ("data.source=a: b: c", ("data.source", "a: b: c")),  # not YAML: kept as text
        ("data.source=[unclosed", ("data.source", "[unclosed")),
        ("data.source=2024-02-30", ("data.source", "2024-02-30")),  # YAML date Python refuses
    ],
)
def test_parse_override_reads_yaml_values(item, expected):
    path, value = parse_override(item)
    assert (path, value) == expected and type(value) is type(expected[1])


@pytest.mark.parametrize(
    "item, fragment",
    [
        (
            "model.params.max_depth",
            "--set expects PATH=VALUE (e.g. model.params.max_depth=8); "
            "got 'model.params.max_depth'",
        ),
        ("=8", "--set path must be dotted field names (e.g. model.lr); got ''"),
        ("a..b=1", "--set path must be dotted field names (e.g. model.lr); got 'a..b'"),
        ("a.=1", "got 'a.'"),
        (8, "--set expects PATH=VALUE"),
    ],
)
def test_parse_override_rejects_malformed_items(item, fragment):
    with pytest.raises(SpecError) as info:
        parse_override(item)
    assert fragment in str(info.value)


def test_set_overrides_coerce_types():
    s = load_spec(
        XGB,
        [
            "model.params.max_depth=8",
            "data.split.stratify=true",
            "data.features=[age, income]",
            "model.num_boost_round=7",
            "resources.cpus_per_worker=2.5",
        ],
    )
    assert s.model.params["max_depth"] == 8 and type(s.model.params["max_depth"]) is int
    assert s.data.split_spec.stratify is True
    assert s.data.features == ["age", "income"]
    assert s.model.num_boost_round == 7
    assert s.resources.cpus_per_worker == 2.5


def test_set_override_list_value_reaches_params():
    s = load_spec(XGB, ["model.params.eval_metric=[auc,logloss]", "model.params.weights=[1,2]"])
    assert s.model.params["eval_metric"] == ["auc", "logloss"]
    assert s.model.params["weights"] == [1, 2]


def test_override_creates_missing_sections():
    assert "model" not in XGB
    s = load_spec(XGB, ["model.params.max_depth=3", "output.dir=elsewhere"])
    assert s.model.params == {"max_depth": 3} and s.output.dir == "elsewhere"
    out = apply_overrides({}, {"a.b.c": 1})
    assert out == {"a": {"b": {"c": 1}}}


def test_override_replaces_null_section():
    s = load_spec({**XGB, "model": None}, ["model.num_boost_round=5"])
    assert s.model.num_boost_round == 5


def test_override_through_a_scalar_is_a_spec_error():
    e = error(XGB, ["data.source.x=1"])
    assert str(e) == (
        "--set data.source.x: data.source is a string, not a section, so it has no "
        "field 'x'; got data.source='builtin:breast_cancer'"
    )
    e = error(XGB, ["data.features=[a]", "data.features.first=b"])
    assert "data.features is a list, not a section" in str(e)


def test_kwargs_style_double_underscore_paths():
    out = apply_overrides(XGB, {"model__params__max_depth": 3, "data__split__valid": 0.3})
    assert out["model"] == {"params": {"max_depth": 3}}
    assert out["data"]["split"] == {"valid": 0.3}
    s = spec(model__params__max_depth=3, data__split__valid=0.3)
    assert s.model.params["max_depth"] == 3 and s.data.split_spec.valid == 0.3


def test_later_override_wins_and_a_single_string_is_one_override():
    s = load_spec(XGB, ["model.num_boost_round=5", "model.num_boost_round=9"])
    assert s.model.num_boost_round == 9
    assert load_spec(XGB, "model.num_boost_round=4").model.num_boost_round == 4


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({1: 2}, "an override path must be a dotted string (e.g. model.lr); got 1"),
        ({"a..b": 1}, "an override path must be dotted field names (e.g. model.lr); got 'a..b'"),
        ({"model__": 1}, "got 'model__'"),
    ],
)
def test_bad_override_paths(overrides, fragment):
    assert fragment in str(error(XGB, overrides))


def test_override_can_set_kind_and_fix_a_spec():
    raw = {k: v for k, v in SKL.items() if k != "kind"}
    assert load_spec(raw, ["kind=sklearn"]).kind == "sklearn"
    assert load_spec({**XGB, "name": "../x"}, {"name": "ok"}).name == "ok"


# -------------------------------------------------------------------------------- JSON schema


def test_json_schema_is_a_valid_schema_with_both_kinds():
    schema = json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    json.dumps(schema)  # plain JSON
    assert schema["title"] == "distml job spec"
    assert set(schema["discriminator"]["mapping"]) == set(KINDS)
    consts = {
        s["properties"]["kind"]["const"]
        for s in (schema["$defs"][r["$ref"].split("/")[-1]] for r in schema["oneOf"])
    }
    assert consts == set(KINDS)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_json_schema_accepts_example_specs(path):
    jsonschema.validate(
        yaml.safe_load(path.read_text()), json_schema(), cls=jsonschema.Draft202012Validator
    )


def test_json_schema_accepts_resolved_specs():
    v = jsonschema.Draft202012Validator(json_schema())
    for s in (spec(), spec(SKL), spec(data__split="none"), spec(data__split={"cv": 4})):
        assert not list(v.iter_errors(s.to_dict()))


@pytest.mark.parametrize(
    "change",
    [
        {"name": "../x"},
        {"name": "a..b"},
        {"name": ""},
        {"name": "a" * 129},
        {"kind": "xgbost"},
        {"data": {"source": "x", "spilt": {}}},
        {"data": {"source": "x", "split": {"valid": 1.5}}},
        {"resources": {"num_workers": 0}},
        {"data": {"source": "x", "split": {"seed": 2**32}}},
    ],
)
def test_json_schema_rejects_what_load_spec_rejects(change):
    raw = {**XGB, **change}
    assert not jsonschema.Draft202012Validator(json_schema()).is_valid(raw)
    error(raw)


def test_cli_schema_prints_the_schema(capsys):
    assert main(["schema"]) == 0
    assert json.loads(capsys.readouterr().out) == json_schema()


# ------------------------------------------------------------------------------ error messages
# One sentence: field path, rule, value received, and a fix when there is one.


def test_fraction_out_of_range_names_path_rule_and_value():
    e = error(XGB, {"data.split.valid": 1.5})
    assert str(e) == "data.split.valid must be < 1; got 1.5"  # one problem, not two union branches
    assert "data.split.test must be >= 0; got -0.1" in str(error(XGB, {"data.split.test": -0.1}))


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"data.split.valid": "abc"}, "data.split.valid must be a number; got 'abc'"),
        ({"data.split.valid": True}, "data.split.valid must be a number, not true/false; got True"),
        (
            {"model.num_boost_round": True},
            "model.num_boost_round must be an integer, not true/false; got True",
        ),
        (
            {"model.early_stopping_rounds": False},
            "model.early_stopping_rounds must be an integer, not true/false; got False",
        ),
        (
            {"resources.cpus_per_worker": float("nan")},
            "resources.cpus_per_worker must be a finite number; got nan",
        ),
        (
            {"resources.gpus_per_worker": float("inf")},
            "resources.gpus_per_worker must be a finite number; got inf",
        ),
        ({"resources.cpus_per_worker": 0}, "resources.cpus_per_worker must be > 0; got 0"),
        (
            {"resources.cpus_per_worker": 2048},
            "resources.cpus_per_worker must be <= 1024; got 2048",
        ),
        ({"resources.num_workers": 1.5}, "resources.num_workers must be a whole number; got 1.5"),
        ({"resources.num_workers": "many"}, "resources.num_workers must be an integer; got 'many'"),
        ({"resources.max_failures": -1}, "resources.max_failures must be >= 0; got -1"),
        ({"model.num_boost_round": 0}, "model.num_boost_round must be >= 1; got 0"),
        ({"data.split.cv": 1}, "data.split.cv must be >= 2; got 1"),
        ({"data.split.seed": -1}, "data.split.seed must be >= 0; got -1"),
        (
            {"data.split.seed": 2**32},
            "data.split.seed must be <= 4294967295 (numpy/scikit-learn seeds are 32-bit); got 4294967296",
        ),
        (
            {"data.split.stratify": "maybe"},
            "data.split.stratify must be true or false; got 'maybe'",
        ),
        ({"data.split": "nope"}, "data.split must be a mapping or 'none'; got 'nope'"),
        ({"data.split": 3}, "data.split must be a mapping or 'none'; got 3"),
        ({"data": 5}, "data must be a mapping; got 5"),
        ({"data.source": None}, "data.source must be a string; got None"),
        ({"data.source": ""}, "data.source must not be empty; got ''"),
        ({"data.features": "age"}, "data.features must be a list; got 'age'"),
        (
            {"data.features": ["a", "b", "a"]},
            "data.features must list each column once; got duplicates ['a']",
        ),
        ({"model": None}, "model must be a mapping; got None"),
        ({"model.params": [1]}, "model.params must be a mapping; got [1]"),
        ({"model.params": {1: 2}}, "model.params keys must be strings; got key 1"),
        ({"output.dir": ""}, "output.dir must not be empty; got ''"),
        ({"name": 5}, "name must be a string; got 5"),
    ],
)
def test_single_field_errors(overrides, message):
    assert str(error(XGB, overrides)) == message


def test_huge_values_are_shortened_in_messages():
    e = error(XGB, {"resources.num_workers": 10**5000})  # no repr past 4300 digits
    assert str(e) == "resources.num_workers must be <= 4096; got an integer of about 5000 digits"
    e = error(XGB, {"model.early_stopping_rounds": 2**64, "model.params.big": [10**5000]})
    assert e.details == [
        "model.early_stopping_rounds must be an integer that fits in 64 bits; "
        "got 18446744073709551616",
        "model.params.big[0] must be an integer that fits in 64 bits; "
        "got an integer of about 5000 digits",
    ]
    e = error(XGB, {"data.features": "x" * 1000})
    assert str(e).startswith("data.features must be a list; got 'xxx") and len(str(e)) < 150


def test_unknown_keys_get_did_you_mean_and_the_known_fields():
    e = error(XGB, {"data.spilt": {"valid": 0.1}})
    assert str(e) == (
        "data.spilt is not a known field (known fields of data: source, "
        "test_source, target, features, exclude, categorical, split); "
        "did you mean 'split'?"
    )
    assert "did you mean 'num_boost_round'?" in str(error(XGB, {"model.num_boost_rounds": 5}))
    assert "did you mean 'valid'?" in str(error(XGB, {"data.split.vaild": 0.1}))
    assert "did you mean 'cpus_per_worker'?" in str(error(XGB, {"resources.cpu_per_worker": 2}))
    assert str(error(XGB, {"data.SOURCE": "x"})).endswith("did you mean 'source'?")
    e = error({**XGB, "nmae": "x"})
    assert str(e).startswith("nmae is not a known field (known fields of the spec: name, kind, ")
    assert str(e).endswith("did you mean 'name'?")
    e = error({**XGB, "zzz": 1})
    assert "zzz is not a known field" in str(e) and "did you mean" not in str(e)
    e = error({**XGB, 7: 1})
    assert str(e).startswith(
        "the spec has a key 7 that is not a field name (known fields of the spec: name, kind,"
    )
    e = error(XGB, {"data": {"source": "x", 3: 1}})
    assert str(e).startswith("data has a key 3 that is not a field name (known fields of data: ")


def test_xgboost_fields_are_not_sklearn_fields():
    e = error(SKL, {"model.num_boost_round": 5})
    assert str(e).startswith(
        "model.num_boost_round is not a known field (known fields of "
        "model: estimator, params, scale)"
    )


def test_unknown_kind_lists_the_valid_kinds():
    kinds = ", ".join(sorted(KINDS))
    assert {"sklearn", "xgboost"} <= set(KINDS)
    assert str(error({**XGB, "kind": "xgbost"})) == (
        f"kind must be one of {kinds}; got 'xgbost'; did you mean 'xgboost'?"
    )
    for near in ("XGBoost", " xgboost"):
        assert str(error({**XGB, "kind": near})).endswith(f"got {near!r}; did you mean 'xgboost'?")
    e = error({**XGB, "kind": "torchvision-zzz"})
    assert str(e) == f"kind must be one of {kinds}; got 'torchvision-zzz'"
    assert str(error({k: v for k, v in XGB.items() if k != "kind"})) == (
        f"kind is required; set it to one of {kinds}"
    )
    assert str(error({**XGB, "kind": ["xgboost"]})) == (
        f"kind must be a string, one of {kinds}; got ['xgboost']"
    )


NAME_RULE = (
    "name must be 1 to 128 letters, digits, '.', '_' or '-', start with a letter or "
    "digit and contain no '..'; got "
)


@pytest.mark.parametrize(
    "name",
    ["../x", "a..b", "", "a" * 200, "a/b", ".hidden", "-x", "caf\u00e9", "a b", "x\n", "a\x00"],
)
def test_bad_names_are_rejected(name):
    msg = str(error({**XGB, "name": name}))
    assert msg.startswith(NAME_RULE)
    assert len(msg) < len(NAME_RULE) + 90  # a 200-character name is shortened


@pytest.mark.parametrize("name", ["a", "A.b_c-1", "x" * 128, "2024-01-01", "v1.2"])
def test_good_names(name):
    assert spec(name=name).name == name == check_name(name, "name")


def test_check_name_raises_value_error_for_run_ids():
    with pytest.raises(ValueError, match="run_id must be 1 to 128"):
        check_name("a\n", "run_id")


def test_valid_plus_test_must_leave_training_rows():
    e = error(XGB, {"data.split": {"valid": 0.6, "test": 0.5}})
    assert str(e) == (
        "data.split.valid + data.split.test must be < 1 (some rows must be left to "
        "train on); got 0.6 + 0.5; lower one of them"
    )


def test_cv_with_explicit_valid_names_both_fields():
    e = error(XGB, {"data.split": {"cv": 5, "valid": 0.2}})
    assert str(e) == (
        "data.split.cv and data.split.valid conflict: cross-validation makes its "
        "own validation folds; got cv=5 and valid=0.2; drop valid"
    )


@pytest.mark.parametrize("split", ["none", {"valid": 0}])
def test_early_stopping_needs_a_valid_split(split):
    e = error(XGB, {"data.split": split, "model.early_stopping_rounds": 10})
    assert str(e).startswith("model.early_stopping_rounds needs a validation split;")
    assert "set data.split.valid" in str(e)
    assert spec(model__early_stopping_rounds=10).model.early_stopping_rounds == 10


def test_xgboost_takes_several_workers_but_not_with_cv():
    assert spec(XGB, resources__num_workers=2).resources.num_workers == 2
    assert str(error(XGB, {"resources.num_workers": 2, "data.split": {"cv": 3}})).startswith(
        "data.split.cv and resources.num_workers conflict"
    )


def test_sklearn_estimator_did_you_mean():
    e = error(SKL, {"model.estimator": "random_forest_clasifier"})
    assert str(e).startswith(
        "model.estimator must be a registered short name or a public dotted path inside sklearn."
    )
    assert "got 'random_forest_clasifier'; did you mean 'random_forest_classifier'?" in str(e)
    assert spec(SKL, model__estimator="sklearn.svm.SVC").model.estimator == "sklearn.svm.SVC"
    for bad in ("os.system", "sklearn._private.X", "sklearn.svm"):
        assert f"got {bad!r}" in str(error(SKL, {"model.estimator": bad}))


def test_required_fields():
    assert str(error({k: v for k, v in SKL.items() if k != "model"})) == "model is required"
    assert str(error(SKL, {"model": {"params": {}}})) == "model.estimator is required"
    assert str(error({**XGB, "data": {"target": "y"}})) == "data.source is required"
    e = error({"kind": "xgboost"})
    assert e.message == "the spec has 2 problems"
    assert e.details == ["name is required", "data is required"]
    assert str(e) == "the spec has 2 problems\n  - name is required\n  - data is required"


def test_several_problems_are_all_reported_once_each():
    e = error(
        XGB,
        {"data.split.valid": 2, "resources.num_workers": 0, "model.bogus": 1, "data.features": [1]},
    )
    assert e.message == "the spec has 4 problems"
    assert sorted(e.details) == sorted(
        [
            "data.split.valid must be < 1; got 2",
            "data.features[0] must be a string; got 1",
            "resources.num_workers must be >= 1; got 0",
            "model.bogus is not a known field (known fields of model: params, num_boost_round, "
            "early_stopping_rounds)",
        ]
    )


def test_not_a_spec():
    for bad, word in ((5, "a number"), (None, "null"), ([XGB], "a list"), (b"x", "a bytes object")):
        assert str(error(bad)) == f"a spec must be a path, a mapping or a JobSpec; got {word}"


# --------------------------------------------------------------------------------- spec files


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "name: a\nkind: [xgboost\ndata: {source: x}\n",
            "is not valid YAML at line 3, column 5: expected ',' or ']', but got ':' (in a flow sequence "
            "that starts at line 2, column 7)",
        ),
        (
            "name: a\n\tkind: xgboost\n",
            "is not valid YAML at line 2, column 1: found character '\\t' that cannot start any token",
        ),
        (
            "name: 'a\n",
            "is not valid YAML at line 2, column 1: found unexpected end of stream (in a "
            "quoted scalar that starts at line 1, column 7)",
        ),
        (
            "name: a\nname: b: c\n",
            "is not valid YAML at line 2, column 8: mapping values are not allowed here",
        ),
        ("when: 2024-02-30\n", "is not valid YAML: day is out of range for month"),
        # an explicit tag PyYAML cannot apply (it raised IndexError/KeyError/AttributeError)
        ("name: !!int \n", "is not valid YAML at line 1, column 7: '' is not a valid !!int value"),
        (
            "name: a\nkind: !!bool maybe\n",
            "is not valid YAML at line 2, column 7: 'maybe' is not a valid !!bool value",
        ),
        (
            "when: !!timestamp soon\n",
            "is not valid YAML at line 1, column 7: 'soon' is not a valid !!timestamp value",
        ),
        ("big: " + "9" * 5000 + "\n", "is not valid YAML: a number has too many digits"),
        ("- a\n- b\n", "must hold a mapping at the top level; got a list"),
        ("just text\n", "must hold a mapping at the top level; got a string"),
        ("", "is empty; it must hold a mapping with name, kind and data"),
        ("# only a comment\n", "is empty; it must hold a mapping with name, kind and data"),
    ],
)
def test_malformed_spec_files(tmp_path, text, message):
    p = tmp_path / "spec.yaml"
    p.write_text(text)
    e = error(p)
    assert str(e) == f"spec file {str(p)!r} {message}"


def test_missing_unreadable_and_binary_spec_files(tmp_path):
    missing = tmp_path / "nope.yaml"
    assert str(error(missing)) == f"spec file {str(missing)!r} does not exist"
    assert str(error(tmp_path)) == f"spec file {str(tmp_path)!r} cannot be read: Is a directory"
    b = tmp_path / "b.yaml"
    b.write_bytes(b"name: \xff\xfe\n")
    assert str(error(b)) == (
        f"spec file {str(b)!r} is not UTF-8 text (byte 6); save it as UTF-8 YAML"
    )
    assert str(error("a\x00b.yaml")) == "spec file path 'a\\x00b.yaml' is not a valid path"


def test_file_errors_from_the_yaml_values_are_reported_like_dict_errors(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump({**XGB, "data": {**XGB["data"], "split": {"valid": 1.5}}}))
    assert str(error(p)) == "data.split.valid must be < 1; got 1.5"


def test_messages_are_single_sentences_without_pydantic_text():
    cases = [
        ({**XGB, "data": 1},),
        ({"kind": "sklearn"},),
        ({**XGB, "x": {"y": [1, {}]}},),
        ({**SKL, "model": {"estimator": 1, "params": 2, "scale": "x"}},),
        ({**XGB, "resources": {"num_workers": [], "cpus_per_worker": {}}},),
    ]
    for (raw,) in cases:
        for msg in problems(error(raw)):
            assert msg and "\n" not in msg
            for bad in (
                "pydantic",
                "Input should",
                "Value error",
                "function-after",
                "literal[",
                "SplitSpec",
                "xgboost.data",
                "sklearn.data",
                "[key]",
                "https://",
            ):
                assert bad not in msg, msg


def test_spec_error_is_a_value_error_with_exit_code_2():
    e = error({**XGB, "kind": "nope"})
    assert isinstance(e, ValueError) and e.exit_code == 2
    assert e.to_dict()["message"] == str(e)


# ----------------------------------------------------------------------------------------- CLI


def test_cli_validate_exit_codes_and_message(tmp_path, capsys):
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(yaml.safe_dump(XGB))
    bad.write_text(yaml.safe_dump({**XGB, "data": {**XGB["data"], "spilt": {}}}))
    assert main(["validate", str(good), "--no-data"]) == 0
    assert "ok: churn-xgb [xgboost] is valid" in capsys.readouterr().out
    assert main(["validate", str(bad), "--no-data"]) == 2
    err = capsys.readouterr().err
    assert "distml: error: data.spilt is not a known field" in err and "did you mean 'split'" in err
    assert "Traceback" not in err
    assert main(["validate", str(good), "--no-data", "--set", "data.split.valid=1.5"]) == 2
    assert "data.split.valid must be < 1; got 1.5" in capsys.readouterr().err
    assert main(["validate", str(tmp_path / "missing.yaml"), "--no-data"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_cli_validate_json_error_object(tmp_path, capsys):
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump({**XGB, "kind": "xgbost"}))
    assert main(["validate", str(p), "--no-data", "--json"]) == 2
    out = json.loads(capsys.readouterr().out)
    assert out["status"] == "failed" and out["error"]["type"] == "SpecError"
    assert out["error"]["exit_code"] == 2 and "did you mean 'xgboost'" in out["error"]["message"]


# ------------------------------------------------------------------------------- YAML aliases


def _laughs(levels: int = 8) -> str:
    """A billion-laughs spec: each level lists the previous one 9 times (9**8 leaves)."""
    lines = [
        "name: bomb",
        "kind: xgboost",
        "data: {source: 'builtin:iris', target: target}",
        "a0: &a0 [l,l,l,l,l,l,l,l,l]",
    ]
    lines += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


@pytest.mark.timeout(10)
def test_yaml_alias_bomb_is_refused_naming_the_line(tmp_path, capsys):
    text = _laughs()
    assert len(text.encode()) <= 425
    p = tmp_path / "spec.yaml"
    p.write_text(text)
    with pytest.raises(SpecError) as e:
        load_spec(str(p))
    assert e.value.message == (
        f"{p} line 5: YAML aliases (*a0) are not allowed in a spec; write the value out in full"
    )
    assert main(["validate", str(p), "--no-data"]) == 2
    err = capsys.readouterr().err
    assert "line 5: YAML aliases (*a0) are not allowed in a spec" in err
    assert "Traceback" not in err


def test_yaml_alias_and_merge_key_are_refused_anchors_alone_load(tmp_path):
    p = tmp_path / "spec.yaml"
    base = "name: m\nkind: xgboost\n"
    p.write_text(base + "data: &d {source: 'builtin:iris', target: target}\nmodel:\n  <<: *d\n")
    assert "line 5: YAML aliases (*d) are not allowed" in error(str(p)).message
    p.write_text(base + "data: &d {source: 'builtin:iris', target: target}\n")
    assert load_spec(str(p)).data.target == "target"  # an anchor nobody refers to is inert


def test_set_value_with_an_alias_stays_text():
    """``--set`` reads its value as YAML; an alias there is never expanded."""
    assert parse_override("name=[&a [1, 2], *a]") == ("name", "[&a [1, 2], *a]")
    assert parse_override("model.x=[1, 2]") == ("model.x", [1, 2])


def test_yaml_distml_writes_has_no_aliases_and_reads_back(tmp_path):
    from distml.runtime.artifacts import RunDir
    from distml.spec.yamlio import dump_yaml, load_yaml

    shared = ["a", "b"]
    obj = {"data": {"features": shared}, "model": {"exog": shared, "params": {"p": shared}}}
    assert "&" in yaml.safe_dump(obj)  # what PyYAML alone writes for a repeated object
    text = dump_yaml(obj, sort_keys=False)
    assert "&" not in text and "*" not in text and load_yaml(text) == obj
    run = RunDir(tmp_path, "n", "r1")
    run.prepare()
    written = run.write_yaml("spec.yaml", obj).read_text()
    assert "&" not in written and load_yaml(written) == obj


@pytest.mark.timeout(10)
def test_report_of_a_run_dir_with_an_alias_bomb_returns(tmp_path):
    from distml.report._run import RunView

    (tmp_path / "spec.yaml").write_text(_laughs())
    assert RunView(tmp_path).spec == {}
