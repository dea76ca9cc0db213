"""distml's Optuna TPE (``distml.tune._optuna.OptunaTPE``): a trial the scheduler stopped
(its last report not ``final``) reaches Optuna as pruned, with its intermediate values; a
finished trial as complete; a failed one as failed. And it changes what TPE learns: TPE
ranks the pruned trials after every complete one. With Ray's own ``OptunaSearch`` the
stopped trials' early values were taken as their final scores. No cluster."""

from __future__ import annotations

import pickle

import pytest

optuna = pytest.importorskip("optuna")
from ray import tune  # noqa: E402
from ray.tune.search.optuna import OptunaSearch  # noqa: E402

from distml.tune._optuna import OptunaTPE  # noqa: E402
from distml.tune.tuner import make_searcher  # noqa: E402

State = optuna.trial.TrialState


def _searcher(cls=OptunaTPE):
    return cls(space={"eta": tune.loguniform(0.01, 0.3)}, metric="loss", mode="min", seed=3)


def _run(s, trial_id: str, losses: list[float], final: bool | None, error: bool = False):
    assert s.suggest(trial_id) is not None
    last = None
    for i, loss in enumerate(losses, start=1):
        last = {"loss": loss, "training_iteration": i, "iteration": 25 * i, "final": False}
        s.on_trial_result(trial_id, last)
    if final is not None:
        last = {**last, "final": final}
    s.on_trial_complete(trial_id, None if error else last, error=error)


def test_stopped_finished_and_failed_trials_reach_optuna_as_such():
    s = _searcher()
    _run(s, "stopped", [0.60], final=False)
    _run(s, "finished", [0.60, 0.45, 0.40, 0.35], final=True)
    _run(s, "failed", [0.70], final=None, error=True)
    trials = {t.number: t for t in s._ot_study.trials}
    assert [trials[i].state for i in range(3)] == [State.PRUNED, State.COMPLETE, State.FAIL]
    assert trials[0].intermediate_values == {1: 0.60}  # kept with the pruned trial
    assert trials[1].value == pytest.approx(0.35)
    # a trial that failed inside distml's session: its report says so, with no figure
    assert s.suggest("session-failed") is not None
    s.on_trial_complete(
        "session-failed", {"loss": float("nan"), "final": True, "failed": True, "error": "x"}
    )
    assert s._ot_study.trials[3].state == State.FAIL
    # a second completion of a told trial changes nothing (as Ray's own searcher)
    s.on_trial_complete("stopped", {"loss": 0.1, "final": True})
    assert s._ot_study.trials[0].state == State.PRUNED


def test_tpe_ranks_a_stopped_trial_after_every_finished_one():
    """The point of it: a stopped trial's early loss (0.30 after 25 rounds) is not taken as
    better than a finished trial's 0.35; Ray's OptunaSearch told it complete at 0.30 and TPE
    then took it for the best configuration."""
    ours, rays = _searcher(), _searcher(OptunaSearch)
    for s in (ours, rays):
        _run(s, "early", [0.30], final=False)
        _run(s, "full", [0.5, 0.4, 0.37, 0.35], final=True)
    complete = [t for t in ours._ot_study.trials if t.state == State.COMPLETE]
    assert len(complete) == 1 and ours._ot_study.best_trial.value == pytest.approx(0.35)
    assert rays._ot_study.best_trial.value == pytest.approx(0.30)  # what it learned before


def test_the_run_uses_it_and_it_pickles():
    """make_searcher's optuna search is this class (under Tune's concurrency limit), and it
    pickles by reference, as Tune saves its search state."""
    limited = make_searcher("optuna", seed=1, concurrency=2)
    assert type(limited.searcher) is OptunaTPE
    assert type(pickle.loads(pickle.dumps(_searcher()))) is OptunaTPE
