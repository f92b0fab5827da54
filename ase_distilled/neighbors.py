"""Batched neighbour lists: periodic, non-periodic and mixed boundary conditions.

Every backend returns the same thing for an :class:`~ase_distilled.batch.AtomsBatch`:

- ``edge_index`` (2, E) long tensor of global atom indices ``(i, j)``;
- ``shifts`` (E, 3) integer image shifts (as floats), such that the edge vector is
  ``r_j - r_i + shifts @ cell``.

The list is "full": both ``(i, j)`` and ``(j, i)`` are present. Backends:

``"vesin"`` (default)
    vesin's cell-list code, one call per structure; handles triclinic cells,
    mixed pbc and cells smaller than the cutoff.
``"torch"``
    Dense pairwise distances over all needed periodic images, in torch on the
    batch's device. O(N^2) memory: for small systems and as a reference.
``"torch-cluster"``
    ``torch_cluster.radius`` over the same periodic images (extra ``cluster``).

:class:`NeighborCache` adds Verlet-skin reuse across MD steps.
"""

import math

import numpy as np
import torch

from ase_distilled.batch import AtomsBatch

BACKENDS = ("vesin", "torch", "torch-cluster")


def neighbor_list(batch: AtomsBatch, cutoff: float, backend: str = "vesin"):
    """Neighbour pairs within ``cutoff`` (Å) for every structure of a batch.

    Returns
    -------
    edge_index : (2, E) long tensor
    shifts : (E, 3) tensor with the batch's floating dtype
    """
    if backend not in BACKENDS:
        raise ValueError(f"Unknown neighbour-list backend {backend!r}; choose from {BACKENDS}.")
    build = {"vesin": _vesin, "torch": _torch_dense, "torch-cluster": _torch_cluster}[backend]
    edges, shifts = [], []
    offsets = torch.cumsum(batch.num_atoms, 0) - batch.num_atoms
    for k, (start, count) in enumerate(zip(offsets.tolist(), batch.num_atoms.tolist())):
        positions = batch.positions[start:start + count]
        pair, shift = build(positions, batch.cell[k], batch.pbc[k], cutoff)
        edges.append(pair + start)
        shifts.append(shift)
    edge_index = torch.cat(edges, dim=1) if edges else batch.numbers.new_zeros((2, 0))
    shift = torch.cat(shifts) if shifts else batch.positions.new_zeros((0, 3))
    return edge_index, shift.to(batch.positions.dtype)


def edge_lengths(batch: AtomsBatch, edge_index, shifts) -> torch.Tensor:
    """(E,) lengths in Å of the edge vectors ``r_j - r_i + shifts @ cell``."""
    i, j = edge_index
    vectors = batch.positions[j] - batch.positions[i] + torch.einsum(
        "ek,ekl->el", shifts, batch.cell[batch.system[i]])
    return torch.linalg.vector_norm(vectors, dim=1)


def _vesin(positions, cell, pbc, cutoff):
    import vesin

    calculator = vesin.NeighborList(cutoff=float(cutoff), full_list=True)
    i, j, s = calculator.compute(
        positions.detach().cpu().double().numpy(),
        cell.detach().cpu().double().numpy(),
        pbc.cpu().numpy().tolist(),
        quantities="ijS",
    )
    pair = torch.as_tensor(np.stack([i, j]).astype(np.int64), device=positions.device)
    return pair, torch.as_tensor(s, device=positions.device)


def image_shifts(cell: torch.Tensor, pbc: torch.Tensor, cutoff: float) -> torch.Tensor:
    """All integer image shifts (K, 3) that can hold a neighbour within ``cutoff``.

    Along a periodic direction the number of images is ``ceil(cutoff / d)``, with
    ``d`` the spacing between lattice planes, so cells smaller than the cutoff work.
    """
    counts = [0, 0, 0]
    if bool(pbc.any()):
        reciprocal = torch.linalg.inv(cell.double()).T
        for axis in range(3):
            if bool(pbc[axis]):
                spacing = 1.0 / float(torch.linalg.vector_norm(reciprocal[axis]))
                counts[axis] = math.ceil(cutoff / spacing)
    ranges = [torch.arange(-n, n + 1, device=cell.device) for n in counts]
    return torch.cartesian_prod(*ranges).reshape(-1, 3).to(cell.dtype)


def _drop_self_pairs(i, j, shift_index, shifts):
    # Select by index, never by distance > 0: in float32 a self-distance is not exactly 0.
    zero_shift = (shifts == 0).all(dim=1)
    keep = ~((i == j) & zero_shift[shift_index])
    return i[keep], j[keep], shifts[shift_index[keep]]


def _torch_dense(positions, cell, pbc, cutoff):
    shifts = image_shifts(cell, pbc, cutoff)
    images = positions.unsqueeze(0) + (shifts @ cell).unsqueeze(1)  # (K, n, 3)
    vectors = images.unsqueeze(1) - positions.unsqueeze(0).unsqueeze(2)  # (K, i, j, 3)
    within = torch.linalg.vector_norm(vectors, dim=-1) < cutoff
    shift_index, i, j = torch.nonzero(within, as_tuple=True)
    i, j, s = _drop_self_pairs(i, j, shift_index, shifts)
    return torch.stack([i, j]), s


def _torch_cluster(positions, cell, pbc, cutoff):
    try:
        from torch_cluster import radius
    except ImportError as error:
        raise ImportError(
            "The 'torch-cluster' neighbour-list backend needs torch-cluster: "
            "pip install 'ase-distilled[cluster]' (it compiles from source), "
            "or use backend='vesin'."
        ) from error
    shifts = image_shifts(cell, pbc, cutoff)
    n = positions.shape[0]
    images = (positions.unsqueeze(0) + (shifts @ cell).unsqueeze(1)).reshape(-1, 3)
    i, image = radius(images, positions, cutoff, max_num_neighbors=images.shape[0])
    j, shift_index = image % n, image // n
    i, j, s = _drop_self_pairs(i, j, shift_index, shifts)
    return torch.stack([i, j]), s


class NeighborCache:
    """Verlet-skin reuse of a neighbour list across MD steps.

    The list is built with ``cutoff + skin`` and reused until some atom has moved
    more than ``skin / 2`` since the last build, or the cell, pbc or atomic
    numbers change. :meth:`get` then drops the pairs now beyond ``cutoff``: they
    contribute exactly zero (the model's envelope vanishes there) but cost
    ~30% more edge work in a dense liquid.

    Parameters
    ----------
    cutoff : float
        Model cutoff in Å.
    skin : float
        Extra radius in Å; 0 rebuilds on every call.
    backend : str
        One of :data:`BACKENDS`.
    """

    def __init__(self, cutoff: float, skin: float = 0.5, backend: str = "vesin"):
        if skin < 0:
            raise ValueError(f"skin must be >= 0, got {skin}.")
        self.cutoff, self.skin, self.backend = float(cutoff), float(skin), backend
        self.builds = 0
        self._reference = None
        self._edges = None

    def get(self, batch: AtomsBatch):
        """``(edge_index, shifts)`` within ``cutoff`` for ``batch``, rebuilt only when needed."""
        if self._needs_rebuild(batch):
            self._edges = neighbor_list(batch, self.cutoff + self.skin, self.backend)
            self._reference = batch
            self.builds += 1
        edge_index, shifts = self._edges
        if self.skin == 0:
            return edge_index, shifts
        keep = edge_lengths(batch, edge_index, shifts) < self.cutoff
        return edge_index[:, keep], shifts[keep]

    def _needs_rebuild(self, batch: AtomsBatch) -> bool:
        ref = self._reference
        if ref is None or self.skin == 0:
            return True
        if (ref.numbers.shape != batch.numbers.shape
                or ref.positions.device != batch.positions.device
                or ref.positions.dtype != batch.positions.dtype
                or not torch.equal(ref.numbers, batch.numbers)
                or not torch.equal(ref.pbc, batch.pbc)
                or not torch.equal(ref.cell, batch.cell)):
            return True
        moved = torch.linalg.vector_norm(batch.positions - ref.positions, dim=1)
        return bool(moved.max() > 0.5 * self.skin)
