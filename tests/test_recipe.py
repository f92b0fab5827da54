"""The shipped students' recipe runs end to end with Orb as the teacher (mechanics only).

Orb's weights cannot be downloaded here, so the teacher is Orb's own architecture
with random weights: the numbers mean nothing, the mechanics are what is tested.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("orb_models")
pytest.importorskip("rdkit")
RECIPE = Path(__file__).parents[1] / "train" / "recipe.py"


@pytest.mark.slow
def test_recipe_distils_from_random_orb_end_to_end(tmp_path):
    def recipe(*args):
        subprocess.run([sys.executable, str(RECIPE), *args, "--work", str(tmp_path)],
                       check=True, capture_output=True, text=True)

    recipe("molecules", "--train-molecules", "8", "--test-molecules", "2")  # >= 1 val scaffold
    orb = ["--teacher", "orb-v3-direct-20-omat", "--weights", "random"]
    recipe("label", *orb)
    # `student` is `train` then `evaluate`.
    recipe("train", "--size", "ultra-tiny", "--epochs", "1", "--lr", "1e-3", *orb)
    recipe("evaluate", "--size", "ultra-tiny", "--md-ps", "0.005", "--nve-ps", "0.005",
           "--no-ship", *orb)

    from ase_distilled import load_checkpoint
    from ase_distilled.model_card import render_model_card

    model = load_checkpoint(tmp_path / "ultra-tiny.evaluated.pt")
    meta = model.metadata
    assert meta["teacher"]["name"] == "orb-v3-direct-20-omat"
    assert "random" in json.dumps(meta["teacher"])
    assert {"all", "conformer", "rattle:0.02", "rattle:0.05"} <= set(
        meta["metrics"]["test_by_level"])
    assert meta["metrics"]["val"]["force_mae"] > 0  # training's validation figures are kept
    pairs = meta["metrics"]["test_conformer_energy_difference"]
    assert pairs["pairs"] >= 1 and pairs["mae_meV"] >= 0 and pairs["teacher_mean_abs_meV"] > 0
    assert (f"the two conformers of each of {pairs['pairs']} test molecules: MAE "
            in render_model_card("ultra-tiny", model))
    assert meta["training"]["lr"] == 1e-3
    assert meta["training"]["select_group"] == "conformer"  # configs/ultra-tiny.toml
    assert meta["training"]["group_weights"] is None
    assert len(meta["md"]["nvt"]) == 2
    assert meta["speed"]["teacher_ms"] > 0
