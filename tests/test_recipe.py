"""The shipped students' recipe runs end to end with Orb as the teacher (mechanics only).

Orb's weights cannot be downloaded here, so the teacher is Orb's own architecture
with random weights: the numbers mean nothing, the mechanics are what is tested.
The recipe's own measures are checked on known cases.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ase.build import molecule
from ase.calculators.emt import EMT
from ase.calculators.mixing import LinearCombinationCalculator

pytest.importorskip("orb_models")
pytest.importorskip("rdkit")
RECIPE = Path(__file__).parents[1] / "train" / "recipe.py"


def _recipe_module():
    spec = importlib.util.spec_from_file_location("recipe", RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_hydrogen_pull_and_push_measure_a_softer_wall():
    molecules = [molecule("CH3OH"), molecule("NH3")]
    teacher = EMT()
    half = LinearCombinationCalculator([EMT()], [0.5])  # every energy rise halved
    recipe = _recipe_module()
    pulls = recipe.hydrogen_pull_energies(molecules, half, teacher, pulls=(0.2, 0.5))
    assert pulls["bonds"] == 4 + 3 and pulls["pulls_A"] == [0.2, 0.5]
    assert np.all(np.diff(pulls["teacher_mean_eV"]) > 0)  # pulling further costs more
    pushes = recipe.hydrogen_push_energies(molecules, half, teacher, pushes=(20.0, 40.0))
    assert pushes["bonds"] == 4 + 3 and pushes["pushes_deg"] == [20.0, 40.0]
    for probe in (pulls, pushes):
        np.testing.assert_allclose(probe["mean_relative_error"], -0.5, atol=1e-9)
        np.testing.assert_allclose(probe["lowest_relative_error"], -0.5, atol=1e-9)


def test_shipped_index_summaries_come_from_the_checkpoints():
    from ase_distilled import load_checkpoint
    from ase_distilled.registry import WEIGHTS_DIR

    index = json.loads((WEIGHTS_DIR / "models.json").read_text())
    recipe = _recipe_module()
    for entry in index.values():
        model = load_checkpoint(WEIGHTS_DIR / entry["file"])
        assert entry["summary"] == recipe.index_summary(model)


def test_the_whole_source_keeps_the_parts_chosen_from_its_first_5000_lines(tmp_path):
    """Round 24 widened the source from moses_5k.smi to the file it was cut from:
    every earlier part must come out as before (their labels and the shipped
    students' data stay valid), and the new part only from beyond line 5,000."""
    recipe = _recipe_module()
    whole = recipe.select_molecules(tmp_path / "whole")
    recipe.SOURCE = RECIPE.parent / "data" / "moses_5k.smi"
    recipe.select_molecules(tmp_path / "first5k", num_more20k=0)
    for part in whole:
        if part != "more20k":
            assert ((tmp_path / "whole" / f"{part}.smi").read_text()
                    == (tmp_path / "first5k" / f"{part}.smi").read_text()), part
    first5k = set(recipe.SOURCE.read_text().split())
    more20k = (tmp_path / "whole" / "more20k.smi").read_text().split()
    assert len(more20k) == recipe.NUM_MORE20K and not set(more20k) & first5k


@pytest.mark.slow
def test_recipe_distils_from_random_orb_end_to_end(tmp_path):
    def recipe(*args, launcher=()):
        done = subprocess.run([sys.executable, *launcher, str(RECIPE), *args,
                               "--work", str(tmp_path)],
                              capture_output=True, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
        # The whole of stderr (not pytest's abridged repr): a failing rank's traceback.
        assert done.returncode == 0, f"recipe {args[0]} exited {done.returncode}:\n{done.stderr}"

    recipe("molecules", "--train-molecules", "8", "--test-molecules", "3",  # >= 1 val scaffold
           "--extra-molecules", "2", "--rare-molecules", "2", "--stretch-molecules", "2",
           "--more-molecules", "2", "--push-molecules", "2", "--more20k-molecules", "2")
    orb = ["--teacher", "orb-v3-direct-20-omat", "--weights", "random"]
    recipe("label", *orb)
    # `student` is `train` then `evaluate`; training runs one process per core under torchrun.
    recipe("train", "--size", "ultra-tiny", "--epochs", "1", "--lr", "1e-3",
           "--energy-weight", "5", *orb,
           launcher=("-m", "torch.distributed.run", "--nproc_per_node", "2"))
    recipe("evaluate", "--size", "ultra-tiny", "--md-ps", "0.005", "--nve-ps", "0.005",
           "--md-molecules", "2", "--nvt-seeds", "2", "--no-ship", *orb)

    from ase_distilled import load_checkpoint
    from ase_distilled.data import load
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
    assert meta["training"]["lr"] == 1e-3 and meta["training"]["world_size"] == 2
    assert meta["training"]["energy_weight"] == 5.0  # configs/ultra-tiny.toml says 1.0
    assert "loss weights energy 5.0 / forces 10.0" in render_model_card("ultra-tiny", model)
    assert (f"batch {meta['training']['batch_size']} per process x 2 processes, "
            in render_model_card("ultra-tiny", model))
    assert meta["training"]["select_group"] == "conformer"  # configs/ultra-tiny.toml
    assert meta["training"]["group_weights"] is None
    md_molecules = [a for a in load(tmp_path / "test.h5")
                    if a.info["source"] == "conformer" and a.info["id"].endswith("/c00")][:2]
    assert [(run["seed"], run["molecule"]) for run in meta["md"]["nvt"]] == [
        (seed, atoms.info["molecule"]) for seed in (0, 1) for atoms in md_molecules]
    assert "once with each of 2 seeds: " in meta["md"]["summary"]
    hydrogens = sum(int((a.numbers == 1).sum()) for a in md_molecules)
    assert meta["metrics"]["test_hydrogen_pull"]["bonds"] == hydrogens > 0
    assert meta["metrics"]["test_hydrogen_push"]["bonds"] == hydrogens
    card = render_model_card("ultra-tiny", model)
    assert "Bonds to hydrogen pulled longer" in card and "| bent by (°) |" in card
    # The extra (sulfur, stretched bonds to hydrogen), rare-chemistry, bond-breaking,
    # further, pushed-hydrogen and further-yet molecules are trained on too.
    assert [f["file"] for f in meta["data"]["files"]] == [
        "train.h5", "extra.h5", "rare.h5", "stretch.h5", "more.h5", "push.h5", "more20k.h5"]
    assert meta["data"]["files"][1]["sampling"]["stretch"] == [0.1, 0.25, 0.4]
    assert meta["data"]["files"][3]["sampling"]["stretch"] == [0.3, 0.6, 0.9, 1.2]
    assert meta["data"]["files"][5]["sampling"]["push"] == [15.0, 30.0, 45.0]
    train_part = set((tmp_path / "train.smi").read_text().split())
    assert not set((tmp_path / "push.smi").read_text().split()) & (
        train_part | set((tmp_path / "test.smi").read_text().split()))
    rare = (tmp_path / "rare.smi").read_text().split()
    assert len(rare) == 2 and all(
        any(halogen in smiles for halogen in ("F", "Cl", "Br")) or smiles.upper().count("N") >= 4
        for smiles in rare)
    assert meta["speed"]["teacher_ms"] > 0
