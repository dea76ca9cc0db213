"""The cluster half of the contract every registered kind honours (the other half, without a
cluster, is ``tests/unit/test_kind_contract.py``): its example spec runs; where its Job declares
a predictor, ``distml predict`` scores the training data with the run's model and the scores are
the predictor's own; the report sections its Job declares render on the run.
"""

from __future__ import annotations

import pandas as pd
import pytest

import distml
from distml.jobs.base import Job
from distml.registry import KINDS, job_class
from distml.report._run import RunView
from tests.kinds import examples_of

pytestmark = pytest.mark.usefixtures("ray_cluster")


@pytest.fixture(params=sorted(KINDS))
def finished(request, tmp_path_factory) -> tuple[str, distml.Result]:
    kind = request.param
    out = tmp_path_factory.mktemp(f"contract-{kind}")
    result = distml.run(examples_of(kind)[0], output=out)
    return kind, result


def test_example_runs_and_its_declared_abilities_work(finished, tmp_path):
    kind, r = finished
    assert r.status == "succeeded" and (r.run_dir / "_SUCCESS").is_file()
    assert r.manifest["kind"] == kind
    cls = job_class(kind)

    # report: every section the Job declares renders on its own run, and is in report.html
    run = RunView(r.run_dir)
    page = (r.run_dir / "report.html").read_text()
    for build in cls.report_sections():
        section = build(run)
        assert section is not None, f"{kind}: declared section {build.__name__} is empty"
        assert f"<section id='{section.id}'>" in page, f"{kind}: {section.id} not in report"
    assert "section_errors" not in r.manifest["report"]

    # predict: declared → round trip equal to the predictor; not declared → a clear refusal
    declares = cls.load_predictor.__func__ is not Job.load_predictor.__func__
    source = distml.load_spec(r.run_dir / "spec.yaml").data.source
    if not declares:
        with pytest.raises(distml.DataError, match="cannot score"):
            distml.predict(r.run_dir, source, tmp_path / "scores")
        return
    p = distml.predict(r.run_dir, source, tmp_path / "scores")
    assert p.status == "succeeded" and p.rows > 0
    scored = pd.read_parquet(tmp_path / "scores").reset_index(drop=True)
    from distml.runtime.data import read_frame
    from distml.scoring import load_predictor

    predictor = load_predictor(r.run_dir)
    frame = read_frame(source)
    assert len(scored) == len(frame) == p.rows
    direct = predictor.score(frame).reset_index(drop=True)
    pd.testing.assert_frame_equal(
        scored[list(direct.columns)], direct, check_dtype=False, rtol=1e-12, atol=0
    )
