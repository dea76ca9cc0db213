"""``Result``: what a run produced, read back from its run directory."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Result:
    """A finished (or failed) run. ``tables`` loads ``tables/*.parquet`` as pandas on first use.

    >>> r = distml.run("jobs/quickstart.yaml")            # doctest: +SKIP
    >>> r.metrics["valid"]["roc_auc"], r.run_dir          # doctest: +SKIP
    """

    status: str
    name: str
    kind: str
    run_id: str
    run_dir: Path
    metrics: dict[str, Any] = field(default_factory=dict)
    artifacts: list[str] = field(default_factory=list)
    best_config: dict[str, Any] | None = None
    reused: bool = False
    error: dict[str, Any] | None = None
    _tables: dict | None = field(default=None, repr=False)

    @property
    def tables(self) -> dict[str, Any]:
        """``{name: DataFrame}`` for every ``tables/NAME.parquet`` of the run."""
        if self._tables is None:
            import pandas as pd

            folder = Path(self.run_dir) / "tables"
            self._tables = (
                {
                    p.stem: pd.read_parquet(p)
                    for p in sorted(folder.glob("*.parquet"))
                    if not p.name.startswith(".")
                }
                if folder.is_dir()
                else {}
            )
        return self._tables

    @property
    def manifest(self) -> dict[str, Any]:
        return json.loads((Path(self.run_dir) / "manifest.json").read_text())

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` object: status, run_dir, metrics (+ best_config, error)."""
        out: dict[str, Any] = {
            "status": self.status,
            "run_dir": str(self.run_dir),
            "name": self.name,
            "kind": self.kind,
            "run_id": self.run_id,
            "metrics": self.metrics,
            "reused": self.reused,
        }
        if self.best_config is not None:
            out["best_config"] = self.best_config
        if self.error is not None:
            out["error"] = self.error
        return out

    def summary(self) -> str:
        """A few lines for people: status, where, and the headline metrics per split."""
        lines = [
            f"{self.name} [{self.kind}] {self.status}"
            + (" (stored result)" if self.reused else ""),
            f"run dir: {self.run_dir}",
        ]
        for split in ("train", "valid", "test"):
            m = self.metrics.get(split)
            if isinstance(m, dict):
                figures = ", ".join(
                    f"{k}={v:.4g}" for k, v in m.items() if isinstance(v, (int, float))
                )
                lines.append(f"{split:>5}: {figures}")
        cv = self.metrics.get("cv")
        if isinstance(cv, dict) and "mean" in cv:
            lines.append(
                "   cv: "
                + ", ".join(f"{k}={v:.4g}±{cv['std'].get(k, 0):.2g}" for k, v in cv["mean"].items())
            )
        lines.extend(_kind_lines(self.kind, self.metrics))
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (
            f"Result(name={self.name!r}, kind={self.kind!r}, status={self.status!r}, "
            f"run_dir='{self.run_dir}')"
        )

    @classmethod
    def load(cls, run_dir: str | Path, reused: bool = False) -> "Result":
        """Read a run directory written by distml."""
        run_dir = Path(run_dir)
        manifest = json.loads((run_dir / "manifest.json").read_text())
        metrics_path = run_dir / "metrics.json"
        metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
        artifacts = sorted(
            str(p.relative_to(run_dir))
            for p in run_dir.rglob("*")
            if p.is_file() and ".tmp-" not in p.name and "checkpoints" not in p.parts
        )
        return cls(
            status=manifest.get("status", "unknown"),
            name=manifest.get("name", ""),
            kind=manifest.get("kind", ""),
            run_id=manifest.get("run_id", run_dir.name),
            run_dir=run_dir,
            metrics=metrics,
            artifacts=artifacts,
            best_config=manifest.get("best_config"),
            reused=reused,
            error=manifest.get("error"),
        )


# Headline figures of the kinds whose metrics are not per-split (statsmodels, pca, kmeans):
# without them the printed summary of such a run said where it was and nothing else.
_SM_SINGLE = ("nobs", "r_squared", "adj_r_squared", "pseudo_r_squared", "llf", "aic", "bic")
_SM_MANY = ("r_squared_median", "pseudo_r_squared_median", "aic_median")


def _figures(m: dict, keys: tuple[str, ...]) -> str:
    return ", ".join(
        f"{k}={m[k]:.4g}"
        for k in keys
        if isinstance(m.get(k), (int, float)) and not isinstance(m.get(k), bool)
    )


def _kind_lines(kind: str, m: dict) -> list[str]:
    """Summary lines with the key figures of a statsmodels, pca or kmeans run."""
    if not m:
        return []
    if kind == "statsmodels" and "n_groups" in m:
        if "n_params" in m:  # one model (no group_by): its fit statistics
            head = f"model: {m.get('method', '?')}"
            figs = _figures(m, _SM_SINGLE)
            out = [head + (f", {figs}" if figs else "")]
            if m.get("converged") is False:
                out.append("warning: the model did not converge")
            return out
        line = (
            f"groups: {m.get('n_fitted', 0)} of {m['n_groups']} fitted, "
            f"{m.get('n_failed', 0)} failed"
        )
        if m.get("n_not_converged"):
            line += f", {m['n_not_converged']} not converged"
        figs = _figures(m, _SM_MANY)
        return [line] + ([f"  fit: {figs}"] if figs else [])
    if kind == "pca" and "explained_variance_ratio" in m:
        ratios = [float(v) for v in m["explained_variance_ratio"]]
        total = m.get("explained_variance_ratio_sum", sum(ratios))
        shown = ", ".join(f"{v:.3g}" for v in ratios[:10]) + (", …" if len(ratios) > 10 else "")
        return [
            f"  pca: {len(ratios)} components explain {total:.1%} of the variance "
            f"(per component: {shown})"
        ]
    if kind == "kmeans" and "inertia" in m:
        line = f"kmeans: k={m.get('n_clusters', '?')}, inertia={m['inertia']:.6g}"
        if isinstance(m.get("mean_inertia"), (int, float)):
            line += f" ({m['mean_inertia']:.4g} per row)"
        if "passes" in m:
            line += f", {m['passes']} passes" + (
                "" if m.get("converged", True) else ", not converged"
            )
        sizes = m.get("cluster_sizes")
        out = [line]
        if isinstance(sizes, list) and sizes:
            out.append(
                "  cluster sizes: "
                + ", ".join(str(s) for s in sizes[:20])
                + (", …" if len(sizes) > 20 else "")
            )
        return out
    return []
