"""The recorded facts of the bundled data sets (distml/runtime/builtin_facts.py) equal what
loading them gives, and the proof that a split is fine never passes a split the full check
refuses: ``distml validate`` skips loading only where that changes no answer."""

from __future__ import annotations

import random
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from distml.errors import DataError
from distml.runtime import builtin_facts, data, datasets
from distml.spec import load_spec
from distml.spec.base import SplitSpec


@pytest.mark.parametrize("key", datasets.BUILTIN_NAMES)
def test_facts_equal_the_loaded_data_set(key):
    assert builtin_facts.describe(key) == builtin_facts.FACTS[key]
    frame = datasets.load_builtin(key)
    info = data.inspect_source(f"builtin:{key}")
    dtypes = {str(c): str(t) for c, t in frame.dtypes.items()}
    assert (info.rows, info.columns) == (len(frame), dtypes)


def _random_split(rng: random.Random) -> SplitSpec | None:
    if rng.random() < 0.1:
        return None
    test = rng.choice([0.0, 0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.8, 0.95])
    cv = rng.choice([None, None, 2, 3, 5, 10])
    valid = rng.choice([0.0, 0.01, 0.1, 0.2, 0.25, 0.4]) if test < 0.6 and not cv else 0.0
    return SplitSpec(
        valid=valid,
        test=test,
        stratify=rng.choice([None, None, True, False]),
        seed=rng.randrange(1000),
        cv=cv,
    )


def _full_check(y: pd.Series, split: SplitSpec | None, task: str) -> bool:
    spec = SimpleNamespace(target="y", source="builtin:x", split_spec=split)
    try:
        data.check_target_task(y, spec, task)
    except DataError:
        return False
    return True


def test_the_proof_never_passes_a_split_the_full_check_refuses():
    rng = random.Random(14)
    proven = refused = 0
    for _ in range(1500):
        k = rng.choice([2, 2, 3, 4])
        counts = [rng.choice([1, 2, 3, 5, 8, 20, 60, 200]) for _ in range(k)]
        y = np.repeat(np.arange(k), counts)
        np.random.default_rng(rng.randrange(1000)).shuffle(y)
        facts = {
            "rows": int(sum(counts)),
            "nan": 0,
            "numeric": True,
            "task": "classification",
            "class_counts": sorted(counts),
        }
        split = _random_split(rng)
        for task in ("classification", "infer"):
            if builtin_facts.target_checks_pass(facts, split, task):
                proven += 1
                assert _full_check(pd.Series(y), split, task), (counts, split, task)
            elif not _full_check(pd.Series(y), split, task):
                refused += 1
    # not vacuous: many draws are proven, and many the full check refuses were not
    assert proven > 600 and refused > 600, (proven, refused)


def test_the_proof_for_a_continuous_target():
    rng = random.Random(7)
    proven = 0
    for _ in range(400):
        n = rng.choice([2, 3, 5, 10, 40, 442])
        y = pd.Series(np.random.default_rng(rng.randrange(99)).normal(size=n))
        facts = {"rows": n, "nan": 0, "numeric": True, "task": "regression", "class_counts": None}
        split = _random_split(rng)
        if builtin_facts.target_checks_pass(facts, split, "regression"):
            proven += 1
            assert _full_check(y, split, "regression"), (n, split)
        # a classification task on it is never proven from a continuous target's facts
        assert not builtin_facts.target_checks_pass(facts, split, "classification")
    assert proven > 150


def _spec(**split):
    return load_spec(
        {
            "name": "q",
            "kind": "xgboost",
            "data": {"source": "builtin:iris", "target": "target", "split": split},
        }
    )


def test_validate_of_a_builtin_loads_nothing_yet_finds_what_loading_finds(monkeypatch):
    """The quick answer equals the full one (no facts: the data set is loaded); a split the
    data cannot make still fails with the full check's sentence."""
    spec = _spec(valid=0.2, test=0.2)
    quick = data.validate_data(spec.data, needs_target=True, task="classification")
    loads = []
    monkeypatch.setattr(datasets, "load_builtin", lambda name: loads.append(name))
    data.validate_data(spec.data, needs_target=True, task="classification")
    assert loads == []
    monkeypatch.undo()
    monkeypatch.setattr(builtin_facts, "FACTS", {})
    assert data.validate_data(spec.data, needs_target=True, task="classification") == quick
    monkeypatch.undo()
    with pytest.raises(DataError, match=r"data.split.cv=30 needs at least 30 rows of every class"):
        data.validate_data(
            _spec(valid=0.0, test=0.5, cv=30).data, needs_target=True, task="classification"
        )
    with pytest.raises(DataError, match=r"data.target: column 'mean_radius' is not in"):
        data.validate_data(
            load_spec(
                {
                    "name": "q",
                    "kind": "xgboost",
                    "data": {"source": "builtin:iris", "target": "mean_radius"},
                }
            ).data,
            needs_target=True,
        )


def test_a_files_target_proven_from_its_counts_never_hides_a_refusal():
    """A parquet/CSV target is read, and when its counts alone prove the split and folds fine
    the split is not drawn (no scikit-learn in the driver); the proof never passes a target
    and split the full check refuses, for class labels of every kind and continuous targets."""
    rng = random.Random(5)
    proven = refused = 0
    for _ in range(1500):
        k = rng.choice([1, 2, 2, 3, 4])
        counts = [rng.choice([1, 2, 3, 5, 8, 20, 60, 200]) for _ in range(k)]
        labels = rng.choice([np.arange(k), np.array(list("abcd"))[:k], np.arange(k) * 1.5])
        y = pd.Series(np.repeat(labels, counts))
        if rng.random() < 0.15:
            y = pd.Series(np.random.default_rng(rng.randrange(99)).normal(size=len(y)))
        y = y.sample(frac=1.0, random_state=rng.randrange(1000)).reset_index(drop=True)
        split = _random_split(rng)
        spec = SimpleNamespace(target="y", source="f.parquet", split_spec=split)
        for task in ("classification", "regression", "infer"):
            if data._target_proven(y, spec, task):
                proven += 1
                assert _full_check(y, split, task), (counts, y.dtype, split, task)
            elif not _full_check(y, split, task):
                refused += 1
    assert proven > 800 and refused > 800, (proven, refused)


def test_validate_of_a_parquet_target_imports_no_sklearn_when_proven(tmp_path):
    """``validate`` of a parquet classification source whose split is provably fine imports
    neither scikit-learn nor scipy; one the data cannot make still fails with the full check's
    sentence."""
    import subprocess
    import sys

    rng = np.random.default_rng(0)
    path = tmp_path / "f.parquet"
    pd.DataFrame({"a": rng.normal(size=2000), "y": rng.integers(0, 2, 2000)}).to_parquet(path)
    code = (
        "import sys\n"
        "from distml.spec import load_spec\n"
        "from distml.runtime.data import validate_data\n"
        f"spec = load_spec({{'name': 'q', 'kind': 'xgboost', 'data': {{'source': {str(path)!r},"
        " 'target': 'y', 'split': {'test': 0.1, 'cv': 5, 'seed': 1}}})\n"
        "validate_data(spec.data, needs_target=True, task='classification')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('sklearn', 'scipy')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
    pd.DataFrame({"a": [0.0] * 6, "y": [0, 0, 0, 0, 0, 1]}).to_parquet(path)
    spec = load_spec({"name": "q", "kind": "xgboost", "data": {"source": str(path), "target": "y"}})
    with pytest.raises(DataError, match=r"class 1 of target column 'y' has 1 row"):
        data.validate_data(spec.data, needs_target=True, task="classification")
