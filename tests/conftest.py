"""Shared test factories: small molecules and periodic cells, students in float64."""

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule

from ase_distilled import DistilledCalculator, build_student

# One torch thread for the whole suite: its models are small, and on a busy 2-core machine
# several threads spin-wait on each other (10-100x slower). Tests own their process.
torch.set_num_threads(1)

ELEMENTS = ["H", "C", "N", "O", "F", "S", "Cl", "Br", "Cu", "Si"]


def make_student(size="ultra-tiny", seed=0, **overrides):
    """A random student whose outputs are not trivially small (random atom refs, scale)."""
    torch.manual_seed(seed)
    model = build_student(size, elements=ELEMENTS, **overrides)
    with torch.no_grad():
        model.atom_ref.uniform_(-3.0, -1.0)
        model.scale.fill_(2.0)
    return model


def make_calc(model=None, **kwargs):
    kwargs.setdefault("dtype", "float64")
    kwargs.setdefault("device", "cpu")
    return DistilledCalculator(model if model is not None else make_student(), **kwargs)


def rattled(atoms, amplitude=0.05, seed=0):
    atoms = atoms.copy()
    noise = np.random.default_rng(seed).normal(scale=amplitude, size=atoms.positions.shape)
    atoms.positions += noise
    return atoms


def periodic_cells():
    """Periodic test systems: cubic, triclinic, a cell smaller than the cutoff, mixed pbc."""
    si = rattled(bulk("Si", "diamond", a=5.43), seed=1)                  # 2 atoms, cell < cutoff
    cu = rattled(bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 1, 1), seed=2)
    tri = rattled(Atoms("CuSi", scaled_positions=[[0, 0, 0], [0.4, 0.45, 0.55]],
                        cell=[[3.1, 0, 0], [1.2, 3.3, 0], [0.7, -0.9, 3.6]], pbc=True), seed=3)
    slab = rattled(bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 2, 1), seed=4)
    slab.pbc = [True, True, False]
    slab.cell[2] = [0, 0, 12.0]
    return {"si_small_cell": si, "cu_cubic": cu, "triclinic": tri, "slab_mixed_pbc": slab}


def molecules():
    return {"ethanol": rattled(molecule("CH3CH2OH"), seed=5),
            "thiophene": rattled(molecule("C4H4S"), seed=6),
            "ch3cl": rattled(molecule("CH3Cl"), seed=7)}


@pytest.fixture(scope="session")
def student():
    return make_student()
