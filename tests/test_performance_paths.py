"""The fast paths give the same energies and forces as the plain ones.

Speed itself is measured in ``benchmarks/``, never asserted here.
"""

import subprocess
import sys

import numpy as np
import pytest
import torch
from ase import units
from ase.build import bulk, molecule
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
from ase.md.verlet import VelocityVerlet
from conftest import make_calc, make_student, molecules, periodic_cells, rattled

from ase_distilled.batch import AtomsBatch
from ase_distilled.host_memory import has_glibc
from ase_distilled.neighbors import NeighborCache, neighbor_list


def plain_energy(model, positions, species, edge_index, shifts, cell):
    """PaiNN written the textbook way: one filter tensor, split, v gathered on every block."""
    i, j = edge_index
    vectors = positions[j] - positions[i] + shifts @ cell
    d = torch.linalg.vector_norm(vectors, dim=-1)
    unit = vectors / d.unsqueeze(-1)
    envelope = torch.where(d < model.cutoff, 0.5 * (torch.cos(d * np.pi / model.cutoff) + 1), 0.0)
    filters = model.filters(model.rbf(d)) * envelope.unsqueeze(-1)
    filters = torch.split(filters, 3 * model.hidden, dim=-1)
    s = model.embedding(species)
    v = s.new_zeros((s.shape[0], 3, model.hidden))
    for k, (message, update) in enumerate(zip(model.messages, model.updates)):
        x = message.phi(s)[j] * filters[k]
        ds, dvv, dvs = torch.split(x, model.hidden, dim=-1)
        dv = v[j] * dvv.unsqueeze(1) + dvs.unsqueeze(1) * unit.unsqueeze(-1)
        s, v = s.index_add(0, i, ds), v.index_add(0, i, dv)
        s, v = update(s, v)
    y = model.readout(s).squeeze(-1)
    return (model.scale * y + model.shift + model.atom_ref[species]).sum()


@pytest.mark.parametrize("atoms", [molecule("C6H6"), rattled(bulk("Cu", "fcc", a=3.6) * (2, 2, 2))],
                         ids=["benzene", "cu_periodic"])
def test_model_equals_textbook_painn(atoms):
    model = make_student("tiny").double()
    batch = AtomsBatch.from_atoms(atoms, dtype=torch.float64)
    edge_index, shifts = neighbor_list(batch, model.cutoff)
    out = model.predict(batch, edge_index, shifts)
    positions = batch.positions.clone().requires_grad_(True)
    energy = plain_energy(model, positions, model.species_of(batch.numbers), edge_index, shifts,
                          batch.cell[0])
    forces = -torch.autograd.grad(energy, positions)[0]
    assert float(out["energy"][0]) == pytest.approx(float(energy), abs=1e-10)
    torch.testing.assert_close(out["forces"], forces, rtol=0, atol=1e-10)


def test_skin_reuse_equals_rebuild_over_1000_md_steps():
    atoms = molecules()["ethanol"]
    atoms.calc = reused = make_calc(skin=0.5)
    rebuilt = make_calc(skin=0.0)
    MaxwellBoltzmannDistribution(atoms, temperature_K=600, rng=np.random.default_rng(0))
    worst = {"energy": 0.0, "forces": 0.0}

    def compare():
        reference = rebuilt.get_potential_energy(atoms), rebuilt.get_forces(atoms)
        worst["energy"] = max(worst["energy"], abs(atoms.get_potential_energy() - reference[0]))
        worst["forces"] = max(worst["forces"], np.abs(atoms.get_forces() - reference[1]).max())

    dynamics = VelocityVerlet(atoms, timestep=0.5 * units.fs)
    dynamics.attach(compare, interval=1)
    dynamics.run(1000)
    assert rebuilt.neighbors.builds == 1001
    assert 3 <= reused.neighbors.builds < 500  # both the reuse and the rebuild path ran
    assert worst["energy"] < 1e-10 and worst["forces"] < 1e-10


@pytest.mark.parametrize("name", sorted(periodic_cells()))
def test_cache_returns_exactly_the_pairs_within_cutoff(name):
    atoms = periodic_cells()[name]
    cache = NeighborCache(cutoff=4.0, skin=1.0)
    for seed in range(3):  # moves below skin / 2: the list is reused, then trimmed
        moved = rattled(atoms, amplitude=0.08, seed=seed)
        batch = AtomsBatch.from_atoms(moved, dtype=torch.float64)
        found = cache.get(batch)
        expected = neighbor_list(batch, 4.0)
        as_set = [{(int(a), int(b), *map(int, s)) for a, b, s in zip(*e[0], e[1].tolist())}
                  for e in (found, expected)]
        assert as_set[0] == as_set[1]
    assert cache.builds == 1


def test_positions_only_reuse_then_other_changes():
    atoms = molecule("CH3CH2OH")
    atoms.calc = make_calc()
    atoms.get_forces()
    for step in range(3):  # positions only: the cached batch is reused
        atoms.positions[step] += 0.05
        energy = atoms.get_potential_energy()
        assert energy == pytest.approx(make_calc().get_potential_energy(atoms), abs=1e-12)
    atoms.numbers[0] = 7  # numbers change: the batch must be rebuilt, not reused
    assert atoms.get_potential_energy() == pytest.approx(
        make_calc().get_potential_energy(atoms), abs=1e-12)
    atoms.positions[1] += 0.05
    np.testing.assert_allclose(atoms.get_forces(), make_calc().get_forces(atoms), atol=1e-12)


def test_torchscript_export_equals_eager_in_md(tmp_path):
    export = pytest.importorskip("ase_distilled.export")
    model = make_student("tiny")
    path = export.export_torchscript(model, tmp_path / "tiny.pt")
    atoms = molecule("C6H6")
    atoms.calc = scripted = make_calc(str(path), dtype="float32")
    eager = make_calc(model, dtype="float32")
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(1))
    dynamics = VelocityVerlet(atoms, timestep=0.5 * units.fs)
    for _ in range(5):
        dynamics.run(20)
        assert atoms.get_potential_energy() == pytest.approx(eager.get_potential_energy(atoms),
                                                             abs=1e-4)
        np.testing.assert_allclose(atoms.get_forces(), eager.get_forces(atoms), atol=1e-4)
    assert scripted.neighbors.builds >= 1


@pytest.mark.slow
def test_torch_compile_equals_eager():
    # Minutes of compilation on CPU: measured in benchmarks/README.md, not a default path.
    atoms = rattled(molecule("C6H6"))
    eager = make_calc(make_student("tiny"), dtype="float32")
    compiled = make_calc(make_student("tiny"), dtype="float32")
    compiled.model.compile(dynamic=True)
    for seed in range(3):
        moved = rattled(atoms, amplitude=0.1, seed=seed)
        assert compiled.get_potential_energy(moved) == pytest.approx(
            eager.get_potential_energy(moved), abs=1e-4)
        np.testing.assert_allclose(compiled.get_forces(moved), eager.get_forces(moved),
                                   atol=1e-4)


_FAULTS_OF_A_60MB_TENSOR_AFTER_100MB_FREED = """
import resource, torch
from ase_distilled import DistilledCalculator, build_student
DistilledCalculator(build_student("ultra-tiny"), device="cpu", reuse_memory={reuse})
torch.ones(25_000_000)  # 100 MB, freed at once
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
torch.ones(15_000_000)  # 60 MB: fits in the freed 100 MB
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not has_glibc(), reason="the malloc setting exists in glibc only")
def test_cpu_calculator_makes_freed_memory_reusable():
    # With glibc's defaults anything above 32 MB is fresh mmap'd memory: 60 MB is
    # 14,600 page faults. Kept memory is reused without any.
    def faults(reuse):
        script = _FAULTS_OF_A_60MB_TENSOR_AFTER_100MB_FREED.format(reuse=reuse)
        run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                             check=True)
        return int(run.stdout.split()[-1])

    assert faults(reuse=False) > 10_000
    assert faults(reuse=True) < 1_000
