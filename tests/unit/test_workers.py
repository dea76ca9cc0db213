"""The worker-group launcher's hook for callers that add Train callbacks (a Tune trial)."""

from __future__ import annotations

from distml.runtime import workers


def test_train_callbacks_come_from_the_innermost_caller_and_are_restored():
    assert workers.train_callbacks() == []
    with workers.use_train_callbacks(lambda: ["outer"]):
        assert workers.train_callbacks() == ["outer"]
        with workers.use_train_callbacks(lambda: []):
            assert workers.train_callbacks() == []
        assert workers.train_callbacks() == ["outer"]
    assert workers.train_callbacks() == []


def test_crash_delay_waits_for_the_train_poll(monkeypatch):
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.4")
    assert workers.crash_delay_s() == 2.5 * 0.4


def test_train_runs_poll_every_quarter_second_unless_the_user_chose(monkeypatch):
    """Train V2 sees a finished group and takes reports only when it polls: distml's groups
    poll every 0.25 s (Ray's 2 s default left a finished group idle for up to 2 s). The
    variable is there while the trainer runs (Train passes it on to its controller and
    workers) and gone after; a value the user set is kept; checkpoints stay 2 s apart."""
    import os

    monkeypatch.delenv(workers.POLL_ENV, raising=False)
    seen = []

    class Trainer:
        def fit(self):
            seen.append(os.environ.get(workers.POLL_ENV))
            seen.append((workers.poll_interval_s(), workers.report_interval_s()))
            return "result"

    assert workers.fit(Trainer()) == "result"
    assert seen == ["0.25", (0.25, 2.0)]
    assert workers.POLL_ENV not in os.environ
    assert workers.crash_delay_s() == 2.5 * 0.25

    monkeypatch.setenv(workers.POLL_ENV, "3")
    seen.clear()
    workers.fit(Trainer())
    assert seen == ["3", (3.0, 3.0)]  # never a report before the last one was taken
    assert os.environ[workers.POLL_ENV] == "3"
