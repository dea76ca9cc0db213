"""A distml search ends without Tune's graceful stop of its idle actors once every trial has
ended (distml.tune.tuner.quick_end); otherwise Tune's own end runs. The real search is in
tests/integration/test_tune.py (its actors are killed, not stopped one by one)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from distml.tune.tuner import quick_end, tune_env

tune_controller = pytest.importorskip("ray.tune.execution.tune_controller")
from ray.tune.experiment import Trial  # noqa: E402

TuneController = tune_controller.TuneController


class FakeController:
    def __init__(self, statuses):
        self.trials = [SimpleNamespace(status=s) for s in statuses]
        self._actor_to_trial = {"a1": self.trials[0]}
        self.calls = []
        self._actor_manager = SimpleNamespace(cleanup=lambda: self.calls.append("kill all"))

    def get_trials(self):
        return self.trials

    def _schedule_trial_stop(self, trial):
        self.calls.append(("stop", trial.status))

    def _cleanup_cached_actors(self, force_all=False):
        self.calls.append(("flush cache", force_all))


def test_ended_trials_remove_the_actors_at_once_others_keep_tunes_end(monkeypatch):
    monkeypatch.setattr(TuneController, "_cleanup_trials", lambda self: self.calls.append("tune"))
    own = TuneController._cleanup_trials
    with quick_end():
        patched = TuneController._cleanup_trials
        assert patched is not own
        done = FakeController([Trial.TERMINATED, Trial.ERROR])
        patched(done)
        assert done.calls == [("stop", Trial.TERMINATED), ("flush cache", True), "kill all"]
        running = FakeController([Trial.TERMINATED, Trial.RUNNING])
        patched(running)
        assert running.calls == ["tune"]  # interrupted or still running: Tune's graceful end
    assert TuneController._cleanup_trials is own


def test_tune_env_applies_the_quick_end_and_restores_it():
    own = TuneController._cleanup_trials
    with tune_env():
        assert TuneController._cleanup_trials is not own
    assert TuneController._cleanup_trials is own
    with pytest.raises(RuntimeError):
        with tune_env():
            raise RuntimeError("search failed")
    assert TuneController._cleanup_trials is own
