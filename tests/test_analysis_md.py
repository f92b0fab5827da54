"""MD runner and trajectory metrics: synthetic trajectories with known answers, EMT runs."""

import json

import numpy as np
import pytest
from ase.build import bulk, molecule
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read

from ase_distilled import build_student, save_checkpoint
from ase_distilled.analysis import MDRun, run_md, run_md_side_by_side
from ase_distilled.analysis.md import (
    bond_deviation,
    bonds,
    distance_distribution,
    distribution_error,
    energy_drift,
)


def _frames(positions_list, base, energies=None):
    frames = []
    for k, positions in enumerate(positions_list):
        frame = base.copy()
        frame.positions = positions
        frame.calc = SinglePointCalculator(frame, energy=0.0 if energies is None else energies[k])
        frames.append(frame)
    return frames


@pytest.fixture(scope="module")
def cu():
    return bulk("Cu", cubic=True).repeat(2)


def test_broken_bond_is_detected():
    ethanol = molecule("CH3CH2OH")
    pairs, _ = bonds(ethanol)
    assert len(pairs) == 8  # C-C, C-O, O-H and 5 C-H
    i, j = pairs[0]
    direction = ethanol.positions[j] - ethanol.positions[i]
    direction /= np.linalg.norm(direction)
    positions = []
    for k in range(10):  # atom j moves away from i by 0.12 Å per frame
        p = ethanol.positions.copy()
        p[j] += 0.12 * k * direction
        positions.append(p)
    run = MDRun(frames=_frames(positions, ethanol), time_ps=0.01 * np.arange(10), ensemble="nve")
    np.testing.assert_allclose(run.bond_deviation, 0.12 * np.arange(10), atol=1e-12)
    m = run.metrics()
    assert not m["stable"]
    assert m["stability_ps"] == pytest.approx(0.05)  # first frame beyond 0.5 Å: 0.6 Å
    assert m["num_bonds"] == 8


def test_rigid_motion_is_stable():
    ethanol = molecule("CH3CH2OH")
    rotated = ethanol.copy()
    rotated.rotate(70, "z", center="COM")
    rotated.translate([3.0, -1.0, 2.0])
    run = MDRun(frames=_frames([ethanol.positions, rotated.positions], ethanol),
                time_ps=np.array([0.0, 0.1]), ensemble="nvt")
    m = run.metrics()
    assert m["stable"] and m["stability_ps"] == pytest.approx(0.1)
    assert m["max_bond_deviation_A"] < 1e-12
    assert "energy_drift_meV_atom_ps" not in m  # NVT: a thermostat exchanges energy


def test_bonds_across_periodic_boundaries(cu):
    wrapped = cu.copy()
    wrapped.positions += [0.3, 0.0, 0.0]  # crosses the cell boundary, unwrapped like MD does
    assert len(bonds(cu)[0]) == 12 * len(cu) // 2  # fcc: 12 neighbours
    np.testing.assert_allclose(bond_deviation([cu, wrapped]), 0.0, atol=1e-12)


def test_drift_of_a_linear_energy(cu):
    time_ps = np.linspace(0.0, 2.0, 21)
    energies = -100.0 + 0.064 * time_ps  # 0.064 eV/ps over 32 atoms = 2 meV/atom/ps
    run = MDRun(frames=_frames([cu.positions] * 21, cu, energies), time_ps=time_ps,
                ensemble="nve")
    assert run.metrics()["energy_drift_meV_atom_ps"] == pytest.approx(2.0)
    assert energy_drift(time_ps, -energies, 32) == pytest.approx(-2.0)


def test_distance_distribution():
    water = molecule("H2O")
    r, h = distance_distribution([water], r_max=3.0, bin_width=0.1)
    assert np.sum(h) * 0.1 == pytest.approx(1.0)
    assert r[np.argmax(h)] == pytest.approx(0.95, abs=0.05)  # two O-H of 0.97 Å
    far = water.copy()
    far.positions *= 2.0
    assert distribution_error(h, h, 0.1) == 0.0
    assert distribution_error(h, distance_distribution([far], 3.0, 0.1)[1], 0.1) \
        == pytest.approx(2.0)  # disjoint distributions


def test_nve_emt_conserves_energy(cu, tmp_path):
    run = run_md(cu, EMT(), ensemble="nve", temperature_K=300, timestep_fs=1.0, steps=200,
                 interval=5, out_dir=tmp_path, progress=False)
    energy = run.total_energy / len(cu)
    # Measured: spread ~1e-5 eV/atom and drift ~1e-3 meV/atom/ps; tolerances 10x and 100x
    assert energy.max() - energy.min() < 1e-4
    assert abs(run.metrics()["energy_drift_meV_atom_ps"]) < 0.1
    assert run.steps == 200 and len(run.frames) == 41
    np.testing.assert_allclose(np.diff(run.time_ps), 0.005)
    for path in run.files.values():
        frames = read(path, index=":")
        assert len(frames) == 41
        np.testing.assert_allclose(frames[-1].positions, run.frames[-1].positions, atol=1e-6)
        assert frames[-1].get_potential_energy() == pytest.approx(run.potential_energy[-1])


def test_nvt_emt_reaches_the_thermostat_temperature(cu):
    run = run_md(cu, EMT(), ensemble="nvt", temperature_K=500, timestep_fs=2.0, steps=400,
                 friction_per_fs=0.05, interval=5, progress=False)
    assert np.mean(run.temperature[len(run.temperature) // 2:]) == pytest.approx(500, rel=0.25)
    assert run.metrics()["stable"]


class _CollapsingEMT(EMT):
    """EMT that, like DistilledCalculator on overlapping atoms, raises after some calls."""

    calls = 0

    def calculate(self, *args, **kwargs):
        self.calls += 1
        if self.calls > 30:
            raise ValueError("Atoms 0 and 1 overlap")
        super().calculate(*args, **kwargs)


def test_run_stops_cleanly_when_the_calculator_fails(cu):
    run = run_md(cu, _CollapsingEMT(), ensemble="nve", steps=100, interval=5, progress=False)
    m = run.metrics()
    assert not m["completed"] and not m["stable"] and "overlap" in m["error"]
    assert 25 <= run.steps < 100 and len(run.frames) >= 5
    with pytest.raises(ValueError, match="ensemble"):
        run_md(cu, EMT(), ensemble="npt")


@pytest.fixture(scope="module")
def student():
    from ase_distilled import DistilledCalculator

    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    return DistilledCalculator(build_student("ultra-tiny").double(), device="cpu",
                               dtype="float64")


def test_side_by_side_md_follows_each_molecule_alone(student):
    molecules = [molecule("CH3CH2OH"), molecule("C6H6"), molecule("CH3COOH")]
    settings = dict(ensemble="nve", temperature_K=300, timestep_fs=0.5, steps=40, interval=10,
                    seed=3, progress=False)
    together = run_md_side_by_side(molecules, student, **settings)
    alone = run_md(molecules[0], student, **settings)  # the first draws the same velocities
    assert [len(r.frames[0]) for r in together] == [9, 12, 8]
    assert all(r.error is None and r.steps == 40 for r in together)
    offset = alone.frames[0].positions - together[0].frames[0].positions
    for a, b in zip(alone.frames, together[0].frames):
        np.testing.assert_allclose(b.positions + offset, a.positions, atol=1e-8)
        np.testing.assert_allclose(b.get_forces(), a.get_forces(), atol=1e-8)
    np.testing.assert_allclose(together[0].total_energy, alone.total_energy, atol=1e-8)
    for run, mol in zip(together, molecules):  # each frame's energy is the molecule's own
        probe = run.frames[-1].copy()
        probe.calc = student
        assert run.frames[-1].get_potential_energy() == pytest.approx(
            probe.get_potential_energy(), abs=1e-8)
        assert run.frames[-1].get_chemical_formula() == mol.get_chemical_formula()


def test_side_by_side_md_rejects_what_it_cannot_separate(student):
    ethanol = molecule("CH3CH2OH")
    with pytest.raises(ValueError, match="short-ranged calculator"):
        run_md_side_by_side([ethanol, ethanol], EMT(), steps=2)
    runs = run_md_side_by_side([ethanol, ethanol], student, gap=2.0, steps=2, interval=1,
                               progress=False)
    assert all("came within the cutoff" in run.error for run in runs)


def test_md_figure(cu, tmp_path):
    pytest.importorskip("matplotlib")
    from ase_distilled.analysis.plots import plot_md

    run = run_md(cu, EMT(), steps=20, interval=5, progress=False)
    other = run_md(cu, EMT(), steps=20, interval=5, progress=False, seed=1)
    path = plot_md(run, tmp_path / "md.png", reference=other)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 20000
    assert run.metrics(other)["hr_error"] > 0


def test_md_cli(tmp_path):
    from ase.io import write

    from ase_distilled.cli import main

    checkpoint = save_checkpoint(build_student("ultra-tiny"), tmp_path / "student.pt")
    write(tmp_path / "ethanol.xyz", molecule("CH3CH2OH"))
    out = tmp_path / "out"
    code = main(["md", str(tmp_path / "ethanol.xyz"), "--model", str(checkpoint), "--steps",
                 "10", "--interval", "5", "--ensemble", "nve", "--reference", "emt",
                 "--out", str(out)])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["md"]["steps"] == 10 and "energy_drift_meV_atom_ps" in metrics["md"]
    assert metrics["forces_along_trajectory"]["num_atoms"] == 3 * 9
    assert len(read(out / "md.extxyz", index=":")) == 3
    assert (out / "reference.traj").is_file()
    assert main(["md", "not-a-molecule((", "--model", str(checkpoint), "--out", str(out)]) == 2


def test_md_cli_smiles():
    pytest.importorskip("rdkit")
    from ase_distilled.cli import _structure_from_argument

    atoms = _structure_from_argument("CCO")
    assert atoms.get_chemical_formula() == "C2H6O"
    assert min(d for d in atoms.get_all_distances().ravel() if d > 0) > 0.9
