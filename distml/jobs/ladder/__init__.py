"""Kind ``ladder``: which model family is worth it, decided by fold-paired evidence.

Every candidate (a small spec of another kind) is fitted on the same cross-validation folds,
the rungs are compared fold by fold with the Nadeau–Bengio corrected resampled t-test
(Holm-adjusted), and the winner is refitted as the run's model. See docs/ladder.md.
"""

from __future__ import annotations

from distml.jobs.ladder.job import Job
from distml.jobs.ladder.spec import Spec

__all__ = ["Job", "Spec"]
