"""pytest-benchmark suite of the students (random weights: speed does not depend on them).

    python -m pytest benchmarks/test_bench_students.py --benchmark-columns=median,iqr,rounds

Side-by-side comparisons with teachers and peers are in ``compare.py``.
"""

import numpy as np
import pytest
import torch
from ase import units
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
from ase.md.verlet import VelocityVerlet
from bench_systems import drug_like, moved, water_box

from ase_distilled import DistilledCalculator, build_student
from ase_distilled.batch import AtomsBatch
from ase_distilled.neighbors import NeighborCache, neighbor_list

SIZES = ["small", "tiny", "ultra-tiny"]
SYSTEMS = {"drug-like-40": lambda: drug_like(40, 1, seed=1)[0],
           "water-1029": lambda: water_box(7)}


def calculator(size, **options):
    torch.manual_seed(0)
    return DistilledCalculator(build_student(size), device="cpu", **options)


@pytest.mark.parametrize("system", sorted(SYSTEMS))
@pytest.mark.parametrize("size", SIZES)
def test_single_point(benchmark, size, system):
    atoms = SYSTEMS[system]()
    atoms.calc = calculator(size)
    rng = np.random.default_rng(0)
    benchmark(lambda: (moved(atoms, rng), atoms.get_forces()))


@pytest.mark.parametrize("size", SIZES)
def test_md_step(benchmark, size):
    atoms = SYSTEMS["drug-like-40"]()
    atoms.calc = calculator(size)
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
    dynamics = VelocityVerlet(atoms, timestep=0.5 * units.fs)
    benchmark(dynamics.run, 1)


@pytest.mark.parametrize("size", SIZES)
def test_predict_batch_of_64(benchmark, size):
    molecules = drug_like(40, 64, seed=2, tolerance=20)
    calc = calculator(size)
    rng = np.random.default_rng(0)
    benchmark.extra_info["atoms"] = sum(len(a) for a in molecules)
    benchmark(lambda: calc.predict_batch([moved(a, rng) for a in molecules]))


@pytest.mark.parametrize("system", sorted(SYSTEMS))
def test_neighbor_list_build(benchmark, system):
    batch = AtomsBatch.from_atoms(SYSTEMS[system]())
    benchmark(neighbor_list, batch, 5.5)


@pytest.mark.parametrize("system", sorted(SYSTEMS))
def test_neighbor_list_reuse(benchmark, system):
    """A cached list with skin: check displacements, trim to the cutoff."""
    atoms = SYSTEMS[system]()
    cache = NeighborCache(5.0, skin=0.5)
    cache.get(AtomsBatch.from_atoms(atoms))
    batch = AtomsBatch.from_atoms(moved(atoms, np.random.default_rng(0)))
    benchmark(cache.get, batch)
    assert cache.builds == 1
