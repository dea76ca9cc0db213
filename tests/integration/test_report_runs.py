"""report.html of real runs: a report failure never fails the run; `distml report` rebuilds it;
`distml runs` lists it; a headless Chromium renders it offline with every image loaded."""

from __future__ import annotations

import json
import os

import pytest

import distml
from distml.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = pytest.mark.usefixtures("ray_cluster")


@pytest.fixture(scope="module")
def quick_run(ray_cluster, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    return distml.run(
        f"{ROOT}/jobs/quickstart.yaml", output=out, run_id="q1", model__num_boost_round=40
    )


def test_a_report_failure_does_not_fail_the_run(tmp_path, monkeypatch):
    from distml.report import build

    def broken(*a, **k):
        raise RuntimeError("matplotlib exploded")

    monkeypatch.setattr(build, "render", broken)
    r = distml.run(f"{ROOT}/jobs/sklearn_diabetes.yaml", output=tmp_path)
    assert r.status == "succeeded" and (r.run_dir / "_SUCCESS").is_file()
    assert not (r.run_dir / "report.html").exists()
    assert r.manifest["report"]["error"] == {
        "type": "RuntimeError",
        "message": "matplotlib exploded",
    }
    assert "report.html was not written: RuntimeError" in (r.run_dir / "run.log").read_text()
    monkeypatch.undo()
    assert main(["report", str(r.run_dir)]) == 0  # rebuilt later
    assert (r.run_dir / "report.html").is_file()


def test_report_and_runs_commands_on_a_real_run(quick_run, capsys):
    run_dir = quick_run.run_dir
    (run_dir / "report.html").unlink()
    assert main(["report", str(run_dir), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["sections"] == quick_run.manifest["report"]["sections"]
    assert (run_dir / "report.html").is_file()
    assert main(["runs", "--output", str(run_dir.parent.parent), "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["runs"]
    assert (row["name"], row["run_id"], row["status"], row["kind"], row["report"]) == (
        "quickstart",
        "q1",
        "succeeded",
        "xgboost",
        True,
    )
    assert row["metric"] == "test.roc_auc" and row["value"] == quick_run.metrics["test"]["roc_auc"]
    predictions = quick_run.tables["predictions"]
    assert set(predictions["split"]) == {"valid", "test"}
    assert list(predictions.columns) == ["split", "row", "y_true", "y_pred", "proba_0", "proba_1"]
    assert len(predictions) == sum(quick_run.manifest["rows"][s] for s in ("valid", "test"))


@pytest.mark.skipif(
    not os.path.exists(CHROMIUM),
    reason=f"headless browser test needs Chromium at {CHROMIUM} (apt-get install -y chromium)",
)
def test_report_renders_offline_in_a_headless_browser(quick_run, tmp_path):
    import playwright.sync_api as playwright  # a `dev` dependency: missing, this fails

    url = (quick_run.run_dir / "report.html").resolve().as_uri()
    errors: list[str] = []
    requests: list[str] = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(url, wait_until="load")
            images = page.evaluate(
                "() => Array.from(document.images).map(i => [i.complete, i.naturalWidth])"
            )
            sections = page.evaluate(
                "() => Array.from(document.querySelectorAll('section')).map(s => s.id)"
            )
            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert errors == []
    assert len(images) == 6 and all(done and width > 0 for done, width in images), images
    assert sections == quick_run.manifest["report"]["sections"]
    # nothing but the file itself and its inline images was requested: it works offline
    assert {u.split(":", 1)[0] for u in requests} <= {"file", "data"}
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 50_000
