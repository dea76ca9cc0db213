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
