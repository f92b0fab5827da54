"""Teachers: Orb (random weights, no network), GFN2-xTB against tblite, ASE calculators."""

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule
from ase.calculators.emt import EMT

from ase_distilled.teachers import get_teacher, label_batch, teacher_info

ORB_NAME = "orb-v3-conservative-inf-omat"


def _structures():
    cu = bulk("Cu", "fcc", a=3.6, cubic=True)
    cu.rattle(0.05, seed=1)
    ethanol = molecule("CH3CH2OH")
    ethanol.rattle(0.05, seed=0)
    return [ethanol, molecule("H2O"), cu]


@pytest.fixture(scope="module")
def orb():
    pytest.importorskip("orb_models", reason="Orb teachers need orb-models (extra 'orb')")
    return get_teacher(ORB_NAME, weights="random", device="cpu")


def _single(calc, atoms):
    atoms = atoms.copy()
    atoms.calc = calc
    return atoms.get_potential_energy(), atoms.get_forces()


def test_orb_labels_molecules_and_cells_with_finite_results(orb):
    labels = label_batch(orb, _structures())
    for atoms, label in zip(_structures(), labels):
        assert np.isfinite(label["energy"])
        assert label["forces"].shape == (len(atoms), 3)
        assert np.isfinite(label["forces"]).all()
        assert np.abs(label["forces"]).max() > 1e-4  # random weights still give forces
    assert "stress" not in labels[0]
    assert labels[2]["stress"].shape == (6,) and np.isfinite(labels[2]["stress"]).all()


def test_orb_conservative_forces_are_minus_energy_gradient(orb):
    atoms = molecule("NH3")
    atoms.rattle(0.05, seed=2)
    _, forces = _single(orb, atoms)
    step = 1e-2  # float32 energies: a larger step keeps rounding below the tolerance
    for i, d in [(0, 0), (1, 2), (3, 1)]:
        energies = []
        for sign in (1, -1):
            moved = atoms.copy()
            moved.positions[i, d] += sign * step
            energies.append(_single(orb, moved)[0])
        assert forces[i, d] == pytest.approx(-(energies[0] - energies[1]) / (2 * step),
                                             abs=2e-3)


def test_orb_batched_equals_per_structure(orb):
    structures = _structures()
    for atoms, label in zip(structures, orb.predict_batch(structures)):
        energy, forces = _single(orb, atoms)
        assert label["energy"] == pytest.approx(energy, rel=1e-5, abs=1e-5)
        np.testing.assert_allclose(label["forces"], forces, atol=1e-4)
    # The batch left no stale results behind: a new single call is still right.
    assert _single(orb, structures[1])[0] == pytest.approx(
        orb.predict_batch([structures[1]])[0]["energy"], rel=1e-5)


def test_loading_orb_leaves_torch_global_state_alone():
    pytest.importorskip("orb_models", reason="Orb teachers need orb-models (extra 'orb')")
    saved = torch.get_default_dtype(), torch.get_float32_matmul_precision()
    rng = torch.get_rng_state()
    try:
        torch.set_default_dtype(torch.float64)
        torch.set_float32_matmul_precision("medium")
        calc = get_teacher("orb-v3-direct-20-omat", weights="random", device="cpu")
        label_batch(calc, [molecule("H2O")])
        _single(calc, molecule("NH3"))
        assert torch.get_default_dtype() == torch.float64
        assert torch.get_float32_matmul_precision() == "medium"
        assert torch.equal(torch.get_rng_state(), rng)
    finally:
        torch.set_default_dtype(saved[0])
        torch.set_float32_matmul_precision(saved[1])


def test_orb_random_weights_are_seeded_and_local_weights_load(orb, tmp_path):
    path = tmp_path / "orb.ckpt"
    torch.save(orb.model.state_dict(), path)
    again = get_teacher(ORB_NAME, weights=path, device="cpu")
    water = molecule("H2O")
    assert _single(again, water)[0] == pytest.approx(_single(orb, water)[0], rel=1e-6)
    info = teacher_info(again)
    assert info["name"] == ORB_NAME and info["weights"].startswith("orb.ckpt sha256:")
    assert teacher_info(orb)["weights"] == "random(seed=0)"
    assert teacher_info(orb)["package"] == "orb-models"


def test_orb_failed_download_names_weights_path(monkeypatch):
    pytest.importorskip("orb_models", reason="Orb teachers need orb-models (extra 'orb')")
    from orb_models.forcefield import pretrained

    def offline(url):
        raise ConnectionError(f"Failed to resolve host for {url}")

    monkeypatch.setattr(pretrained, "cached_path", offline)
    with pytest.raises(FileNotFoundError, match="weights=PATH"):
        get_teacher("orb-v3-direct-20-omat", device="cpu")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        get_teacher(ORB_NAME, weights="/nonexistent/orb.ckpt")


def test_orb_omol_takes_charge_and_spin_from_info():
    pytest.importorskip("orb_models", reason="Orb teachers need orb-models (extra 'orb')")
    calc = get_teacher("orb-v3-conservative-omol", weights="random", device="cpu")
    water = molecule("H2O")
    neutral = _single(calc, water)[0]
    water.info.update(charge=0, spin=1)
    assert _single(calc, water)[0] == pytest.approx(neutral, rel=1e-6)
    water.info.update(charge=1, spin=2)
    cation = _single(calc, water)[0]
    assert cation != pytest.approx(neutral, rel=1e-6)
    # A charge change alone on the same attached Atoms invalidates cached results.
    water.calc = calc
    water.info.update(charge=0, spin=1)
    assert water.get_potential_energy() == pytest.approx(neutral, rel=1e-6)


def test_gfn2_xtb_equals_direct_tblite_call():
    pytest.importorskip("tblite", reason="gfn2-xtb needs tblite (extra 'xtb')")
    from ase.units import Bohr, Hartree
    from tblite.interface import Calculator

    hydroxide = molecule("OH")
    hydroxide.info["charge"] = -1
    methyl = molecule("CH3")
    methyl.info["spin"] = 2  # a doublet radical
    structures = [molecule("H2O"), hydroxide, methyl]
    teacher = get_teacher("gfn2-xtb")
    for atoms, label in zip(structures, label_batch(teacher, structures)):
        charge, spin = atoms.info.get("charge", 0), atoms.info.get("spin", 1)
        direct = Calculator("GFN2-xTB", atoms.numbers, atoms.positions / Bohr, charge, spin - 1)
        direct.set("verbosity", 0)
        result = direct.singlepoint()
        assert label["energy"] == pytest.approx(result["energy"] * Hartree, abs=1e-6)
        np.testing.assert_allclose(label["forces"], -result["gradient"] * Hartree / Bohr,
                                   atol=1e-6)
    assert teacher_info(teacher)["package"] == "tblite"


def test_ase_teachers_and_calculator_instances():
    emt = EMT()
    assert get_teacher(emt) is emt
    assert teacher_info(emt) == teacher_info("emt")
    assert teacher_info("emt")["package"] == "ase"
    cu = _structures()[2]
    label = label_batch("emt", [cu])[0]
    _, forces = _single(EMT(), cu)
    np.testing.assert_allclose(label["forces"], forces)
    assert label["stress"].shape == (6,)
    assert np.isfinite(label_batch("lj", [cu])[0]["energy"])


def test_unknown_teacher_lists_valid_names():
    with pytest.raises(ValueError, match="gfn2-xtb.*emt"):
        get_teacher("orbital-v9")
    with pytest.raises(ValueError, match="no weights"):
        get_teacher("emt", weights="x.ckpt")
