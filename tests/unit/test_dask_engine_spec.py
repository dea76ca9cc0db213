"""``engine: native | dask`` of the pca and kmeans specs: the field, the rules of the dask engine,
and the missing extra, all exit 2 before any cluster work (no Ray needed)."""

from __future__ import annotations

import subprocess
import sys

import pytest

import distml
from distml.errors import MissingDependency, SpecError
from distml.spec import load_spec

SOURCE = "synthetic:blobs?rows=500&features=4&centers=3&seed=1"


def _spec(kind: str, **model) -> dict:
    return {
        "name": f"{kind}-engine",
        "kind": kind,
        "engine": "dask",
        "data": {"source": SOURCE, "exclude": ["target"]},
        "model": {**({"n_clusters": 3} if kind == "kmeans" else {}), **model},
    }


@pytest.mark.parametrize("kind", ["pca", "kmeans"])
def test_engine_defaults_to_native_and_accepts_dask(kind):
    spec = _spec(kind)
    del spec["engine"]
    assert load_spec(spec).engine == "native"
    assert load_spec(_spec(kind)).engine == "dask"
    assert load_spec(_spec(kind)).to_dict()["engine"] == "dask"  # spec.yaml carries it


@pytest.mark.parametrize("kind", ["pca", "kmeans"])
def test_a_bad_engine_is_a_spec_error_naming_engine(kind, tmp_path):
    with pytest.raises(SpecError, match="engine") as e:
        load_spec({**_spec(kind), "engine": "spark"})
    assert e.value.exit_code == 2
    path = tmp_path / "spec.yaml"
    path.write_text(f"name: x\nkind: {kind}\nengine: spark\ndata: {{source: '{SOURCE}'}}\n")
    res = subprocess.run(
        [sys.executable, "-m", "distml", "validate", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2 and "engine" in res.stderr, res.stderr


@pytest.mark.parametrize(
    "kind, model, fragment",
    [
        ("pca", {"mode": "exact"}, "model.mode exact needs engine: native"),
        ("pca", {"n_components": 0.9}, "variance fraction needs engine: native"),
        ("pca", {"n_components": 4, "batch_size": 2}, "model.batch_size must be >="),
        ("pca", {"transform": True}, "model.transform is not available with engine: dask"),
        ("kmeans", {"refine_passes": 2}, "model.refine_passes needs engine: native"),
        ("kmeans", {"transform": True}, "model.transform is not available with engine: dask"),
    ],
)
def test_what_the_dask_engine_does_not_do_is_refused(kind, model, fragment):
    with pytest.raises(SpecError, match=fragment):
        load_spec(_spec(kind, **model))
    load_spec({**_spec(kind, **model), "engine": "native"})  # the native engine takes it


@pytest.mark.parametrize("kind", ["pca", "kmeans"])
@pytest.mark.parametrize("missing", ["dask", "dask_ml"])
def test_a_missing_extra_is_exit_2_naming_the_install_before_any_cluster(
    kind, missing, monkeypatch, tmp_path
):
    from distml.runtime import cluster

    monkeypatch.setitem(sys.modules, missing, None)  # `import dask_ml` now fails

    def no_cluster(*a, **k):
        raise AssertionError("cluster work started before the missing extra was reported")

    monkeypatch.setattr(cluster, "_start_local", no_cluster)
    monkeypatch.setattr(cluster, "cluster", no_cluster)
    with pytest.raises(MissingDependency, match=r'pip install "distml\[dask\]"') as e:
        distml.validate(_spec(kind))
    assert e.value.exit_code == 2 and "engine: dask" in str(e.value)
    with pytest.raises(MissingDependency, match=r'pip install "distml\[dask\]"'):
        distml.run(_spec(kind), output=tmp_path)
    distml.validate({**_spec(kind), "engine": "native"})  # the native engine needs no Dask


def test_an_old_dask_is_refused_with_the_install_hint(monkeypatch):
    from importlib import metadata

    real = metadata.version
    monkeypatch.setattr(
        metadata, "version", lambda name: "2024.6.0" if name == "dask" else real(name)
    )
    with pytest.raises(MissingDependency, match=r"dask>=2024\.11\.0.*dask 2024\.6\.0"):
        distml.validate(_spec("pca"))


def test_batches_are_cut_from_the_partitions_as_they_arrive():
    """blocks_on_ray's cut: each slice equals the rows of the stacked partitions; a slice
    inside one partition is a view of it (no copy on the driver), one spanning partitions
    (or an empty one) joins the pieces; a partition is taken only when a slice reaches it."""
    import numpy as np

    from distml.jobs._dask_engine import batch_slices, cut

    lengths = [5, 0, 3, 7, 1, 9]
    parts = [np.arange(n * 2.0).reshape(n, 2) + 100 * i for i, n in enumerate(lengths)]
    X = np.concatenate(parts)
    taken: list[int] = []

    def arriving():
        for i, p in enumerate(parts):
            taken.append(i)
            yield p

    slices = batch_slices(len(X), 4)
    assert [(s.start, s.stop) for s in slices] == [
        (0, 4),
        (4, 8),
        (8, 12),
        (12, 16),
        (16, 20),
        (20, 24),
        (24, 25),
    ]
    got = cut(arriving(), slices)
    first = next(got)
    assert taken == [0] and np.shares_memory(first, parts[0])
    np.testing.assert_array_equal(first, X[0:4])
    rest = list(got)
    assert taken == list(range(len(parts)))
    for s, block in zip(slices[1:], rest):
        np.testing.assert_array_equal(block, X[s])
    assert np.shares_memory(rest[1], parts[3])  # rows 8-12 lie in the fourth partition
    # IncrementalPCA.fit's batches (the last one merged into the one before) cut the same way
    merged = [slice(0, 10), slice(10, 25)]
    for s, block in zip(merged, cut(iter(parts), merged)):
        np.testing.assert_array_equal(block, X[s])


def test_partitions_in_flight_follow_the_cpus_within_the_drivers_bound():
    """One partition per CPU and one more in flight, so a CPU freed while the driver fits finds
    the next one waiting; the driver holds at most MAX_AHEAD partitions, and of partitions that
    travel whole to it at most 1 GiB (never fewer than two)."""
    import dask.array as da

    from distml.jobs._dask_engine import AHEAD_BYTES, MAX_AHEAD, ahead, partition_bytes

    assert ahead(1) == 2 and ahead(2) == 3 and ahead(8) == 9
    assert ahead(64) == MAX_AHEAD == 16 and ahead(0) == 2
    b5 = 65_536 * 64 * 8  # B5's row groups: 32 MB
    assert AHEAD_BYTES == 2**30 and ahead(2, b5) == 3 and ahead(64, b5) == 16
    big = 2**20 * 64 * 8  # parquet's default row group of 1M rows, 64 features: 512 MB
    assert ahead(16, big) == 2 and ahead(16, 2 * big) == 2 and ahead(16, big // 4) == 8
    X = da.zeros((2500, 3), chunks=((1000, 1200, 300), (3,)))
    assert partition_bytes(X) == 1200 * 3 * 8


PARTITION_PROBE = """
import json, sys
import numpy as np
import pandas as pd
from distml.jobs._dask_engine import _compute_block, _culled, block_graphs, checked, lazy_array
from distml.runtime.data import validate_data
from distml.spec import load_spec

frame = pd.DataFrame({"a": np.arange(40.0), "b": np.ones(40)})
frame.to_parquet(sys.argv[1], row_group_size=15)
spec = load_spec({"name": "p", "kind": "pca", "engine": "dask", "data": {"source": sys.argv[1]},
                  "model": {"n_components": 1, "batch_size": 10}})
X, parts = lazy_array(validate_data(spec.data, needs_target=False).source, ["a", "b"], 10)
graph, rows = block_graphs(checked(X, ["a", "b"], None, "pca.dask", 0))
one = _culled(graph, rows[1])
value, record = _compute_block(one, rows[1], "s", 1)
every = [_compute_block(_culled(graph, r), r, "s", i)[0] for i, r in enumerate(rows)]
print(json.dumps({"parts": parts, "rows": value[:, 0].tolist(), "record": record,
                  "distributed": "distributed" in sys.modules,
                  "tasks": [len(graph), len(one)], "all": np.concatenate(every).tolist()}))
"""


def test_a_partition_task_runs_its_graph_without_loading_dask_distributed(tmp_path):
    """A partition's task (run here as a fresh worker would run it): the row group's rows,
    checked, with its figures, from its own tasks of the optimised graph; Dask's synchronous scheduler is passed as the function, so the
    task does not import ``dask.distributed`` looking for a client (0.3 s in every worker)."""
    import json

    out = subprocess.run(
        [sys.executable, "-c", PARTITION_PROBE, str(tmp_path / "d.parquet")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["parts"] == 3 and got["rows"] == [float(i) for i in range(15, 30)]
    assert got["record"]["stage"] == "s" and got["record"]["partition"] == 1
    assert got["record"]["rows"] == 15 and got["distributed"] is False
    # the task got its block's own tasks, not the whole array's graph, and every block's rows
    # are the file's
    assert got["tasks"][1] < got["tasks"][0] / 2
    assert got["all"] == [[float(i), 1.0] for i in range(40)]
