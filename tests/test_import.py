"""`import ase_distilled` stays light: no optional heavy package is imported."""

import subprocess
import sys

HEAVY = ["orb_models", "tblite", "h5py", "rdkit", "matplotlib"]


def test_import_is_light():
    code = ("import sys, ase_distilled, ase_distilled.cli; "
            f"print([m for m in {HEAVY!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_student_sizes_meet_parameter_budgets():
    from ase_distilled import build_student

    budgets = {"small": 427_000, "tiny": 77_000, "ultra-tiny": 21_000}
    for size, budget in budgets.items():
        count = build_student(size).num_parameters()
        assert abs(count - budget) <= 0.15 * budget, (size, count)


def test_unknown_size_is_named():
    import pytest

    from ase_distilled import build_student

    with pytest.raises(ValueError, match="ultra-tiny"):
        build_student("huge")
