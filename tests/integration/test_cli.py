"""The CLI contract: exit codes, --json, no heavy imports for help/validate, pre-flight (T5, T8)."""

from __future__ import annotations

import glob
import json
import os
import re
import socket
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

import distml
from distml.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLES = sorted(glob.glob(os.path.join(ROOT, "jobs", "*.yaml")))


def _py(code: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
    )


def _cli(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "distml", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
    )


def test_help_and_validate_import_no_heavy_modules():
    code = (
        "import sys; from distml.cli import main\n"
        "rc = main(['validate', 'jobs/quickstart.yaml'])\n"
        "heavy = [m for m in ('ray', 'xgboost', 'torch', 'dask') if m in sys.modules]\n"
        "print(rc, heavy)"
    )
    out = _py(code)
    assert out.stdout.strip().splitlines()[-1] == "0 []", out.stderr
    out = _cli("--help")
    assert out.returncode == 0 and "validate" in out.stdout


def test_validate_exit_codes(tmp_path, capsys):
    assert main(["validate", f"{ROOT}/jobs/quickstart.yaml"]) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: x\nkind: xgboost\ndata: {source: builtin:iris, target: target, "
        "split: {valid: 1.5}}\n"
    )
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "data.split.valid must be < 1; got 1.5" in err and "Traceback" not in err
    assert (
        main(
            [
                "validate",
                f"{ROOT}/jobs/quickstart.yaml",
                "--set",
                "model.num_boost_round=0",
                "--json",
            ]
        )
        == 2
    )
    out = capsys.readouterr().out
    payload = json.loads(out)
    assert payload["status"] == "failed" and payload["error"]["exit_code"] == 2
    assert "model.num_boost_round" in payload["error"]["message"]


@pytest.mark.parametrize(
    "case", ["missing", "truncated", "not_parquet", "missing_column", "nan_target", "wrong_dtype"]
)
def test_bad_data_exits_2_and_writes_nothing(tmp_path, capsys, case):
    """RELIABILITY.md T5 through the CLI: exit 2, a message naming file/column, no _SUCCESS."""
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"x": rng.normal(size=50), "y": rng.integers(0, 2, 50).astype(float)})
    path = tmp_path / "d.parquet"
    target, expect = "y", None
    if case == "missing":
        expect = "no file matches"
    elif case == "truncated":
        df.to_parquet(path)
        path.write_bytes(path.read_bytes()[:100])
        expect = "is not readable parquet"
    elif case == "not_parquet":
        path.write_text("x,y\n1,2\n")
        expect = "is not readable parquet"
    elif case == "missing_column":
        df.to_parquet(path)
        target, expect = "label", "column 'label' is not in"
    elif case == "nan_target":
        df.loc[[1, 2], "y"] = np.nan
        df.to_parquet(path)
        expect = "has 2 missing values of 50 rows"
    elif case == "wrong_dtype":
        df["x"] = pd.Timestamp("2020-01-01")
        df.to_parquet(path)
        expect = "column 'x' has dtype timestamp"
    spec = tmp_path / "s.yaml"
    spec.write_text(f"name: t5\nkind: xgboost\ndata: {{source: '{path}', target: {target}}}\n")
    out_dir = tmp_path / "runs"
    assert main(["run", str(spec), "--output", str(out_dir), "--json"]) == 2
    cap = capsys.readouterr()
    assert expect in json.loads(cap.out)["error"]["message"]
    assert "Traceback" not in cap.err
    assert not list(out_dir.rglob("_SUCCESS"))


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_address_exits_3_fast(tmp_path):
    """RELIABILITY.md T8: exit 3 within 15 s naming the address and where it came from."""
    port = _closed_port()
    t0 = time.monotonic()
    out = _cli(
        "run",
        "jobs/quickstart.yaml",
        "--address",
        f"127.0.0.1:{port}",
        "--json",
        "--output",
        str(tmp_path),
    )
    assert time.monotonic() - t0 < 15
    assert out.returncode == 3, out.stderr
    err = json.loads(out.stdout)["error"]["message"]
    assert f"127.0.0.1:{port}" in err and "--address" in err
    out = _cli(
        "run",
        "jobs/quickstart.yaml",
        "--output",
        str(tmp_path),
        env={"RAY_ADDRESS": f"127.0.0.1:{port}"},
    )
    assert out.returncode == 3 and "RAY_ADDRESS" in out.stderr and "Traceback" not in out.stderr
    out = _cli(
        "run",
        "jobs/quickstart.yaml",
        "--address",
        "http://127.0.0.1:8265",
        "--output",
        str(tmp_path),
    )
    assert out.returncode == 3 and "distml submit" in out.stderr


@pytest.mark.usefixtures("ray_cluster")
def test_run_json_prints_one_object(tmp_path, capfd):
    rc = main(
        [
            "run",
            f"{ROOT}/jobs/quickstart.yaml",
            "--output",
            str(tmp_path),
            "--json",
            "--set",
            "model.num_boost_round=5",
            "--run-id",
            "j1",
        ]
    )
    cap = capfd.readouterr()
    assert rc == 0
    payload = json.loads(cap.out)  # exactly one JSON document, nothing else on stdout
    assert payload["status"] == "succeeded" and payload["run_id"] == "j1"
    assert payload["metrics"]["valid"]["roc_auc"] > 0.9
    assert os.path.isfile(os.path.join(payload["run_dir"], "_SUCCESS"))
    # rerun: no-op reporting the stored result
    assert (
        main(
            [
                "run",
                f"{ROOT}/jobs/quickstart.yaml",
                "--output",
                str(tmp_path),
                "--json",
                "--set",
                "model.num_boost_round=5",
                "--run-id",
                "j1",
            ]
        )
        == 0
    )
    again = json.loads(capfd.readouterr().out)
    assert again["reused"] and again["metrics"] == payload["metrics"]
    assert main(["run", f"{ROOT}/jobs/quickstart.yaml", "--run-id", "../escape"]) == 2


_SUPERVISED = ["confusion_matrix", "roc_curve", "precision_recall", "calibration"]
_SEARCH = ["trials", "parameter_importance", "parallel_coordinates"]
_SINGLE_MODEL = ["coefficients", "fit_statistics"]
#: the sections of each example's report.html, in page order (a plain list, kept by hand: a
#: change here is a change users see)
REPORT_SECTIONS = {
    "kmeans_out_of_core.yaml": ["cluster_sizes", "cluster_centers", "pass_history"],
    # the winner (scikit-learn logistic regression) is the run's model, then the ladder's own
    "ladder_breast_cancer.yaml": _SUPERVISED
    + ["feature_importance", "ladder_folds", "ladder_differences", "ladder_cost"],
    "lightgbm_breast_cancer.yaml": _SUPERVISED + ["learning_curve", "feature_importance"],
    "pca_out_of_core.yaml": ["scree", "loadings"],
    "quickstart.yaml": _SUPERVISED + ["learning_curve", "feature_importance"],
    "sklearn_diabetes.yaml": ["predicted_vs_actual", "residuals", "feature_importance"],
    # iris and wine: 30–36 test rows, below the calibration plot's 100-row threshold
    "sklearn_iris.yaml": _SUPERVISED[:3] + ["feature_importance"],
    "statsmodels_arima_sunspots.yaml": _SINGLE_MODEL + ["forecast", "summary"],
    "statsmodels_grunfeld_firms.yaml": ["coefficient_distribution", "group_fits"],
    "statsmodels_logit_spector.yaml": _SINGLE_MODEL + ["summary"],
    "statsmodels_ols_longley.yaml": _SINGLE_MODEL + ["summary"],
    "tune_sklearn.yaml": _SEARCH + _SUPERVISED[:3] + ["feature_importance"],
    "tune_xgboost.yaml": _SEARCH + _SUPERVISED + ["learning_curve", "feature_importance"],
    "torch_digits_mlp.yaml": _SUPERVISED + ["learning_curve"],  # no feature importance
    "tune_torch.yaml": _SEARCH + _SUPERVISED + ["learning_curve"],
    "xgboost_multiworker.yaml": _SUPERVISED + ["learning_curve", "feature_importance"],
}


@pytest.mark.usefixtures("ray_cluster")
@pytest.mark.parametrize("path", EXAMPLES, ids=[os.path.basename(p) for p in EXAMPLES])
def test_every_example_spec_runs(tmp_path, path):
    r = distml.run(path, output=tmp_path)
    assert r.status == "succeeded" and (r.run_dir / "_SUCCESS").is_file()
    # every run writes report.html with the sections its kind and tables call for
    expected = [
        "overview",
        "metrics",
        *REPORT_SECTIONS[os.path.basename(path)],
        "artifacts",
        "provenance",
    ]
    report = r.manifest["report"]
    assert report["sections"] == expected and "section_errors" not in report
    page = (r.run_dir / "report.html").read_text()
    found = re.findall(r"<section id='([^']+)'>(.*?)</section>", page, re.S)
    assert [sid for sid, _ in found] == expected
    text_only = {"overview", "metrics", "fit_statistics", "summary", "artifacts", "provenance"}
    for sid, body in found:  # every plotting section embeds its figure as a PNG data URI
        assert (sid in text_only) != ("<img src='data:image/png;base64," in body), sid
    assert "<script" not in page and "http://" not in page and "https://" not in page


@pytest.mark.allow_local_ray
def test_cli_starts_and_stops_its_own_local_cluster(tmp_path):
    """The README path: no address → a private single-node Ray, shut down after."""
    out = _cli(
        "run",
        "jobs/quickstart.yaml",
        "--output",
        str(tmp_path),
        "--json",
        "--set",
        "model.num_boost_round=10",
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    payload = json.loads(out.stdout)
    manifest = json.loads(open(os.path.join(payload["run_dir"], "manifest.json")).read())
    assert manifest["cluster"]["mode"] == "local" and manifest["cluster"]["resources"]["CPU"] >= 1
    assert manifest["timings"]["cluster_start_s"] > 0


def test_xgboost_rejects_unusable_feature_names(tmp_path, capsys):
    # 20 rows: enough for the default split, so the name is the only problem
    pd.DataFrame({"a[1]": np.arange(20.0), "y": [0, 1] * 10}).to_parquet(tmp_path / "f.pq")
    spec = tmp_path / "s.yaml"
    spec.write_text(f"name: n\nkind: xgboost\ndata: {{source: '{tmp_path}/f.pq', target: y}}\n")
    assert main(["validate", str(spec)]) == 2
    assert "column 'a[1]' has a name xgboost cannot use" in capsys.readouterr().err


def test_schema_and_data_generate(tmp_path, capsys):
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert {"xgboost", "sklearn"} <= {
        m["properties"]["kind"]["const"]
        for m in schema["$defs"].values()
        if "kind" in m.get("properties", {}) and "const" in m["properties"]["kind"]
    }
    out = tmp_path / "gen"
    assert (
        main(
            [
                "data",
                "generate",
                "synthetic:classification?features=4&seed=3",
                "--rows",
                "5000",
                "--files",
                "3",
                "--output",
                str(out),
                "--json",
            ]
        )
        == 0
    )
    payload = json.loads(capsys.readouterr().out)
    assert payload["rows"] == 5000 and len(payload["files"]) == 3
    frame = pd.read_parquet(out)
    assert len(frame) == 5000 and set(frame.columns) == {"x0", "x1", "x2", "x3", "target"}
    assert (
        main(["data", "generate", "synthetic:nope", "--rows", "5", "--output", str(tmp_path / "x")])
        == 2
    )
