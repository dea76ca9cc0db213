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


def test_trial_actor_classes_carry_tunes_variables_instead_of_a_runtime_env(monkeypatch):
    """distml.tune.tuner.env_in_trial_actors: the actor class Tune's cache hands out has no
    ``runtime_env``; its instances set Tune's variables (defaults and the propagated ones the
    driver has) before the trainable's own ``__init__``; Tune's cache is restored after."""
    import os

    from ray.tune.execution import class_cache

    from distml.tune.tuner import env_in_trial_actors

    class Trainable:
        def __init__(self, config):
            self.seen = {
                k: os.environ.get(k) for k in ("PL_DISABLE_FORK", "RAY_CHDIR_TO_TRIAL_DIR")
            }
            self.config = config

    monkeypatch.setenv("RAY_CHDIR_TO_TRIAL_DIR", "0")
    monkeypatch.setenv("PL_DISABLE_FORK", "unset below")  # so the variable is restored after
    monkeypatch.delenv("PL_DISABLE_FORK")
    own = class_cache._ActorClassCache.get
    tunes = own(class_cache._ActorClassCache(), Trainable)
    assert tunes._default_options["runtime_env"]["env_vars"]["RAY_CHDIR_TO_TRIAL_DIR"] == "0"
    with env_in_trial_actors():
        cache = class_cache._ActorClassCache()
        remote = cache.get(Trainable)
        assert cache.get(Trainable) is remote  # registered once per trainable
        assert "runtime_env" not in remote._default_options
        cls = remote.__ray_metadata__.modified_class.__mro__[1]
        assert cls.__name__ == "Trainable" and issubclass(cls, Trainable)
        obj = cls({"x": 1})
        assert obj.seen == {"PL_DISABLE_FORK": "1", "RAY_CHDIR_TO_TRIAL_DIR": "0"}
        assert obj.config == {"x": 1}
    assert class_cache._ActorClassCache.get is own


def test_variables_that_a_trials_children_need_keep_tunes_runtime_env(monkeypatch):
    """AWS credentials (or Train's settings) in the driver must also reach the tasks and Train
    workers a trial starts, which inherit a runtime_env but not the trial's os.environ: then
    the search keeps Tune's own actor class."""
    from ray.tune.execution import class_cache

    from distml.tune.tuner import TRIAL_PROCESS_ONLY, env_in_trial_actors

    class Trainable:
        pass

    assert set(class_cache.DEFAULT_ENV_VARS) <= TRIAL_PROCESS_ONLY
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "id-of-the-driver")
    with env_in_trial_actors():
        remote = class_cache._ActorClassCache().get(Trainable)
    env = remote._default_options["runtime_env"]["env_vars"]
    assert env["AWS_ACCESS_KEY_ID"] == "id-of-the-driver" and env["PL_DISABLE_FORK"] == "1"
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.setenv("RAY_TRAIN_V2_ENABLED", "1")  # read when the worker imports Ray Train
    with env_in_trial_actors():
        remote = class_cache._ActorClassCache().get(Trainable)
    assert remote._default_options["runtime_env"]["env_vars"]["RAY_TRAIN_V2_ENABLED"] == "1"
