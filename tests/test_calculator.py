"""DistilledCalculator: ASE's contract, caching, devices and the errors it promises."""

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule
from conftest import make_calc, make_student

from ase_distilled import DistilledCalculator, available_models


def test_ase_contract_results_and_caching():
    atoms = molecule("CH3CH2OH")
    atoms.calc = calc = make_calc()
    energy = atoms.get_potential_energy()
    assert isinstance(energy, float)
    assert atoms.get_forces().shape == (len(atoms), 3)
    assert calc.results["free_energy"] == energy
    builds = calc.neighbors.builds
    atoms.get_forces()  # cached: check_state finds no change, nothing recomputed
    assert calc.neighbors.builds == builds
    atoms.positions[0, 0] += 0.3
    assert atoms.get_potential_energy() != energy


def test_stress_is_voigt_for_periodic_cells():
    atoms = bulk("Cu", "fcc", a=3.6) * (2, 2, 2)
    atoms.calc = make_calc()
    assert atoms.get_stress().shape == (6,)
    assert atoms.get_stress(voigt=False).shape == (3, 3)


def test_default_device_and_float32():
    calc = DistilledCalculator(make_student())
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert calc.device.type == expected
    assert next(calc.model.parameters()).dtype == torch.float32


def test_module_is_copied_not_mutated():
    model = make_student()
    DistilledCalculator(model, dtype="float64")
    assert next(model.parameters()).dtype == torch.float32


@pytest.mark.cuda_only
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    atoms = molecule("C6H6")
    cpu = make_calc(device="cpu").predict_batch([atoms])[0]
    gpu = make_calc(device="cuda").predict_batch([atoms])[0]
    assert gpu["energy"] == pytest.approx(cpu["energy"], abs=1e-8)
    np.testing.assert_allclose(gpu["forces"], cpu["forces"], atol=1e-8)


@pytest.mark.parametrize("make_bad, message", [
    (lambda: Atoms(), "empty"),
    (lambda: Atoms("Au2", positions=[[0, 0, 0], [0, 0, 2.5]]), r"\['Au'\] not supported"),
    (lambda: Atoms("H2", positions=[[0, 0, 0], [np.nan, 0, 0]]), "NaN"),
    (lambda: Atoms("H2", positions=[[0, 0, 0], [np.inf, 0, 0]]), "NaN or inf"),
])
def test_bad_atoms_rejected_when_attached(make_bad, message):
    with pytest.raises(ValueError, match=message):
        make_bad().calc = make_calc()


def test_bad_positions_rejected_when_computed():
    atoms = molecule("H2O")
    atoms.calc = make_calc()
    atoms.positions[1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        atoms.get_forces()


def test_overlapping_atoms_rejected():
    atoms = Atoms("CO", positions=[[0, 0, 0], [0, 0, 0.01]])
    atoms.calc = make_calc()
    with pytest.raises(ValueError, match="overlap"):
        atoms.get_potential_energy()


def test_unknown_name_lists_valid_ones():
    with pytest.raises(KeyError, match="Valid names"):
        DistilledCalculator("no-such-model")
    assert isinstance(available_models(), list)


def test_missing_checkpoint_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        DistilledCalculator(str(tmp_path / "absent.pt"))


def test_predict_batch_of_nothing():
    assert make_calc().predict_batch([]) == []
