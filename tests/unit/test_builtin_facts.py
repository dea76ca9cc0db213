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
