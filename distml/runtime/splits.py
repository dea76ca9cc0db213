"""Row splits (train/valid/test) and cross-validation folds, the same for every kind, and the
one order of class labels every kind encodes a target with."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Iterable

from distml.errors import DataError

if TYPE_CHECKING:  # heavy: imported where used, so `distml validate` stays light
    import numpy as np

log = logging.getLogger("distml")


def values_text(values: Iterable, limit: int = 5) -> str:
    """A few values for a message (``'a', 'b', … (12 in all)``)."""
    vals = [v.item() if hasattr(v, "item") else v for v in values]
    text = ", ".join(repr(v)[:40] for v in vals[:limit])
    return text + (f", … ({len(vals)} in all)" if len(vals) > limit else "")


def class_order(values: Iterable) -> list:
    """The classes of a target in the one order every kind uses (codes 0..k-1): sorted within
    a type, types grouped by name, so mixed labels order the same everywhere."""
    return sorted(values, key=lambda v: (str(type(v)), v))


def split_indices(y: np.ndarray, split, *, classification: bool) -> dict[str, np.ndarray]:
    """Row indices of train/valid/test for a :class:`SplitSpec` (or None: all rows train).

    Deterministic in ``split.seed``; stratified on ``y`` when ``split.stratify`` is true (or
    unset and ``classification``). Uses scikit-learn's ``train_test_split`` in two steps.
    """
    import numpy as np

    n = len(y)
    idx = np.arange(n)
    if split is None or (split.valid == 0 and split.test == 0):
        return {"train": idx}
    from sklearn.model_selection import train_test_split

    stratify = split.stratify if split.stratify is not None else classification
    out: dict[str, np.ndarray] = {}
    rest = idx
    try:
        if split.test > 0:
            rest, out["test"] = train_test_split(
                idx, test_size=split.test, random_state=split.seed, stratify=y if stratify else None
            )
        if split.valid > 0:
            frac = split.valid / (1 - split.test)
            train, out["valid"] = train_test_split(
                rest,
                test_size=frac,
                random_state=split.seed,
                stratify=y[rest] if stratify else None,
            )
        else:
            train = rest
    except ValueError as e:
        raise DataError(
            f"data.split cannot split {n} rows as asked ({e}); lower the fractions or "
            "set data.split.stratify: false"
        ) from None
    out["train"] = np.sort(train)
    return {
        k: np.sort(v)
        for k, v in sorted(out.items(), key=lambda kv: ["train", "valid", "test"].index(kv[0]))
    }


def cv_indices(
    y: np.ndarray, folds: int, seed: int, *, stratify: bool, labels: list | None = None
) -> list[tuple]:
    """(train, valid) index pairs of seeded (stratified) K-fold cross-validation; ``labels``
    (the real class values of codes ``y``) only make the messages name them."""
    import numpy as np
    from sklearn.model_selection import KFold, StratifiedKFold

    if stratify:
        values, counts = np.unique(y, return_counts=True)
        if counts.min() < folds:
            worst = values[counts.argmin()]
            shown = labels[int(worst)] if labels is not None else worst
            raise DataError(
                f"data.split.cv={folds} needs at least {folds} rows of every class; "
                f"class {values_text([shown])} has {counts.min()}; use fewer "
                "folds or data.split.stratify: false"
            )
    splitter = (StratifiedKFold if stratify else KFold)(
        n_splits=folds, shuffle=True, random_state=seed
    )
    try:
        return list(splitter.split(np.zeros(len(y)), y if stratify else None))
    except ValueError as e:
        raise DataError(f"data.split.cv={folds} cannot be used on these rows: {e}") from None
