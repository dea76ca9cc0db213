"""distml.progress without a cluster: plain lines, throttling, the worker reporter's channel
discipline, the rich display on a terminal-like stream, mode resolution."""

from __future__ import annotations

import io
import logging
import pickle

import pytest

from distml import progress
from distml.progress import Progress, WorkerReporter, resolve_mode


@pytest.fixture
def lines(caplog):
    caplog.set_level(logging.INFO, logger="distml")

    def get() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "distml.progress"]

    return get


def test_off_is_a_no_op():
    p = progress.current()
    assert not p.active and p.worker_reporter() is None and progress.worker_reporter() is None
    c = p.counter("groups", total=3)
    c.advance(2)
    c.done()
    p.stage("train")
    assert p.counters == {} and p.stage_name is None


def test_plain_lines_are_throttled_with_a_last_line(lines, monkeypatch):
    monkeypatch.setattr(progress, "LINE_INTERVAL_S", 3600.0)
    with progress.activate("plain") as p:
        assert progress.current() is p
        p.stage("read", "partitioning by store")
        c = p.counter("groups", total=10, unit="groups")
        for i in range(10):
            c.advance(1, info=f"{i // 5} failed")  # reaching the total ends the counter
        c.done(info="ignored: it ended")
        e = p.counter("epochs", total=None, unit="epochs")
        e.update(completed=3)
        e.update(completed=7)
        e.done(info="early stop")
    assert progress.current() is not p  # restored after the block
    assert lines() == [
        "stage: read (partitioning by store)",
        "groups: 1/10 groups  0 failed",
        "groups: 10/10 groups  1 failed (done)",
        "epochs: 3/? epochs",
        "epochs: 7/? epochs  early stop (done)",
    ]


class _Sink:
    """Stands in for the actor handle: ``push.remote(msg)`` records; may be made to fail."""

    def __init__(self, fail: bool = False):
        self.msgs: list = []
        self.fail = fail
        outer = self

        class _Push:
            def remote(self, msg):
                if outer.fail:
                    raise RuntimeError("actor is dead")
                outer.msgs.append(msg)

        self.push = _Push()


def test_worker_reporter_throttles_and_always_sends_finals():
    sink = _Sink()
    r = WorkerReporter(sink)
    r.stage("train")
    for i in range(1, 101):
        r.update("rounds", i, total=100, info=f"valid-auc={i}")
    r.update("rounds", 100, total=100, info="valid-auc=100", final=True)
    kinds = [m[0] for m in sink.msgs]
    assert kinds[0] == "stage" and sink.msgs[0][1] == "train"
    counters = [m for m in sink.msgs if m[0] == "counter"]
    assert 2 <= len(counters) < 10  # the first, then at most one per 0.2 s, and the final
    assert counters[0][2] == 1 and counters[-1][2] == 100 and counters[-1][-1] is True
    # the driver applies them to its counters
    p = Progress("plain")
    for m in sink.msgs:
        p._apply(m)
    assert p.stage_name == "train"
    c = p.counters["rounds"]
    assert (c.completed, c.total, c.info, c.finished) == (100, 100, "valid-auc=100", True)


def test_worker_reporter_goes_silent_when_the_channel_is_gone():
    sink = _Sink(fail=True)
    r = WorkerReporter(sink)
    r.update("epochs", 1, total=3)  # raises inside: swallowed
    sink.fail = False
    r.update("epochs", 2, total=3, final=True)
    r.stage("evaluate")
    assert sink.msgs == []
    # a reporter shipped to a new task starts fresh (throttle state and deadness are not sent)
    again = pickle.loads(pickle.dumps(WorkerReporter(_PicklableSink())))
    assert again._last == {} and again._dead is False


class _PicklableSink:
    pass


class _TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_rich_display_on_a_terminal(monkeypatch):
    monkeypatch.setenv("TERM", "xterm-256color")
    stream = _TTY()
    logger = logging.getLogger("distml")
    handler = logging.StreamHandler(stream)  # like the CLI's: must print above the panel
    logger.addHandler(handler)
    try:
        with progress.activate("rich", stream=stream) as p:
            assert handler.stream is not stream  # routed through the console meanwhile
            p.stage("train", "search")
            c = p.counter("trials", total=4, unit="trials")
            c.update(completed=2, info="1 running; best valid.auc=0.97")
            logger.warning("a log line")
            c.update(completed=4)
            c.done()
        assert handler.stream is stream
    finally:
        logger.removeHandler(handler)
    out = stream.getvalue()
    assert "\x1b[" in out  # drawn with terminal control sequences
    assert "trials" in out and "4/4" in out and "best valid.auc=0.97" in out
    assert "a log line" in out and "stage: done" in out


def test_resolve_mode(monkeypatch):
    monkeypatch.setenv("TERM", "xterm")
    assert resolve_mode("auto", json_output=True, stream=_TTY()) == "off"
    assert resolve_mode("auto", stream=io.StringIO()) == "plain"
    assert resolve_mode("auto", stream=_TTY()) == "rich"
    assert resolve_mode("plain", json_output=True) == "plain"  # asked for explicitly
    with pytest.raises(ValueError, match="rich, plain or off"):
        Progress("fancy")


def test_stages_are_announced_once_and_in_order(lines):
    """Issue 18 #14: the driver enters ``train`` before the task reports ``read`` and ``train``;
    the display said ``stage: train → read → train``. Each stage now appears once, in order;
    a late or repeated one only adds its detail under the current stage."""
    with progress.activate("plain") as p:
        for name, detail in [
            ("validate", ""),
            ("cluster", ""),
            ("train", ""),
            ("read", ""),
            ("train", ""),
            ("train", "k-means refine pass"),
            ("evaluate", ""),
            ("read", "late worker message"),
            ("write", ""),
            ("report", ""),
        ]:
            p.stage(name, detail)
        assert p.stage_name == "report"
        p.stage("validate")  # a second run in the same block starts over
        p.stage("cluster")
    stages = [ln for ln in lines() if ln.startswith("stage: ")]
    assert stages == [
        "stage: validate",
        "stage: cluster",
        "stage: train",
        "stage: evaluate",
        "stage: write",
        "stage: report",
        "stage: validate",
        "stage: cluster",
    ]
    assert "train: k-means refine pass" in lines() and "evaluate: late worker message" in lines()


def test_worker_stage_messages_follow_the_same_rule(lines):
    with progress.activate("plain") as p:
        p.stage("train")
        for msg in [("stage", "read", ""), ("stage", "train", ""), ("stage", "evaluate", "")]:
            p._apply(msg)
    assert [ln for ln in lines() if ln.startswith("stage: ")] == ["stage: train", "stage: evaluate"]
