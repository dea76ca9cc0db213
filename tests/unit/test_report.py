"""report.html from hand-made run directories (no cluster): sections by table, escaping, a
section that fails, `distml runs` and `distml report` on the command line."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from distml.cli import main
from distml.errors import SpecError
from distml.report import build_report, format_runs, list_runs, report_sections
from distml.report.runs import key_metric
from tests.fresh import stdout_of


def make_run(
    root: Path,
    name: str,
    run_id: str = "r1",
    *,
    kind: str = "xgboost",
    tables: dict | None = None,
    metrics: dict | None = None,
    spec: dict | None = None,
    manifest: dict | None = None,
    success: bool = True,
    texts: dict | None = None,
) -> Path:
    run = root / name / run_id
    (run / "tables").mkdir(parents=True)
    m = {
        "name": name,
        "kind": kind,
        "run_id": run_id,
        "status": "succeeded" if success else "running",
        "started_at": 1_700_000_000.0,
        "finished_at": 1_700_000_012.5,
        "timings": {"total_s": 12.5},
        "versions": {"python": "3.11"},
        "data": {"source": {"source": "builtin:x", "rows": 100}},
        "cluster": {"mode": "existing", "resources": {"CPU": 2.0}},
        **(manifest or {}),
    }
    (run / "manifest.json").write_text(json.dumps(m))
    (run / "metrics.json").write_text(json.dumps(metrics or {}))
    (run / "spec.yaml").write_text(yaml.safe_dump(spec or {"name": name, "kind": kind}))
    for tname, frame in (tables or {}).items():
        frame.to_parquet(run / "tables" / f"{tname}.parquet")
    for rel, text in (texts or {}).items():
        (run / rel).write_text(text)
    if success:  # as distml finishes a run: digests in the manifest, then _SUCCESS
        from distml.runtime.artifacts import RunDir

        RunDir(root, name, run_id).mark_success(m)
    return run


def _classification_tables(labels=("no", "yes"), n=200, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    k = len(labels)
    proba = rng.dirichlet(np.ones(k), size=n)
    y_true = np.array(labels, dtype=object)[rng.integers(0, k, n)]
    pred = pd.DataFrame(
        {
            "split": np.where(np.arange(n) < n // 2, "valid", "test"),
            "row": np.arange(n),
            "y_true": y_true,
            "y_pred": np.array(labels, dtype=object)[proba.argmax(1)],
        }
    )
    for j, c in enumerate(labels):
        pred[f"proba_{c}"] = proba[:, j]
    cm = pd.DataFrame(
        [
            {"split": s, "actual": a, "predicted": p, "count": 3}
            for s in ("valid", "test")
            for a in labels
            for p in labels
        ]
    )
    lc = pd.DataFrame(
        [
            {"iteration": i, "split": s, "metric": "logloss", "value": 1 / (i + 1)}
            for s in ("train", "valid")
            for i in range(20)
        ]
    )
    return {"predictions": pred, "confusion_matrix": cm, "learning_curve": lc}


def _ids(page: str) -> list[str]:
    return re.findall(r"<section id='([^']+)'>", page)


def test_torch_like_kind_gets_sections_from_its_tables(tmp_path):
    """A kind the report has never heard of, writing the shared tables (feature-less)."""
    run = make_run(
        tmp_path,
        "net",
        kind="torch",
        tables=_classification_tables(),
        manifest={"task": "classification"},
        metrics={"valid": {"accuracy": 0.5}, "best_iteration": 7},
    )
    built = build_report(run)
    assert built["errors"] == []
    expected = [
        "overview",
        "metrics",
        "confusion_matrix",
        "roc_curve",
        "precision_recall",
        "calibration",
        "learning_curve",
        "artifacts",
        "provenance",
    ]
    assert built["sections"] == expected == report_sections(run)
    page = (run / "report.html").read_text()
    assert _ids(page) == expected
    assert "<script" not in page and "http" not in page.replace("http-equiv", "")
    for b64 in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page):
        import base64

        assert base64.b64decode(b64)[:8] == b"\x89PNG\r\n\x1a\n"


def test_multiclass_and_regression_sections(tmp_path):
    run = make_run(
        tmp_path,
        "iris",
        kind="sklearn",
        manifest={"task": "classification"},
        metrics={"test": {"accuracy": 0.9}},
        tables={
            k: v
            for k, v in _classification_tables(("a", "b", "c")).items()
            if k != "learning_curve"
        }
        | {"feature_importance": pd.DataFrame({"feature": ["x", "y"], "importance": [0.7, 0.3]})},
    )
    assert build_report(run)["sections"] == [
        "overview",
        "metrics",
        "confusion_matrix",
        "roc_curve",
        "precision_recall",
        "calibration",
        "feature_importance",
        "artifacts",
        "provenance",
    ]
    rng = np.random.default_rng(1)
    y = rng.normal(size=300)
    reg = make_run(
        tmp_path,
        "ridge",
        kind="sklearn",
        manifest={"task": "regression"},
        metrics={"valid": {"rmse": 0.3, "r2": 0.8}},
        tables={
            "predictions": pd.DataFrame(
                {
                    "split": "valid",
                    "row": range(300),
                    "y_true": y,
                    "y_pred": y + rng.normal(size=300),
                }
            )
        },
    )
    assert build_report(reg)["sections"] == [
        "overview",
        "metrics",
        "predicted_vs_actual",
        "residuals",
        "artifacts",
        "provenance",
    ]


def test_text_from_spec_and_data_is_escaped(tmp_path):
    evil = "<script>alert(1)</script>"
    run = make_run(
        tmp_path,
        "esc",
        manifest={"task": "classification", "error": {"type": "X", "message": evil}},
        spec={"name": "esc", "kind": "xgboost", "data": {"target": evil}},
        tables={
            **_classification_tables(("<b>", "a&b")),
            "feature_importance": pd.DataFrame({"feature": [evil], "importance": [1.0]}),
        },
    )
    page = (Path(build_report(run)["path"])).read_text()
    assert "<script" not in page and "<b>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_statsmodels_single_many_and_forecast(tmp_path):
    coef = pd.DataFrame(
        {
            "term": ["Intercept", "x"],
            "estimate": [1.0, 2.0],
            "std_error": [0.1, 0.2],
            "statistic": [10.0, 10.0],
            "p_value": [0.0, 0.01],
            "ci_low": [0.8, 1.6],
            "ci_high": [1.2, 2.4],
        }
    )
    stats = pd.DataFrame({"nobs": [50.0], "r_squared": [0.9], "converged": [True], "error": [None]})
    fc = pd.DataFrame(
        {
            "step": [1, 2, 3],
            "time": [2001, 2002, 2003],
            "mean": [1.0, 2.0, 3.0],
            "std_error": [0.1] * 3,
            "ci_low": [0.5, 1.5, 2.5],
            "ci_high": [1.5, 2.5, 3.5],
        }
    )
    single = make_run(
        tmp_path,
        "ols",
        kind="statsmodels",
        spec={"model": {"alpha": 0.05}},
        metrics={"r_squared": 0.9},
        tables={"coefficients": coef, "model_stats": stats, "forecast": fc},
        texts={"summary.txt": "OLS Regression Results"},
    )
    assert build_report(single)["sections"] == [
        "overview",
        "metrics",
        "coefficients",
        "fit_statistics",
        "forecast",
        "summary",
        "artifacts",
        "provenance",
    ]
    groups = [f"g{i}" for i in range(6)]
    many_coef = pd.concat(
        [coef.assign(store=g, estimate=coef["estimate"] + i) for i, g in enumerate(groups[:5])],
        ignore_index=True,
    )
    many_coef = many_coef[["store", *coef.columns]]
    many_stats = pd.DataFrame(
        {
            "store": groups,
            "nobs": 20.0,
            "r_squared": np.linspace(0.1, 0.9, 6),
            "converged": [True] * 4 + [False, False],
            "error": [None] * 5 + ["LinAlgError: <singular>"],
        }
    )
    many = make_run(
        tmp_path,
        "per-store",
        kind="statsmodels",
        spec={"group_by": ["store"]},
        metrics={"n_groups": 6},
        tables={"coefficients": many_coef, "model_stats": many_stats},
    )
    assert build_report(many)["sections"] == [
        "overview",
        "metrics",
        "coefficient_distribution",
        "group_fits",
        "artifacts",
        "provenance",
    ]
    page = (many / "report.html").read_text()
    group_fits = page.split("<section id='group_fits'>")[1].split("</section>")[0]
    assert "g5" in group_fits and "LinAlgError: &lt;singular&gt;" in group_fits
    assert "groups whose fit did not converge" in group_fits and "g4" in group_fits


def test_search_pca_kmeans_sections(tmp_path):
    rng = np.random.default_rng(0)
    trials = pd.DataFrame(
        {
            "trial_id": [f"trial_{i:04d}" for i in range(8)],
            "status": ["completed"] * 7 + ["failed"],
            "model.params.max_depth": rng.integers(2, 8, 8),
            "model.params.criterion": ["gini", "entropy"] * 4,
            "valid.accuracy": list(rng.uniform(0.5, 1, 7)) + [np.nan],
        }
    )
    spec = {
        "tune": {
            "metric": "valid.accuracy",
            "mode": "max",
            "space": {
                "model.params.max_depth": {"randint": [2, 8]},
                "model.params.criterion": {"choice": ["gini", "entropy"]},
            },
        }
    }
    run = make_run(
        tmp_path,
        "search",
        kind="sklearn",
        spec=spec,
        tables={"trials": trials},
        metrics={"tune": {"metric": "valid.accuracy", "mode": "max", "best_value": 0.9}},
    )
    built = build_report(run)
    assert built["errors"] == []
    assert built["sections"] == [
        "overview",
        "metrics",
        "trials",
        "parameter_importance",
        "parallel_coordinates",
        "artifacts",
        "provenance",
    ]
    comp = pd.DataFrame(
        {
            "component": [0, 1, 2],
            "explained_variance": [3.0, 2.0, 1.0],
            "explained_variance_ratio": [0.5, 0.3, 0.2],
            "a": [1.0, 0, 0],
            "b": [0, 1.0, 0],
            "c": [0, 0, 1.0],
        }
    )
    pca = make_run(
        tmp_path,
        "pca",
        kind="pca",
        tables={"components": comp},
        metrics={"explained_variance_ratio": [0.5, 0.3, 0.2], "explained_variance_ratio_sum": 1.0},
    )
    assert build_report(pca)["sections"] == [
        "overview",
        "metrics",
        "scree",
        "loadings",
        "artifacts",
        "provenance",
    ]
    centers = pd.DataFrame(
        {
            "cluster": [0, 1, 2],
            "size": [10, 20, 30],
            "a": [0.0, 1, 2],
            "b": [1.0, 0, 3],
            "c": [2.0, 2, 0],
        }
    )
    hist = pd.DataFrame(
        {
            "pass": [1, 2],
            "kind": "minibatch",
            "center_shift": [1.0, 1e-5],
            "inertia_while_assigning": [5.0, 4.0],
            "rows": 60,
            "reseeded": 0,
        }
    )
    km = make_run(
        tmp_path,
        "km",
        kind="kmeans",
        metrics={"inertia": 4.0},
        tables={"centers": centers, "pass_history": hist},
    )
    assert build_report(km)["sections"] == [
        "overview",
        "metrics",
        "cluster_sizes",
        "cluster_centers",
        "pass_history",
        "artifacts",
        "provenance",
    ]


def test_a_section_that_fails_becomes_a_note(tmp_path, monkeypatch):
    from distml.report import _supervised

    def broken(fig):
        raise RuntimeError("no <canvas>")

    monkeypatch.setattr(_supervised, "png", broken)  # every supervised plot fails
    run = make_run(
        tmp_path,
        "bad",
        tables=_classification_tables(),
        metrics={"x": 1},
        manifest={"task": "classification"},
    )
    built = build_report(run)
    assert built["sections"][:3] == ["overview", "metrics", "confusion_matrix-error"]
    assert built["sections"][-2:] == ["artifacts", "provenance"]
    assert "no &lt;canvas&gt;" in (run / "report.html").read_text()
    lc = pd.DataFrame(
        {"iteration": [0, 1], "split": "train", "metric": "rmse", "value": [1.0, 0.5]}
    )
    monkeypatch.undo()
    run = make_run(tmp_path, "bad2", tables={"learning_curve": lc.drop(columns="split")})
    built = build_report(run)
    assert "learning_curve-error" in built["sections"]
    assert len(built["errors"]) == 1 and built["errors"][0].startswith("learning_curve:")
    assert "could not be drawn" in (run / "report.html").read_text()


def test_list_runs_statuses_and_key_metric(tmp_path):
    make_run(
        tmp_path,
        "a",
        "r1",
        metrics={"valid": {"accuracy": 0.8, "roc_auc": 0.9}, "test": {"roc_auc": 0.85}},
    )
    make_run(tmp_path, "a", "r2", success=False, manifest={"started_at": 1_700_000_100.0})
    make_run(
        tmp_path,
        "b",
        "r1",
        success=False,
        manifest={"status": "failed", "started_at": 1_700_000_050.0},
    )
    rows = list_runs(tmp_path)
    # a2 says running but holds no lock: its process is gone
    assert [(r.name, r.run_id, r.status) for r in rows] == [
        ("a", "r2", "abandoned"),
        ("b", "r1", "failed"),
        ("a", "r1", "succeeded"),
    ]
    assert (rows[2].metric, rows[2].value) == ("test.roc_auc", 0.85)
    text = format_runs(rows)
    assert text.splitlines()[0].split()[:2] == ["STARTED", "(UTC)"] and "test.roc_auc=0.85" in text
    assert key_metric({"tune": {"metric": "cv.accuracy", "best_value": 0.7}}) == (
        "cv.accuracy",
        0.7,
    )
    assert key_metric({"inertia": 12.0, "converged": True}) == ("inertia", 12.0)
    assert key_metric({}) == (None, None)
    with pytest.raises(SpecError, match="is not a directory"):
        list_runs(tmp_path / "nope")


def test_cli_runs_and_report(tmp_path, capsys):
    run = make_run(
        tmp_path, "a", "r1", tables=_classification_tables(), manifest={"task": "classification"}
    )
    assert main(["runs", "--output", str(tmp_path), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert [r["run_id"] for r in payload["runs"]] == ["r1"] and not payload["runs"][0]["report"]
    assert main(["report", str(run)]) == 0
    assert "report: " in capsys.readouterr().out and (run / "report.html").is_file()
    # --json names the file "path", like build_report(); "report" is its deprecated duplicate
    assert main(["report", str(run), "--json"]) == 0
    built = json.loads(capsys.readouterr().out)
    assert built["path"] == str(run / "report.html") == build_report(run)["path"]
    assert built["report"] == built["path"] and built["sections"][0] == "overview"
    assert main(["runs", "--output", str(tmp_path)]) == 0
    assert "succeeded" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert main(["report", str(tmp_path), "--json"]) == 2
    out = json.loads(capsys.readouterr().out)
    assert out["error"]["exit_code"] == 2 and "no manifest.json" in out["error"]["message"]
    assert main(["runs", "--output", str(tmp_path / "missing")]) == 2


def test_the_answer_comes_first_and_provenance_last(tmp_path):
    """Metrics and plots lead; the spec, data, cluster and versions close the page."""
    run = make_run(
        tmp_path,
        "order",
        tables=_classification_tables(),
        manifest={"task": "classification", "versions": {"python": "3.11", "ray": "2.60"}},
        metrics={"valid": {"accuracy": 0.93}},
        spec={"name": "order", "kind": "xgboost", "data": {"target": "yy"}},
    )
    page = Path(build_report(run)["path"]).read_text()
    bodies = dict(re.findall(r"<section id='([^']+)'>(.*?)</section>", page, re.S))
    assert "<h3>Spec</h3>" not in bodies["overview"] and "Versions" not in bodies["overview"]
    prov = bodies["provenance"]
    for h in ("<h3>Spec</h3>", "<h3>Data</h3>", "<h3>Cluster</h3>", "<h3>Versions</h3>"):
        assert h in prov, h
    assert "target: yy" in prov and "2.60" in prov
    # the first figure and the metrics table come before any provenance on the page
    assert page.index("0.93") < page.index("<img") < page.index("<h3>Spec</h3>")
    assert page.index("<h3>Spec</h3>") > page.index("<section id='artifacts'>")


def test_calibration_uses_quantile_bins_with_counts():
    from distml.report._supervised import quantile_bins

    rng = np.random.default_rng(0)
    score = rng.beta(0.3, 0.3, size=114)  # piled up near 0 and 1, as a good model's are
    hit = rng.random(114) < score
    bins = quantile_bins(score, hit)
    assert len(bins) == 5  # 114 // 20
    assert [b[2] for b in bins] == [23, 23, 23, 23, 22] and sum(b[2] for b in bins) == 114
    assert [b[0] for b in bins] == sorted(b[0] for b in bins)  # ordered by predicted
    assert len(quantile_bins(rng.random(5000), rng.random(5000) < 0.5)) == 10


def test_calibration_counts_in_the_note_and_small_splits_left_out(tmp_path):
    tables = _classification_tables(n=260)  # valid 130 rows, test 130 rows
    pred = tables["predictions"]
    pred.loc[pred.index[-70:], "split"] = "train"  # train 70 rows: below the threshold
    run = make_run(tmp_path, "cal", tables=tables, manifest={"task": "classification"})
    page = Path(build_report(run)["path"]).read_text()
    body = dict(re.findall(r"<section id='([^']+)'>(.*?)</section>", page, re.S))["calibration"]
    # valid keeps 130 rows → 6 bins; test (60) and train (70) are below the threshold
    assert "quantile bins" in body and "valid: 6 bins of 21–22 rows" in body
    assert "Not drawn (fewer than 100 rows): train (70 rows), test (60 rows)" in body
    # no split with enough rows: no calibration section at all (the other plots stay)
    small = make_run(
        tmp_path, "small", tables=_classification_tables(n=150), manifest={"task": "classification"}
    )
    ids = build_report(small)["sections"]
    assert "calibration" not in ids and "roc_curve" in ids


def test_the_report_and_its_warm_up_never_import_scikit_learn(tmp_path):
    """A run's driver draws report.html (its warm-up runs beside the job); the curves are
    numpy's own, so neither imports scikit-learn, whose import (1–2 s of CPU) competed with
    the job and the report on a 2-core machine: 0.9 s of a warm quickstart's 2.9 s. In a
    fresh process, because this one has scikit-learn already."""
    run = make_run(
        tmp_path,
        "clf",
        tables=_classification_tables(),
        manifest={"task": "classification"},
        metrics={"valid": {"accuracy": 0.5}},
    )
    code = (
        "import sys\n"
        "from distml.report import warm_up, build_report\n"
        "warm_up()\n"
        f"built = build_report({str(run)!r})\n"
        "assert built['errors'] == [], built['errors']\n"
        "assert 'roc_curve' in built['sections'] and 'precision_recall' in built['sections']\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('sklearn', 'scipy')))\n"
    )
    out = stdout_of(code)
    assert out == "[]", out


def test_the_warm_up_imports_pandas_before_matplotlib():
    """The warm-up imports pandas (and pyarrow.dataset, which the report's reads use) first:
    the driver's main thread imports pandas before it takes a task's result
    (runtime.runners.result), so it at most waits for this thread's import and the two
    threads never import different dependency trees at once. In a fresh process, which has
    imported neither."""
    code = (
        "import sys\n"
        "order = []\n"
        "class Watch:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name in ('pandas', 'pyarrow.dataset', 'matplotlib'):\n"
        "            order.append(name)\n"
        "        return None\n"
        "sys.meta_path.insert(0, Watch())\n"
        "from distml.report import warm_up\n"
        "assert 'pandas' not in sys.modules and 'matplotlib' not in sys.modules\n"
        "warm_up()\n"
        "print(','.join(order))\n"
    )
    out = stdout_of(code)
    assert out == "pandas,pyarrow.dataset,matplotlib", out
