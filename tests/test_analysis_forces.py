"""Force comparison: metrics against hand-computed values, reports, figures, CLI, Orb."""

import json
import math

import numpy as np
import pytest
import torch
from ase.build import molecule
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

from ase_distilled import DistilledCalculator, build_student, save_checkpoint
from ase_distilled.analysis import ForceReport, compare_forces, force_metrics, reference_labels
from ase_distilled.analysis.forces import force_angles


@pytest.fixture(scope="module")
def forces():
    return np.random.default_rng(0).normal(size=(50, 3))


@pytest.fixture(scope="module")
def student():
    torch.manual_seed(0)
    return DistilledCalculator(build_student("tiny", elements=["H", "C", "N", "O"]),
                               dtype="float64")


@pytest.fixture(scope="module")
def molecules():
    structures = []
    for k, name in enumerate(["CH3CH2OH", "CH3CONH2", "H2O"]):
        atoms = molecule(name)
        atoms.rattle(0.05, seed=k)
        structures.append(atoms)
    return structures


def test_identical_forces_are_perfect(forces):
    m = force_metrics(forces, forces)
    assert m["r2"] == 1.0
    assert m["rmse"] == m["mae"] == m["max"] == m["p95"] == 0.0
    assert m["angle_deg"] == pytest.approx(0.0, abs=1e-12)
    assert m["num_atoms"] == 50


def test_rotated_copy_has_the_rotation_angle(forces):
    planar = forces.copy()
    planar[:, 2] = 0.0  # in the rotation plane: every vector turns by exactly theta
    theta = np.radians(30.0)
    rotation = np.array([[np.cos(theta), -np.sin(theta), 0],
                         [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    rotated = planar @ rotation.T
    m = force_metrics(rotated, planar)
    assert m["angle_deg"] == pytest.approx(30.0, abs=1e-9)
    # a rotation by theta moves a vector of length f by 2 f sin(theta / 2)
    errors = 2 * np.sin(theta / 2) * np.linalg.norm(planar, axis=1)
    assert m["max"] == pytest.approx(errors.max())
    assert m["p95"] == pytest.approx(np.percentile(errors, 95))
    assert m["rmse"] == pytest.approx(np.sqrt(np.sum(errors**2) / planar.size))
    ss_tot = np.sum((planar - planar.mean()) ** 2)
    assert m["r2"] == pytest.approx(1 - np.sum(errors**2) / ss_tot)


def test_scaled_copy_has_the_known_errors(forces):
    m = force_metrics(1.1 * forces, forces)
    assert m["rmse"] == pytest.approx(0.1 * np.sqrt(np.mean(forces**2)))
    assert m["mae"] == pytest.approx(0.1 * np.mean(np.abs(forces)))
    assert m["max"] == pytest.approx(0.1 * np.linalg.norm(forces, axis=1).max())
    assert m["angle_deg"] == pytest.approx(0.0, abs=1e-6)
    assert force_metrics(-forces, forces)["angle_deg"] == pytest.approx(180.0)


def test_zero_vectors_have_no_angle():
    angles = force_angles([[0, 0, 0], [1, 0, 0]], [[1, 0, 0], [0, 2, 0]])
    assert math.isnan(angles[0]) and angles[1] == pytest.approx(90.0)
    with pytest.raises(ValueError, match="shape"):
        force_metrics(np.zeros((3, 3)), np.zeros((4, 3)))


def _synthetic_report(forces):
    numbers = np.array([1] * 30 + [8] * 20)
    predicted = forces + 0.05 * np.random.default_rng(1).normal(size=forces.shape)
    return ForceReport(model="m", reference="r", numbers=numbers,
                       structure=np.repeat([0, 1], 25), forces=predicted,
                       reference_forces=forces, energy=np.array([1.0, -2.0]),
                       reference_energy=np.array([0.5, np.nan]), num_atoms=np.array([25, 25]),
                       parameters=1000)


def test_report_metrics_per_element_and_files(forces, tmp_path):
    report = _synthetic_report(forces)
    m = report.metrics
    assert m["per_element"]["O"] == force_metrics(report.forces[30:], forces[30:])
    assert m["forces"] == force_metrics(report.forces, forces)
    assert m["energy_mae_per_atom"] == pytest.approx(0.5 / 25)  # NaN reference left out
    paths = report.write(tmp_path)
    assert json.loads(paths["metrics"].read_text()) == m
    rows = paths["per_atom"].read_text().splitlines()
    assert len(rows) == 51 and rows[1].startswith("0,0,H,") and rows[-1].startswith("1,24,O,")
    assert "O" in report.summary() and "20.00 meV/atom" in report.summary()


def test_figures_are_written(forces, tmp_path):
    pytest.importorskip("matplotlib")
    from ase_distilled.analysis.plots import plot_force_report, plot_model_comparison

    report = _synthetic_report(forces)
    bigger = _synthetic_report(0.5 * forces)
    bigger.model, bigger.parameters = "big", 20000
    for path in (plot_force_report(report, tmp_path / "forces.png"),
                 plot_model_comparison([report, bigger], tmp_path / "sizes.png")):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 20000
    report.parameters = None
    with pytest.raises(ValueError, match="parameter count"):
        plot_model_comparison([report, bigger], tmp_path / "x.png")


def test_compare_student_with_emt(student, molecules):
    report = compare_forces(student, EMT(), molecules, name="tiny")
    expected = []
    for atoms in molecules:
        atoms = atoms.copy()
        atoms.calc = EMT()
        expected.append(atoms.get_forces())
    np.testing.assert_allclose(report.reference_forces, np.concatenate(expected))
    np.testing.assert_allclose(report.forces, np.concatenate(
        [out["forces"] for out in student.predict_batch(molecules)]), atol=1e-10)
    assert report.parameters == student.model.num_parameters()
    assert report.reference == "emt" and len(report.numbers) == sum(map(len, molecules))


def test_compare_with_itself_is_perfect(student, molecules):
    m = compare_forces(student, student, molecules).metrics
    assert m["forces"]["r2"] == pytest.approx(1.0) and m["forces"]["max"] < 1e-10
    assert m["energy_mae_per_atom"] < 1e-10


def test_labelled_reference(molecules, student):
    labelled, _ = reference_labels(EMT(), molecules)
    assert all(isinstance(atoms.calc, SinglePointCalculator) for atoms in labelled)
    from_labels = compare_forces(student, labelled).metrics
    assert from_labels["forces"] == compare_forces(student, EMT(), molecules).metrics["forces"]
    with pytest.raises(ValueError, match="do not pass structures"):
        compare_forces(student, labelled, molecules)
    with pytest.raises(ValueError, match="no reference forces"):
        compare_forces(student, molecules)
    with pytest.raises(ValueError, match="No structures"):
        compare_forces(student, EMT(), [])


def test_hdf5_reference_round_trip(molecules, student, tmp_path):
    pytest.importorskip("h5py")
    try:
        from ase_distilled.data import save
    except ImportError:
        pytest.skip("ase_distilled.data.save is not available")
    labelled, _ = reference_labels(EMT(), molecules)
    save(labelled, tmp_path / "labels.h5", teacher="emt")
    from_file = compare_forces(student, tmp_path / "labels.h5").metrics
    assert from_file["forces"] == pytest.approx(compare_forces(student, labelled).metrics["forces"])


def test_compare_cli(molecules, tmp_path):
    pytest.importorskip("matplotlib")
    from ase.io import write

    from ase_distilled.cli import main

    checkpoint = save_checkpoint(build_student("ultra-tiny"), tmp_path / "student.pt")
    write(tmp_path / "mols.extxyz", molecules)
    out = tmp_path / "out"
    assert main(["compare", str(tmp_path / "mols.extxyz"), "--model", str(checkpoint),
                 "--reference", "emt", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["forces"]["num_atoms"] == sum(map(len, molecules))
    assert (out / "forces.png").stat().st_size > 0 and (out / "per_atom.csv").is_file()
    assert main(["compare", str(tmp_path / "missing.xyz"), "--model", str(checkpoint),
                 "--reference", "emt", "--out", str(out)]) == 2


def test_compare_against_orb_random_weights(student, molecules):
    pytest.importorskip("orb_models")
    teachers = pytest.importorskip("ase_distilled.teachers")
    report = compare_forces(student, teachers.get_teacher(
        "orb-v3-conservative-inf-omat", weights="random", device="cpu"), molecules[:2])
    m = report.metrics
    assert m["forces"]["num_atoms"] == len(molecules[0]) + len(molecules[1])
    assert np.isfinite(report.reference_forces).all() and m["energy_mae_per_atom"] is not None
    assert report.reference_forces.std() > 0
