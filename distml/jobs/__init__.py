"""The job kinds (one module or package each) and the machinery they share.

The registry itself is :mod:`distml.registry` (a leaf, so ``spec`` can build the tagged union of
kinds without importing this layer); its names are re-exported here for convenience.
"""

from __future__ import annotations

from distml.registry import KINDS, job_class, kind_module, spec_classes

__all__ = ["KINDS", "job_class", "kind_module", "spec_classes"]
