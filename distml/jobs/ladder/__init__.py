"""Kind ``ladder``: which model family is worth it, decided by fold-paired evidence.

Every candidate (a small spec of another kind) is fitted on the same cross-validation folds,
the rungs are compared fold by fold with the Nadeau–Bengio corrected resampled t-test
(Holm-adjusted), and the winner is refitted as the run's model. See docs/ladder.md.
"""

from __future__ import annotations

from typing import Any

from distml.jobs.ladder.job import Job
from distml.jobs.ladder.spec import Spec

__all__ = ["Job", "Spec", "load_predictor"]


def load_predictor(run: Any, allow_module: tuple = ()) -> Any:
    """The winner's predictor of a finished ladder run (for ``distml predict``)."""
    import json
    from pathlib import Path

    from distml.errors import DataError

    run = Path(run)
    try:
        manifest = json.loads((run / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(f"run dir {str(run)!r} has no readable manifest.json ({e})") from None
    predictor = Job.load_predictor(run, manifest, tuple(allow_module))
    if predictor is None:
        from distml.jobs.ladder.predictor import read_winner

        kind = read_winner(run)["kind"]
        raise DataError(
            f"run dir {str(run)!r}: the ladder's winner is of kind {kind}, whose "
            "runs distml predict cannot score (no predictor for that kind)"
        )
    return predictor
