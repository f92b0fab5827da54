"""Structure sources: deterministic, tagged, with clear errors for bad input."""

import ase.io
import numpy as np
import pytest
from ase.build import molecule
from ase.calculators.emt import EMT

from ase_distilled.data.structures import (
    Sampling,
    crystal_units,
    push_hydrogen,
    pushed,
    rattled,
    smiles_units,
    stretched,
    teacher_md,
    units_from_inputs,
)


@pytest.fixture
def smi(tmp_path):
    pytest.importorskip("rdkit", reason="SMILES input needs RDKit (extra 'data')")
    path = tmp_path / "mols.smi"
    path.write_text("OCC\n\n# a comment\nc1ccccc1CC(=O)O acid\nC[NH3+]\n[CH3]\n")
    return path


def test_smiles_conformers_are_deterministic_and_tagged(smi):
    units = smiles_units(smi)
    assert [unit.key for unit in units] == [f"mols:{k:06d}" for k in range(4)]
    sampling = Sampling(conformers=3, seed=7)
    first, again = units[1].build(sampling), units[1].build(sampling)
    assert len(first) == 3
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a.positions, b.positions)
        assert a.info == b.info
    assert not np.allclose(first[0].positions, first[1].positions)  # distinct conformers
    info = first[0].info
    assert info["id"] == "mols:000001/c00" and info["source"] == "conformer"
    assert info["molecule"] == "O=C(O)Cc1ccccc1" and info["scaffold"] == "c1ccccc1"
    assert first[0].get_chemical_formula() == "C8H8O2"
    assert units[0].build(sampling)[0].info["scaffold"] == ""  # acyclic: empty scaffold
    other_seed = units[1].build(Sampling(conformers=3, seed=8))
    assert not np.allclose(other_seed[0].positions, first[0].positions)
    # The public one-molecule function builds conformers the same way.
    from ase_distilled.data import conformers_from_smiles

    alone = conformers_from_smiles("c1ccccc1CC(=O)O", count=3, seed=7)
    assert [a.get_chemical_formula() for a in alone] == ["C8H8O2"] * 3
    assert alone[0].info["molecule"] == "O=C(O)Cc1ccccc1"
    with pytest.raises(ValueError, match="not a SMILES string RDKit can parse"):
        conformers_from_smiles("not-a-molecule((")


def test_smiles_charge_and_radical_spin(smi):
    cation, radical = (unit.build(Sampling(conformers=1))[0] for unit in smiles_units(smi)[2:])
    assert (cation.info["charge"], cation.info["spin"]) == (1, 1)
    assert (radical.info["charge"], radical.info["spin"]) == (0, 2)


def test_bad_smiles_is_skipped_with_a_warning(tmp_path):
    pytest.importorskip("rdkit", reason="SMILES input needs RDKit (extra 'data')")
    path = tmp_path / "bad.smi"
    path.write_text("C1CC\n")
    with pytest.warns(UserWarning, match="cannot parse"):
        assert smiles_units(path)[0].build(Sampling()) == []


def test_rattles_are_seeded_with_the_requested_amplitude():
    atoms = molecule("C6H6")
    atoms.info["id"] = "x/c00"
    sampling = Sampling(rattle=(0.01, 0.1), rattles=2)
    copies = rattled(atoms, sampling)
    assert [c.info["id"] for c in copies] == ["x/c00/rattle0.010-0", "x/c00/rattle0.010-1",
                                              "x/c00/rattle0.100-0", "x/c00/rattle0.100-1"]
    assert copies[2].info["source"] == "rattle:0.1"
    np.testing.assert_array_equal(copies[3].positions, rattled(atoms, sampling)[3].positions)
    displacement = copies[2].positions - atoms.positions
    assert displacement.std() == pytest.approx(0.1, rel=0.4)
    assert not np.allclose(copies[2].positions, copies[3].positions)


def test_stretched_copies_lengthen_one_bond_to_hydrogen_by_the_amplitude():
    atoms = molecule("CH3CH2OH")
    atoms.info["id"] = "x/c00"
    sampling = Sampling(stretch=(0.1, 0.3), seed=3)
    copies = stretched(atoms, sampling)
    assert [c.info["id"] for c in copies] == ["x/c00/stretch0.100", "x/c00/stretch0.300"]
    assert [c.info["source"] for c in copies] == ["stretch:0.1", "stretch:0.3"]
    for copy, amplitude in zip(copies, sampling.stretch):
        (moved,) = np.flatnonzero(np.linalg.norm(copy.positions - atoms.positions, axis=1))
        assert copy.numbers[moved] == 1
        heavy = np.flatnonzero(atoms.numbers != 1)
        before = atoms.get_distances(moved, heavy)
        after = copy.get_distances(moved, heavy)
        partner = np.argmin(before)
        assert after[partner] - before[partner] == pytest.approx(amplitude)
    np.testing.assert_array_equal(copies[1].positions, stretched(atoms, sampling)[1].positions)
    assert stretched(molecule("H2"), sampling) == []  # nothing to pull a hydrogen from
    # A dataset written before `stretch` existed still resumes: absent = none.
    old = Sampling(seed=3).to_json().replace(', "stretch": []', "")
    assert "stretch" not in old and Sampling.from_json(old) == Sampling(seed=3)


def test_push_turns_a_hydrogen_toward_its_target_about_its_partner():
    atoms = molecule("CH4")
    copy = push_hydrogen(atoms, 1, 30.0, target=2)
    assert copy.get_angle(1, 0, 2) == pytest.approx(atoms.get_angle(1, 0, 2) - 30.0, abs=1e-6)
    assert copy.get_distance(0, 1) == pytest.approx(atoms.get_distance(0, 1))
    np.testing.assert_array_equal(np.delete(copy.positions, 1, axis=0),
                                  np.delete(atoms.positions, 1, axis=0))
    # The turn stops on the carbon-target line: never past the target's side.
    stopped = push_hydrogen(atoms, 1, 150.0, target=2)
    assert stopped.get_angle(1, 0, 2) == pytest.approx(0.0, abs=1e-4)
    # By default, toward the nearest atom but the partner: here hydrogen 2.
    np.testing.assert_array_equal(push_hydrogen(atoms, 1, 30.0).positions, copy.positions)


def test_pushed_copies_close_one_angle_at_a_hydrogen_by_each_amount():
    atoms = molecule("CH3CH2OH")
    atoms.info["id"] = "x/c00"
    sampling = Sampling(push=(15.0, 40.0), seed=3)
    copies = pushed(atoms, sampling)
    assert [c.info["id"] for c in copies] == ["x/c00/push15.0", "x/c00/push40.0"]
    assert [c.info["source"] for c in copies] == ["push:15", "push:40"]
    heavy = np.flatnonzero(atoms.numbers != 1)
    for copy, degrees in zip(copies, sampling.push):
        (moved,) = np.flatnonzero(np.linalg.norm(copy.positions - atoms.positions, axis=1))
        assert copy.numbers[moved] == 1
        partner = heavy[np.argmin(atoms.get_distances(moved, heavy))]
        assert copy.get_distance(moved, partner) == pytest.approx(
            atoms.get_distance(moved, partner))
        closed = [atoms.get_angle(moved, partner, k) - copy.get_angle(moved, partner, k)
                  for k in range(len(atoms)) if k not in (moved, partner)
                  and atoms.get_distance(moved, k) < 3.0]
        assert max(closed) == pytest.approx(degrees, abs=1e-6)  # toward one of them
    np.testing.assert_array_equal(copies[1].positions, pushed(atoms, sampling)[1].positions)
    assert pushed(molecule("H2"), sampling) == []


def test_crystals_are_strained_periodic_supercells():
    (unit,) = crystal_units(["Cu"])
    cells = unit.build(Sampling(conformers=3, max_strain=0.03))
    assert len(cells) == 3 and all(len(c) >= 8 and c.pbc.all() for c in cells)
    assert cells[0].info["molecule"] == "Cu" and cells[0].info["source"] == "bulk"
    assert cells[1].get_volume() != pytest.approx(cells[0].get_volume(), rel=1e-6)
    assert np.abs(cells[1].cell.array @ np.linalg.inv(cells[0].cell.array)
                  - np.eye(3)).max() <= 0.03 + 1e-12
    with pytest.raises(ValueError, match="Cannot build crystal"):
        crystal_units(["Xx"])


def test_ase_files_and_their_errors(tmp_path):
    frames = [molecule("H2O"), molecule("NH3")]
    frames[1].info["molecule"] = "ammonia"
    path = tmp_path / "frames.extxyz"
    ase.io.write(path, frames)
    units = units_from_inputs([path])
    built = [unit.build(Sampling())[0] for unit in units]
    assert [a.info["id"] for a in built] == ["frames:000000/c00", "frames:000001/c00"]
    assert [a.info["molecule"] for a in built] == ["H2O", "ammonia"]
    garbage = tmp_path / "garbage.xyz"
    garbage.write_text("this is not\nan xyz file\n")
    with pytest.raises(ValueError, match="Cannot read structures from .*garbage.xyz"):
        units_from_inputs([garbage])
    with pytest.raises(FileNotFoundError, match="missing.smi"):
        units_from_inputs([tmp_path / "missing.smi"])
    binary = tmp_path / "binary.smi"
    binary.write_bytes(bytes(range(128, 256)))
    with pytest.raises(ValueError, match="not a text SMILES file"):
        units_from_inputs([binary])
    with pytest.raises(ValueError, match="Duplicate unit keys"):
        units_from_inputs([path, path])


def test_teacher_md_frames_carry_the_teachers_labels():
    (unit,) = crystal_units(["Cu"])
    atoms = unit.build(Sampling(conformers=1))[0]
    sampling = Sampling(md_temperatures=(300, 1000), md_frames=2, md_interval=3)
    frames = teacher_md(atoms, EMT(), sampling)
    assert [f.info["id"] for f in frames] == [
        "bulk:Cu/c00/md300K-00", "bulk:Cu/c00/md300K-01",
        "bulk:Cu/c00/md1000K-00", "bulk:Cu/c00/md1000K-01"]
    assert frames[2].info["source"] == "md:1000"
    for frame in frames:
        check = frame.copy()
        check.calc = EMT()
        np.testing.assert_allclose(frame.get_forces(), check.get_forces(), atol=1e-10)
        np.testing.assert_allclose(frame.get_stress(), check.get_stress(), atol=1e-10)
        assert not np.allclose(frame.positions, atoms.positions)
    again = teacher_md(atoms, EMT(), sampling)
    np.testing.assert_array_equal(again[-1].positions, frames[-1].positions)
