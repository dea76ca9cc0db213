"""The warm runner's own rules, without a cluster: when runners are used, one holder at a time,
the lease of a holder that never calls, retirement on user code, and the code identity."""

from __future__ import annotations

import os
import sys
import time
from types import SimpleNamespace

import pytest

from distml.runtime import runners
from tests.fresh import stdout_of


def _cluster(mode: str, cpus: float = 2.0):
    return SimpleNamespace(mode=mode, resources={"CPU": cpus})


def test_only_a_warm_cluster_wants_runners(monkeypatch):
    monkeypatch.delenv(runners.ENV, raising=False)
    assert runners.wanted(None) == 0
    assert runners.wanted(_cluster("local")) == 0 and runners.wanted(_cluster("connected")) == 0
    assert runners.wanted(_cluster("warm", 2)) == 2
    assert runners.wanted(_cluster("warm", 64)) == runners.MAX_RUNNERS
    monkeypatch.setenv(runners.ENV, "0")
    assert runners.wanted(_cluster("warm", 2)) == 0
    monkeypatch.setenv(runners.ENV, "3")
    assert runners.wanted(_cluster("warm", 2)) == 3


def _settle(r: runners.Runner) -> None:
    deadline = time.monotonic() + 10
    while r.calling and time.monotonic() < deadline:  # tidied in a thread after the call
        time.sleep(0.01)
    assert not r.calling


def test_one_holder_at_a_time_and_a_lease_that_expires(monkeypatch):
    r = runners.Runner()
    a = r.acquire("run-a")
    assert a["ok"] and a["calls"] == 0 and a["identity"] == runners.identity()
    assert r.acquire("run-b") == {"ok": False, "why": "busy"}
    with pytest.raises(RuntimeError, match="without holding it"):
        r.call("run-b", sum, ([1, 2],), 1)
    assert r.call("run-a", sum, ([1, 2],), 1) == 3
    _settle(r)
    assert r.acquire("run-b")["ok"]  # free again after the call
    r.release("run-b")
    assert r.acquire("run-c")["ok"]
    # run-c never calls (its driver died): after the lease another run may take the runner
    monkeypatch.setattr(runners, "LEASE_S", 0.0)
    assert r.acquire("run-d")["ok"]


def test_a_call_that_imports_user_code_retires_the_runner(tmp_path, monkeypatch):
    (tmp_path / "distml_user_mod_x.py").write_text("VALUE = 7\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    r = runners.Runner()
    assert r.acquire("h")["ok"]

    def uses_user_code():
        import distml_user_mod_x

        return distml_user_mod_x.VALUE

    try:
        assert r.call("h", uses_user_code, (), 1) == 7
        _settle(r)
    finally:
        sys.modules.pop("distml_user_mod_x", None)
    ans = r.acquire("next")
    assert not ans["ok"] and ans["retired"] and "distml_user_mod_x" in ans["why"]


def test_installed_modules_do_not_retire_it():
    r = runners.Runner()
    assert r.acquire("h")["ok"]
    sys.modules.pop("json.tool", None)

    def uses_stdlib():
        import json.tool  # noqa: F401 - a module of the standard library

        return 1

    r.call("h", uses_stdlib, (), 1)
    _settle(r)
    assert r.acquire("next")["ok"]


def test_the_identity_follows_the_source(tmp_path):
    before = runners.identity()
    assert before == runners.identity()
    src = runners.PACKAGE / "runtime" / "runners.py"
    st = src.stat()
    try:
        os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
        after = runners.identity()
    finally:
        os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert after["source"] != before["source"]
    assert {k: v for k, v in after.items() if k != "source"} == {
        k: v for k, v in before.items() if k != "source"
    }
    assert runners._diff(after, before) == "source"


def test_a_result_is_taken_with_pandas_imported_in_this_thread():
    """``runners.result`` imports pandas before ``ray.get``: the import overlaps the task
    instead of following it when the result (frames) is deserialised, and it happens in the
    calling thread, which holds no import lock there. A fresh process, without pandas; its
    ``ray`` is a stand-in that records what ``get`` saw."""
    code = (
        "import sys, types\n"
        "seen = []\n"
        "fake = types.ModuleType('ray')\n"
        "fake.get = lambda ref: seen.append('pandas' in sys.modules) or ref * 2\n"
        "sys.modules['ray'] = fake\n"
        "from distml.runtime import runners\n"
        "assert 'pandas' not in sys.modules\n"
        "print(runners.result(21), seen)\n"
    )
    out = stdout_of(code)
    assert out == "42 [True]", out
