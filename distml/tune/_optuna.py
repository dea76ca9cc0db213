"""Optuna TPE as distml's searches use it: a trial that the scheduler stopped is told to
Optuna as *pruned*, not complete.

Ray's ``OptunaSearch`` tells Optuna every trial that ended without an error as complete, with
its last reported value. Under ASHA most trials end at the first rung (25 of 100 xgboost
rounds), and TPE then learned their 25-round loss as a configuration's final score: slow
learners (small ``eta``) looked bad and the search drifted toward configurations that are good
early. Optuna's own pruning tells such trials as pruned; TPE ranks pruned trials after the
complete ones (by the step they reached, then their value), which is what this does. A trial's
last report says whether it finished: distml's trial sessions send ``final: True`` with their
last report (:mod:`distml.tune.session`), so a trial that ended on a ``final: False`` report
was stopped by the scheduler (or by the search's time budget). A trial that failed inside
distml's session reports ``failed: True`` with no figure (``TrialSession.fail``): it reaches
Optuna as failed (Ray's searcher told it complete with NaN, which Optuna refuses, and left it
running there).

Imported only when a search uses Optuna (it imports Optuna and Ray Tune).
"""

from __future__ import annotations

import logging

from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

log = logging.getLogger("distml")


class OptunaTPE(OptunaSearch):
    """``OptunaSearch`` that tells Optuna a stopped trial as pruned (its intermediate values,
    sent with every report, stay with it) and a failed one as failed."""

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        trials = getattr(self, "_ot_trials", None)
        study = getattr(self, "_ot_study", None)
        told = getattr(self, "_completed_trials", None)
        result = result if isinstance(result, dict) else None
        failed = bool(result and result.get("failed"))  # distml's own failure report
        stopped = not error and result is not None and result.get("final") is False
        if not (failed or stopped) or trials is None or study is None or told is None:
            return super().on_trial_complete(trial_id, result, error)
        if trial_id not in trials or trial_id in told:
            return super().on_trial_complete(trial_id, result, error)
        try:
            study.tell(trials[trial_id], state=TrialState.FAIL if failed else TrialState.PRUNED)
        except Exception as exc:  # noqa: BLE001 - as Ray's own tell: a warning, the search goes on
            log.warning("optuna: %s", exc)
        told.add(trial_id)
        return None
