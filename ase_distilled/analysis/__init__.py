"""Judge a model: per-atom force comparison with a reference, and MD trajectories.

Figures live in :mod:`ase_distilled.analysis.plots` (needs matplotlib).
"""

from ase_distilled.analysis.forces import (
    ForceReport,
    compare_forces,
    force_metrics,
    reference_labels,
)
from ase_distilled.analysis.md import MDRun, run_md, run_md_side_by_side

__all__ = ["ForceReport", "MDRun", "compare_forces", "force_metrics", "reference_labels",
           "run_md", "run_md_side_by_side"]
