"""RELIABILITY.md T7: generated and mutated specs either load or raise SpecError, never anything
else, and every SpecError message is one clean sentence; ``distml validate`` exits 0 or 2.

Specs come from the JSON schema (hypothesis-jsonschema), from a hand-written strategy of valid
specs (cheaper, and closer to real specs), and from mutations of both: misspelled keys, wrong
types, extreme numbers, bad fractions, bad names, missing fields, random nested junk, non-mapping
top levels, ``--set`` strings and broken YAML text; YAML with anchors and aliases (billion-laughs
towers included) and statsmodels formulas that name builtins, write into columns or compute
without bound (refused at validation; evaluated past the guard, they reach no builtin). About
4,100 cases in all, in about 40 s on two cores; ``DISTML_FUZZ_SCALE=3`` runs RELIABILITY.md's
10,000+.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import os
import re
import tempfile
from pathlib import Path

import jsonschema
import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.internal.conjecture import utils as _cu

from distml.cli import main
from distml.errors import SpecError
from distml.jobs import KINDS, spec_classes
from distml.jobs.sklearn import ESTIMATORS
from distml.spec import JobSpec, json_schema, load_spec

# hypothesis-jsonschema 0.23.1 (the latest) calls ``many.more()``, which newer Hypothesis
# replaced by iterating over ``many``; this adapter restores the old call on top of the new one.
if not hasattr(_cu.many, "more"):  # pragma: no cover - depends on the installed Hypothesis
    _STOP = object()

    def _more(self) -> bool:
        it = self.__dict__.get("_compat_iter")
        if it is None:
            self.__enter__()
            it = self._compat_iter = iter(self)
        if next(it, _STOP) is _STOP:
            self.__exit__(None, None, None)
            return False
        return True

    _cu.many.more = _more

from hypothesis_jsonschema import from_schema  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json_schema()
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
EXAMPLES = [yaml.safe_load(p.read_text()) for p in sorted((ROOT / "jobs").glob("*.yaml"))]

_FUZZ = settings(
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
        HealthCheck.large_base_example,
    ],
)


#: ``DISTML_FUZZ_SCALE=3`` runs three times as many examples (~11,000: RELIABILITY.md's 10,000).
SCALE = float(os.environ.get("DISTML_FUZZ_SCALE", "1"))


def fuzz(n: int) -> settings:
    """Settings of one fuzz test: ``n`` examples, no deadline (the first example imports)."""
    return settings(_FUZZ, max_examples=max(1, int(n * SCALE)))


# Text a SpecError message must never contain: pydantic's own wording, URLs and location
# steps (union tags, validator names), tracebacks.
_FORBIDDEN = (
    "pydantic",
    "https://",
    "Input should",
    "Value error,",
    "Assertion failed",
    "function-after",
    "function-before",
    "function-wrap",
    "literal[",
    "[key]",
    "SplitSpec",
    "Traceback",
    "Error(",
    "object at 0x",
)
_QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")
_FIELDS = {name for cls in spec_classes() for name in cls.model_fields}
# "xgboost.data ..."; a kind that is also a spec field (kind ladder's `ladder:`) is no tag
_TAG_PATH = re.compile(rf"({'|'.join(re.escape(k) for k in KINDS if k not in _FIELDS)})[.\[]")


def _keys_of(raw) -> set[str]:
    """Every string key anywhere in a spec as the user wrote it."""
    if isinstance(raw, dict):
        return {k for k in raw if isinstance(k, str) and k} | {
            key for v in raw.values() for key in _keys_of(v)
        }
    if isinstance(raw, list):
        return {key for v in raw for key in _keys_of(v)}
    return set()


def assert_clean_message(msg: str, raw=None, user_keys: tuple[str, ...] = ()) -> None:
    assert isinstance(msg, str) and msg.strip(), "empty SpecError message"
    assert "\n" not in msg, f"multi-line message: {msg!r}"
    assert len(msg) < 2000, f"overlong message ({len(msg)} chars): {msg[:200]!r}"
    outside_quotes = _QUOTED.sub("''", msg)  # quoted parts are the user's keys and values
    for key in user_keys:  # an override's own key is echoed as the field it names
        outside_quotes = outside_quotes.replace(key, "")
    # a key the spec itself has is echoed in the path, unquoted: a generated key may spell a
    # forbidden word (e.g. 'SplitSpec'), which is then the user's, not a leak
    own = _keys_of(raw)
    for bad in _FORBIDDEN:
        assert bad not in outside_quotes or bad in own, f"{bad!r} in message: {msg!r}"
    assert not re.search(r"\.\s+[A-Z]", outside_quotes), f"more than one sentence: {msg!r}"
    if not (isinstance(raw, dict) and any(k in raw for k in KINDS)):  # else a user's key
        assert not _TAG_PATH.match(msg), f"union tag in the path: {msg!r}"


def check(spec, overrides=None) -> JobSpec | None:
    """``load_spec`` returns a JobSpec or raises SpecError with clean sentences; anything else
    propagates and fails the test. A spec that loads is schema-valid and round-trips."""
    try:
        loaded = load_spec(spec, overrides)
    except SpecError as e:
        keys = tuple(o.split("=", 1)[0] for o in overrides or () if isinstance(o, str))
        assert_clean_message(e.message, spec, keys)
        if e.details:
            assert e.message == f"the spec has {len(e.details)} problems"
            assert len(e.details) >= 2 and len(set(e.details)) == len(e.details)
            for d in e.details:
                assert_clean_message(d, spec, keys)
        return None
    assert isinstance(loaded, JobSpec) and loaded.kind in KINDS
    resolved = loaded.to_dict()
    errors = [e.message for e in VALIDATOR.iter_errors(resolved)]
    assert not errors, f"a loaded spec breaks the JSON schema: {errors[:3]}"
    # repr, not ==: NaN in params (xgboost's ``missing: .nan``) must survive, and NaN != NaN.
    assert repr(load_spec(resolved).to_dict()) == repr(resolved)
    split = loaded.data.split_spec
    if split is not None:
        assert 0 <= split.valid < 1 and 0 <= split.test < 1 and split.valid + split.test < 1
        assert split.cv is None or split.valid == 0
    return loaded


# ---------------------------------------------------------------------------------- strategies

_names = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,24}\Z").filter(lambda s: ".." not in s)
_columns = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=8)
_fraction = st.floats(0, 0.45)
_seed = st.integers(0, 2**32 - 1)
_split = st.one_of(
    st.just("none"),
    st.fixed_dictionaries(
        {},
        optional={
            "valid": _fraction,
            "test": _fraction,
            "stratify": st.none() | st.booleans(),
            "seed": _seed,
        },
    ),
    st.fixed_dictionaries(
        {"cv": st.integers(2, 100)},
        optional={"test": _fraction, "seed": _seed, "valid": st.just(0.0)},
    ),
)
_data = st.fixed_dictionaries(
    {
        "source": st.sampled_from(
            [
                "builtin:iris",
                "builtin:diabetes",
                "data/*.parquet",
                "s3://bucket/train.csv",
                "synthetic:classification?rows=10",
            ]
        )
    },
    optional={
        "target": _columns,
        "test_source": st.none() | st.just("test.parquet"),
        "features": st.none() | st.lists(_columns, unique=True, max_size=4),
        "exclude": st.lists(_columns, unique=True, max_size=3),
        "categorical": st.none() | st.lists(_columns, unique=True, max_size=3),
        "split": _split,
    },
)
_resources = st.fixed_dictionaries(
    {},
    optional={
        "num_workers": st.just(1),
        "cpus_per_worker": st.floats(0.25, 64),
        "gpus_per_worker": st.floats(0, 8),
        "max_failures": st.integers(0, 100),
    },
)
_json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**6)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)


def _within_work_bounds(params: dict) -> bool:
    from distml.spec.bounds import check_work_params

    try:
        check_work_params(params)
    except ValueError:
        return False
    return True


_params = st.dictionaries(
    st.sampled_from(
        ["max_depth", "eta", "objective", "eval_metric", "alpha", "n_estimators", "random_state"]
    ),
    _json_scalars | st.lists(_json_scalars, max_size=3),
    max_size=4,
)
_models = {
    "xgboost": st.fixed_dictionaries(
        {},
        optional={
            "params": _params,
            "num_boost_round": st.integers(1, 1000),
            "early_stopping_rounds": st.none() | st.integers(1, 50),
        },
    ),
    "sklearn": st.fixed_dictionaries(
        {
            "estimator": st.sampled_from(
                [*ESTIMATORS, "sklearn.svm.SVC", "sklearn.linear_model.Ridge"]
            )
        },
        # valid sklearn params keep the work-size bounds (distml/spec/bounds.py); values outside
        # them are the mutated specs' business
        optional={"params": _params.filter(_within_work_bounds), "scale": st.booleans()},
    ),
}

#: Kinds with a hand-written model strategy; every other registered kind comes from the schema.
HANDMADE_KINDS = sorted(k for k in _models if k in KINDS)


@st.composite
def handmade_specs(draw) -> dict:
    """Specs shaped like real ones (mostly valid; early stopping without a split is not)."""
    kind = draw(st.sampled_from(HANDMADE_KINDS))
    spec = {"name": draw(_names), "kind": kind, "data": draw(_data)}
    if kind == "sklearn" or draw(st.booleans()):
        spec["model"] = draw(_models[kind])
    for key, strat in (
        ("resources", _resources),
        ("output", st.fixed_dictionaries({"dir": st.sampled_from(["runs", "o"])})),
    ):
        if draw(st.booleans()):
            spec[key] = draw(strat)
    return spec


# from_schema rewrites the schema it is given (it inlines $refs): give it a copy. It costs
# ~20 ms an example and far more inside other strategies (it rebuilds its strategies on every
# draw), so test_schema_generated_specs keeps what it generated in SCHEMA_POOL, and the mutation
# tests (which run after it) sample their schema-made bases from there.
schema_specs = from_schema(copy.deepcopy(SCHEMA))
SCHEMA_POOL: list[dict] = []
_schema_bases = st.deferred(lambda: st.sampled_from(SCHEMA_POOL) if SCHEMA_POOL else schema_specs)
base_specs = st.one_of(handmade_specs(), handmade_specs(), st.sampled_from(EXAMPLES), _schema_bases)


def fresh(strategy: st.SearchStrategy) -> st.SearchStrategy:
    """Draw a deep copy: mutations edit specs in place and must never edit shared constants."""
    return strategy.map(copy.deepcopy)


junk = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=6) | st.integers(-3, 3), inner, max_size=3)
    ),
    max_leaves=8,
)
EXTREMES = [
    -1,
    0,
    1,
    -1.5,
    0.999999,
    1.0,
    1.5,
    2**31,
    2**63,
    2**64 + 1,
    10**30,
    -(10**30),
    10**5000,
    1e308,
    -1e308,
    5e-324,
    math.nan,
    math.inf,
    -math.inf,
    True,
    False,
    "",
    "1",
    "0.2",
    "1e-3",
    "nan",
    "inf",
    "true",
    None,
    [],
    {},
    [1],
    {"a": 1},
]
_extremes = fresh(st.sampled_from(EXTREMES))
BAD_NAMES = [
    "../x",
    "a..b",
    "..",
    ".",
    "",
    "a/b",
    "/abs",
    "a\\b",
    "a" * 129,
    "a" * 500,
    "caf\u00e9",
    "\u00e9t\u00e9",
    "\U0001f600",
    "a b",
    "x\n",
    "\nx",
    "a\x00b",
    "-x",
    ".hidden",
    "_x",
    "a..",
    "a.b..c",
    "C:\\x",
    "~user",
    7,
    None,
    ["a"],
    {"a": 1},
]
BAD_SPLITS = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "valid": st.floats(-0.5, 1.5) | _extremes,
            "test": st.floats(-0.5, 1.5) | _extremes,
            "cv": st.integers(-3, 200) | _extremes,
            "seed": st.integers(-5, 2**33) | _extremes,
            "stratify": _extremes,
        },
    ),
    st.floats(0.5, 0.99).map(lambda v: {"valid": v, "test": 1 - v + 1e-9}),
    st.floats(0.5, 0.99).map(lambda v: {"valid": v, "test": v}),
    st.integers(2, 10).map(lambda n: {"cv": n, "valid": 0.2}),
    fresh(st.sampled_from(["none", "None", "NONE", "", "all", 0, 0.2, None, [0.2, 0.1], True])),
)
KNOWN_PATHS = [
    ("name",),
    ("kind",),
    ("data",),
    ("data", "source"),
    ("data", "test_source"),
    ("data", "target"),
    ("data", "features"),
    ("data", "exclude"),
    ("data", "categorical"),
    ("data", "split"),
    ("data", "split", "valid"),
    ("data", "split", "test"),
    ("data", "split", "seed"),
    ("data", "split", "cv"),
    ("data", "split", "stratify"),
    ("model",),
    ("model", "params"),
    ("model", "num_boost_round"),
    ("model", "early_stopping_rounds"),
    ("model", "estimator"),
    ("model", "scale"),
    ("resources",),
    ("resources", "num_workers"),
    ("resources", "cpus_per_worker"),
    ("resources", "gpus_per_worker"),
    ("resources", "max_failures"),
    ("output",),
    ("output", "dir"),
]
REQUIRED = [("name",), ("kind",), ("data",), ("data", "source"), ("model",), ("model", "estimator")]


def _slots(node, out=None) -> list[tuple]:
    """Every (container, key) in a nested spec, the root's keys included."""
    out = [] if out is None else out
    items = (
        node.items()
        if isinstance(node, dict)
        else enumerate(node)
        if isinstance(node, list)
        else ()
    )
    for k, v in items:
        out.append((node, k))
        _slots(v, out)
    return out


def _set_path(spec: dict, path: tuple, value) -> None:
    node = spec
    for part in path[:-1]:
        nxt = node.get(part)
        if not isinstance(nxt, dict):
            nxt = node[part] = {}
        node = nxt
    node[path[-1]] = value


def _del_path(spec: dict, path: tuple) -> None:
    node = spec
    for part in path[:-1]:
        node = node.get(part)
        if not isinstance(node, dict):
            return
    node.pop(path[-1], None)


@st.composite
def typo(draw, word: str) -> str:
    if not word:
        return draw(st.text(min_size=1, max_size=4))
    i = draw(st.integers(0, len(word) - 1))
    ops = [
        word[:i] + word[i + 1 :],
        word[:i] + word[i] + word[i:],
        word[:i] + draw(st.characters(codec="utf-8", exclude_categories=("Cs",))) + word[i + 1 :],
        word.upper(),
        word + "s",
        word.replace("_", "") or "x",
        "_" + word,
        word + " ",
    ]
    if i + 1 < len(word):
        ops.append(word[:i] + word[i + 1] + word[i] + word[i + 2 :])
    new = draw(st.sampled_from(ops))
    return new if new != word else word + "x"


@st.composite
def mutated_specs(draw, base=base_specs, max_mutations: int = 3) -> dict:
    spec = copy.deepcopy(draw(base))
    for _ in range(draw(st.integers(1, max_mutations))):
        op = draw(
            st.sampled_from(
                [
                    "misspell",
                    "wrong_type",
                    "extreme",
                    "delete",
                    "add_unknown",
                    "bad_name",
                    "bad_kind",
                    "bad_split",
                    "required",
                    "junk_at",
                    "extreme_at",
                ]
            )
        )
        slots = _slots(spec)
        if op in ("misspell", "wrong_type", "extreme", "delete", "add_unknown") and slots:
            node, key = draw(st.sampled_from(slots))
            if op == "misspell" and isinstance(node, dict) and isinstance(key, str):
                node[draw(typo(key))] = node.pop(key)
            elif op == "wrong_type":
                node[key] = draw(junk)
            elif op == "extreme":
                node[key] = draw(_extremes)
            elif op == "delete" and isinstance(node, dict):
                del node[key]
            elif op == "add_unknown" and isinstance(node, dict):
                node[draw(st.text(max_size=12) | st.integers(-2, 2))] = draw(junk)
        elif op == "bad_name":
            spec["name"] = draw(fresh(st.sampled_from(BAD_NAMES)) | st.text(max_size=140))
        elif op == "bad_kind":
            spec["kind"] = draw(
                fresh(
                    st.sampled_from(
                        [
                            "xgbost",
                            "XGBoost",
                            "sk-learn",
                            "",
                            "torch",
                            " xgboost",
                            1,
                            None,
                            ["sklearn"],
                        ]
                    )
                )
                | st.text(max_size=10)
            )
        elif op == "bad_split":
            _set_path(spec, ("data", "split"), draw(BAD_SPLITS))
        elif op == "required":
            _del_path(spec, draw(st.sampled_from(REQUIRED)))
        elif op == "junk_at":
            _set_path(spec, draw(st.sampled_from(KNOWN_PATHS)), draw(junk))
        elif op == "extreme_at":
            _set_path(spec, draw(st.sampled_from(KNOWN_PATHS)), draw(_extremes))
    return spec


non_mappings = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.binary(max_size=8),
    st.lists(junk, max_size=3),
    st.tuples(junk),
    st.sets(st.integers(), max_size=3),
    st.text(max_size=30).filter(lambda s: "\x00" in s or not os.path.exists(s)),
)

# ------------------------------------------------------------------------------------- tests


@fuzz(300)
@given(schema_specs)
def test_schema_generated_specs(spec):
    if len(SCHEMA_POOL) < 1000:
        SCHEMA_POOL.append(copy.deepcopy(spec))
    check(spec)


@fuzz(400)
@given(handmade_specs())
def test_handmade_specs(spec):
    loaded = check(spec)
    es, split = spec.get("model", {}).get("early_stopping_rounds"), spec["data"].get("split")
    if (
        not es
        or split is None
        or (isinstance(split, dict) and "cv" not in split and split.get("valid", 0.2) > 0)
    ):
        assert loaded is not None, "a hand-made valid spec was rejected"


@fuzz(1500)
@given(mutated_specs())
def test_mutated_specs(spec):
    check(spec)


@fuzz(500)
@given(handmade_specs(), st.sampled_from(KNOWN_PATHS), _extremes | junk)
def test_one_bad_field(spec, path, value):
    spec = copy.deepcopy(spec)
    _set_path(spec, path, value)
    loaded = check(spec)
    if isinstance(value, bool) and path[-1] in (
        "valid",
        "test",
        "seed",
        "cv",
        "num_boost_round",
        "early_stopping_rounds",
        "num_workers",
        "cpus_per_worker",
        "gpus_per_worker",
        "max_failures",
    ):
        assert loaded is None  # true is not the number 1
    if path == ("name",) and value in BAD_NAMES:
        assert loaded is None


@fuzz(200)
@given(non_mappings)
def test_non_mapping_top_levels(spec):
    assert check(spec) is None


_override_paths = st.sampled_from([".".join(p) for p in KNOWN_PATHS]) | st.text(max_size=12)
_override_values = st.sampled_from(
    [
        "8",
        "true",
        "[1,2]",
        "{a: 1}",
        "null",
        "",
        "1.5",
        "-1",
        "none",
        ".nan",
        "[unclosed",
        "a: b: c",
        "2024-02-30",
        "9" * 5000,
        "!!python/object:os.system",
        "'x'",
    ]
)
_override_strings = st.one_of(
    st.builds(lambda p, v: f"{p}={v}", _override_paths, _override_values | st.text(max_size=8)),
    st.text(max_size=20),
)


@fuzz(300)
@given(
    st.one_of(handmade_specs(), st.sampled_from(EXAMPLES)),
    st.lists(_override_strings, max_size=3)
    | st.dictionaries(_override_paths.map(lambda p: p.replace(".", "__")), junk, max_size=2),
)
def test_overrides(spec, overrides):
    check(spec, overrides)


@pytest.fixture(scope="module")
def spec_dir():
    with tempfile.TemporaryDirectory(prefix="distml-fuzz-") as d:
        yield Path(d)


@st.composite
def yaml_texts(draw) -> str:
    """YAML of a (mutated) spec with characters inserted or deleted, or arbitrary text."""
    if draw(st.integers(0, 3)) == 0:
        return draw(st.text(max_size=60))
    spec = draw(
        mutated_specs(base=st.one_of(handmade_specs(), st.sampled_from(EXAMPLES)), max_mutations=1)
    )
    try:
        text = yaml.safe_dump(spec, allow_unicode=True)
    except ValueError:  # an int past the digit limit
        text = "name: x\n"
    for _ in range(draw(st.integers(0, 3))):
        i = draw(st.integers(0, len(text)))
        text = (
            (
                text[:i]
                + draw(
                    st.sampled_from(
                        [
                            "[",
                            "]",
                            "{",
                            ":",
                            "\t",
                            "'",
                            '"',
                            "- ",
                            "&a",
                            "*a",
                            "!!int ",
                            "\n  ",
                            "#",
                            "%",
                            "?",
                            "|",
                        ]
                    )
                )
                + text[i:]
            )
            if draw(st.booleans())
            else text[:i] + text[i + 1 :]
        )
    return text


@fuzz(300)
@given(yaml_texts())
def test_spec_files(spec_dir, text):
    path = spec_dir / "spec.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    check(path)


def test_cli_validate_exit_codes(spec_dir):
    """220 invalid and 40 hand-made specs through ``distml validate --no-data``, in-process:
    exit 2 with one clean ``distml: error:`` line for invalid ones, 0 for valid ones."""
    stderr, counts = io.StringIO(), {0: 0, 2: 0}

    def validate(spec, invalid_only: bool) -> None:
        try:
            text = yaml.safe_dump(spec, allow_unicode=True)
        except ValueError:
            assume(False)  # an int with more digits than Python will print
        path = spec_dir / "cli.yaml"
        path.write_text(text, encoding="utf-8")
        expected = 0 if check(path) is not None else 2
        if invalid_only:
            assume(expected == 2)
        stderr.seek(0)
        stderr.truncate()
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            code = main(["validate", str(path), "--no-data"])
        err = stderr.getvalue()
        assert code == expected, err
        if code == 2:
            assert err.startswith("distml: error: ") and "Traceback" not in err
            assert_clean_message(err.splitlines()[0])
        counts[code] += 1

    @fuzz(220)
    @given(mutated_specs())
    def invalid(spec):
        validate(spec, invalid_only=True)

    @fuzz(40)
    @given(handmade_specs())
    def mostly_valid(spec):
        validate(spec, invalid_only=False)

    invalid()
    mostly_valid()
    assert counts[2] >= 200 * min(SCALE, 1) and counts[0] >= 10 * min(SCALE, 1), counts


# ----------------------------------------------------------- YAML aliases and formulas with builtins

_ALIAS_MESSAGE = re.compile(
    r"^\S+ line \d+: YAML aliases \(\*\S+\) are not allowed in a spec; "
    r"write the value out in full$"
)


@st.composite
def aliased_texts(draw) -> str:
    """YAML of a spec in which one list/mapping appears twice (PyYAML writes an anchor and an
    alias for it), sometimes under a billion-laughs tower of aliases."""
    spec = copy.deepcopy(draw(st.one_of(handmade_specs(), st.sampled_from(EXAMPLES))))
    shared = draw(
        st.lists(_json_scalars, min_size=1, max_size=3)
        | st.dictionaries(st.text(min_size=1, max_size=5), _json_scalars, min_size=1, max_size=3)
    )
    for _ in range(draw(st.integers(1, 4))):  # a tower: each level lists the previous 2-9 times
        shared = [shared] * draw(st.integers(2, 9))
    for path in draw(st.lists(st.sampled_from(KNOWN_PATHS), min_size=2, max_size=4, unique=True)):
        _set_path(spec, path, shared)
    try:
        return yaml.safe_dump(spec, allow_unicode=True, sort_keys=draw(st.booleans()))
    except ValueError:  # an int past the digit limit
        assume(False)


@fuzz(100)
@given(aliased_texts())
def test_yaml_aliases_are_refused_with_their_line(spec_dir, text):
    assume("*" in text)  # a path set twice under one parent writes the value once
    path = spec_dir / "alias.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(SpecError) as e:
        load_spec(path)
    assert _ALIAS_MESSAGE.match(e.value.message), e.value.message
    line = int(e.value.message.split(" line ", 1)[1].split(":", 1)[0])
    name = e.value.message.split("(*", 1)[1].split(")", 1)[0]
    assert f"*{name}" in text.splitlines()[line - 1]  # the line it names holds the alias
    assert_clean_message(e.value.message.split(": ", 1)[1])


LONGLEY = ["TOTEMP", "GNPDEFL", "GNP", "UNEMP", "ARMED", "POP", "YEAR"]
BUILTIN_NAMES = [
    "exit",
    "quit",
    "print",
    "open",
    "eval",
    "exec",
    "__import__",
    "getattr",
    "vars",
    "globals",
    "len",
    "sum",
    "copyright",
    "license",
    "__builtins__",
    "ContrastMatrix",
]
_col = st.sampled_from(LONGLEY)
_builtin = st.sampled_from(BUILTIN_NAMES)
_builtin_terms = st.one_of(
    st.builds("C({}, {})".format, _col, _builtin),
    st.builds("I({}({}))".format, _builtin, _col),
    st.builds("I({}())".format, _builtin),
    st.builds('Q("{}")'.format, _builtin),
)
_risky_terms = st.one_of(
    _col,
    _builtin_terms,
    _builtin,
    st.builds("np.{}({}, out={})".format, st.sampled_from(["log", "exp", "sqrt"]), _col, _col),
    st.builds("np.square({}, dtype=object)".format, _col),
    st.builds(
        "I({} ** {})".format,
        _col,
        st.sampled_from(["2", "-1", "0.5", "9**9**9", "GNP", "(1/3)", "101"]),
    ),
    st.builds("I(({} ** 2) ** 2)".format, _col),
    st.builds("I({} * 9**99 * 9**99)".format, _col),
    st.builds("np.power({}, {})".format, _col, st.sampled_from(["2", "9**9", "GNP"])),
)


@fuzz(150)
@given(_col, st.lists(_risky_terms, min_size=1, max_size=4))
def test_formulas_with_builtins_never_pass_validation(lhs, terms):
    """A formula that names a builtin, writes into a column or computes without bound is exit
    2 at validation (with the data: the column check is part of the guard); one that passes
    names only columns."""
    from distml.api import validate
    from distml.errors import DataError
    from distml.jobs.statsmodels import analyze_formula

    formula = f"{lhs} ~ " + " + ".join(terms)
    raw = {
        "name": "f",
        "kind": "statsmodels",
        "data": {"source": "builtin:longley"},
        "model": {"formula": formula},
    }
    try:
        validate(raw)
    except (SpecError, DataError) as e:
        assert e.exit_code == 2 and e.message.startswith("model.formula")
        assert "\n" not in e.message and "Traceback" not in e.message
        return
    assert set(analyze_formula(formula).columns) <= set(LONGLEY)
    assert not any(b in formula for b in BUILTIN_NAMES + ["out=", "dtype=", "9**9"])


@fuzz(60)
@given(st.lists(_col, max_size=2), st.lists(_builtin_terms, min_size=1, max_size=3))
def test_evaluating_a_formula_reaches_no_builtin(cols, terms):
    """The guard bypassed: patsy evaluates the formula in distml's namespace and every builtin
    it names is refused by name — nothing exits, prints or opens."""
    import patsy
    import statsmodels.api as sm

    from distml.jobs.statsmodels import formula_namespace

    data = sm.datasets.longley.load_pandas().data
    formula = "TOTEMP ~ " + " + ".join(cols + terms)
    out = io.StringIO()
    with pytest.raises(Exception) as e, contextlib.redirect_stdout(out):
        patsy.dmatrices(formula, data, eval_env=patsy.EvalEnvironment([formula_namespace()]))
    assert not isinstance(e.value, SystemExit) and out.getvalue() == ""
    assert "is not available in a formula" in str(e.value) or "no column named" in str(e.value)
