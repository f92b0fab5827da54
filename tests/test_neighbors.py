"""Every neighbour-list backend against ase.neighborlist, one structure and batched."""

import importlib.util

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule
from ase.neighborlist import neighbor_list as ase_neighbor_list
from conftest import molecules, periodic_cells, rattled

from ase_distilled.batch import AtomsBatch
from ase_distilled.neighbors import NeighborCache, image_shifts, neighbor_list

BACKENDS = [
    "vesin",
    "torch",
    pytest.param("torch-cluster", marks=pytest.mark.skipif(
        importlib.util.find_spec("torch_cluster") is None, reason="torch-cluster not installed")),
]
STRUCTURES = {**molecules(), **periodic_cells(),
              "tiny_triclinic_cell": rattled(bulk("Cu", "bcc", a=2.3), seed=8),
              "wire_pbc_z": rattled(bulk("Si", "diamond", a=5.43, cubic=True), seed=9)}
STRUCTURES["wire_pbc_z"].pbc = [False, False, True]


def pair_set(i, j, s):
    return {(int(a), int(b), *map(int, np.rint(c))) for a, b, c in zip(i, j, s)}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(STRUCTURES))
@pytest.mark.parametrize("cutoff", [2.6, 5.0])
def test_backend_equals_ase(backend, name, cutoff):
    atoms = STRUCTURES[name]
    expected = pair_set(*ase_neighbor_list("ijS", atoms, cutoff))
    edge_index, shifts = neighbor_list(AtomsBatch.from_atoms(atoms, dtype=torch.float64),
                                       cutoff, backend)
    found = pair_set(edge_index[0].numpy(), edge_index[1].numpy(), shifts.numpy())
    assert len(found) == edge_index.shape[1]  # no duplicates
    assert found == expected
    assert len(expected) > 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_batched_equals_per_structure(backend):
    structures = list(STRUCTURES.values())
    batch = AtomsBatch.from_atoms(structures, dtype=torch.float64)
    edge_index, shifts = neighbor_list(batch, 4.0, backend)
    offset = 0
    for k, atoms in enumerate(structures):
        mine = batch.system[edge_index[0]] == k
        assert bool((batch.system[edge_index[1][mine]] == k).all())  # never across structures
        found = pair_set(edge_index[0][mine].numpy() - offset, edge_index[1][mine].numpy() - offset,
                         shifts[mine].numpy())
        assert found == pair_set(*ase_neighbor_list("ijS", atoms, 4.0))
        offset += len(atoms)


def test_float32_never_yields_self_pairs():
    atoms = molecule("C6H6")
    atoms.positions += 1000.0  # large coordinates: float32 self-distances are not exactly zero
    edge_index, _ = neighbor_list(AtomsBatch.from_atoms(atoms), 3.0, "torch")
    assert not bool((edge_index[0] == edge_index[1]).any())


def test_image_count_covers_small_cells():
    cell = torch.tensor(bulk("Cu", "fcc", a=3.6).cell.array)
    shifts = image_shifts(cell, torch.tensor([True, True, False]), 5.0)
    assert shifts[:, 2].abs().max() == 0
    assert shifts[:, 0].abs().max() >= 3  # plane spacing ~2.1 Å -> 3 images for 5 Å


def test_unknown_backend_is_named():
    with pytest.raises(ValueError, match="torch-cluster"):
        neighbor_list(AtomsBatch.from_atoms(molecule("H2O")), 3.0, "kdtree")


def test_cache_rebuilds_only_when_needed():
    atoms = molecule("CH3CH2OH")
    cache = NeighborCache(cutoff=3.0, skin=0.4)
    cache.get(AtomsBatch.from_atoms(atoms))
    atoms.positions[0] += [0.15, 0.0, 0.0]  # < skin/2
    cache.get(AtomsBatch.from_atoms(atoms))
    assert cache.builds == 1
    atoms.positions[0] += [0.1, 0.0, 0.0]  # 0.25 Å in all > skin/2
    cache.get(AtomsBatch.from_atoms(atoms))
    assert cache.builds == 2
    atoms.numbers[1] = 7
    cache.get(AtomsBatch.from_atoms(atoms))
    assert cache.builds == 3
    atoms.cell = [10, 10, 10]
    cache.get(AtomsBatch.from_atoms(atoms))
    assert cache.builds == 4
