"""The physics checklist for the PaiNN student (float64 where precision matters)."""

import numpy as np
import pytest
from ase.calculators.calculator import PropertyNotImplementedError
from ase.calculators.fd import calculate_numerical_forces, calculate_numerical_stress
from conftest import make_calc, make_student, molecules, periodic_cells, rattled
from scipy.spatial.transform import Rotation

ALL = {**molecules(), **periodic_cells()}


@pytest.mark.parametrize("name", ["ethanol", "si_small_cell", "triclinic", "slab_mixed_pbc"])
def test_forces_equal_finite_differences(name):
    atoms = ALL[name].copy()
    atoms.calc = make_calc(skin=0.0)
    forces = atoms.get_forces()
    numeric = calculate_numerical_forces(atoms, eps=1e-5)
    np.testing.assert_allclose(forces, numeric, atol=1e-6)
    assert np.abs(forces).max() > 1e-3  # a random student has non-trivial forces


@pytest.mark.parametrize("name", ["si_small_cell", "cu_cubic", "triclinic"])
def test_stress_equals_finite_differences_under_strain(name):
    atoms = ALL[name].copy()
    atoms.calc = make_calc(skin=0.0)
    stress = atoms.get_stress()
    numeric = calculate_numerical_stress(atoms, eps=1e-5)
    np.testing.assert_allclose(stress, numeric, atol=1e-7)
    assert np.abs(stress).max() > 1e-4  # a random student has a non-trivial stress


def test_stress_not_offered_without_full_pbc():
    atoms = ALL["slab_mixed_pbc"].copy()
    atoms.calc = make_calc()
    with pytest.raises(PropertyNotImplementedError, match="periodic in all three"):
        atoms.get_stress()


@pytest.mark.parametrize("name", ["thiophene", "triclinic"])
def test_rotation_translation_invariance(name):
    atoms = ALL[name]
    calc = make_calc(skin=0.0)
    ref = calc.predict_batch([atoms])[0]
    rotation = Rotation.random(random_state=11).as_matrix()
    moved = atoms.copy()
    moved.positions = atoms.positions @ rotation.T + [1.3, -2.1, 0.7]
    moved.cell = atoms.cell.array @ rotation.T
    out = calc.predict_batch([moved])[0]
    assert out["energy"] == pytest.approx(ref["energy"], abs=1e-9)
    np.testing.assert_allclose(out["forces"], ref["forces"] @ rotation.T, atol=1e-9)
    if "stress" in ref:
        from ase.stress import full_3x3_to_voigt_6_stress, voigt_6_to_full_3x3_stress

        rotated = rotation @ voigt_6_to_full_3x3_stress(ref["stress"]) @ rotation.T
        np.testing.assert_allclose(out["stress"], full_3x3_to_voigt_6_stress(rotated), atol=1e-9)


@pytest.mark.parametrize("name", ["ethanol", "cu_cubic"])
def test_permutation_equivariance(name):
    atoms = ALL[name]
    calc = make_calc(skin=0.0)
    ref = calc.predict_batch([atoms])[0]
    order = np.random.default_rng(3).permutation(len(atoms))
    out = calc.predict_batch([atoms[order]])[0]
    assert out["energy"] == pytest.approx(ref["energy"], abs=1e-9)
    np.testing.assert_allclose(out["forces"], ref["forces"][order], atol=1e-9)


def test_predict_batch_equals_single_calls():
    structures = list(ALL.values())
    calc = make_calc()
    batched = calc.predict_batch(structures)
    for atoms, out in zip(structures, batched):
        atoms = atoms.copy()
        atoms.calc = make_calc()
        assert out["energy"] == pytest.approx(atoms.get_potential_energy(), abs=1e-9)
        np.testing.assert_allclose(out["forces"], atoms.get_forces(), atol=1e-9)
        assert ("stress" in out) == bool(atoms.pbc.all())
        if atoms.pbc.all():
            np.testing.assert_allclose(out["stress"], atoms.get_stress(), atol=1e-9)


@pytest.mark.parametrize("name", ["si_small_cell", "triclinic", "cu_cubic"])
def test_supercell_energy_is_extensive(name):
    atoms = ALL[name]
    calc = make_calc()
    cell, supercell = calc.predict_batch([atoms, atoms * (2, 2, 2)])
    assert supercell["energy"] == pytest.approx(8 * cell["energy"], rel=1e-10)
    np.testing.assert_allclose(supercell["forces"][: len(atoms)], cell["forces"], atol=1e-9)
    np.testing.assert_allclose(supercell["stress"], cell["stress"], atol=1e-10)


def test_energy_and_forces_continuous_across_cutoff():
    model = make_student()
    calc = make_calc(model, skin=0.0)
    from ase import Atoms

    cutoff = model.cutoff
    energies, forces = [], []
    for d in cutoff + np.array([-2e-4, -1e-4, -1e-6, 1e-6, 1e-4]):
        atoms = Atoms("CO", positions=[[0, 0, 0], [d, 0, 0]])
        out = calc.predict_batch([atoms])[0]
        energies.append(out["energy"])
        forces.append(out["forces"][1, 0])
    isolated = sum(calc.predict_batch([Atoms(s)])[0]["energy"] for s in "CO")
    assert energies[-1] == pytest.approx(isolated, abs=1e-12)  # beyond the cutoff: no interaction
    assert abs(energies[2] - energies[3]) < 1e-9  # no jump at the cutoff
    assert abs(forces[2]) < 1e-7 and abs(forces[3]) == 0  # the force vanishes smoothly too
    assert abs(forces[0]) > abs(forces[1]) > abs(forces[2])
    assert abs(energies[0] - energies[-1]) > 0  # but the pair did interact inside


def test_float32_close_to_float64():
    atoms = ALL["thiophene"]
    model = make_student()
    out32 = make_calc(model, dtype="float32").predict_batch([atoms])[0]
    out64 = make_calc(model, dtype="float64").predict_batch([atoms])[0]
    assert out32["energy"] == pytest.approx(out64["energy"], rel=1e-5)
    np.testing.assert_allclose(out32["forces"], out64["forces"], atol=1e-4)


def test_skin_reuse_equals_rebuilding_along_md():
    from ase import units
    from ase.md.verlet import VelocityVerlet

    model = make_student()
    atoms = rattled(periodic_cells()["cu_cubic"] * (2, 2, 2), 0.05, seed=9)
    atoms.set_velocities(np.random.default_rng(0).normal(scale=0.1, size=(len(atoms), 3)))
    atoms.calc = make_calc(model, skin=0.4)
    reference = make_calc(model, skin=0.0)
    dyn = VelocityVerlet(atoms, 2 * units.fs)
    for _ in range(30):
        dyn.run(1)
        fresh = reference.predict_batch([atoms])[0]
        np.testing.assert_allclose(atoms.get_forces(), fresh["forces"], atol=1e-9)
    builds = atoms.calc.neighbors.builds
    assert 1 < builds < 30  # reused some steps, rebuilt when atoms moved far enough
