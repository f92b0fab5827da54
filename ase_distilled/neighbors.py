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

Every structure is checked first (:func:`check_geometry`): a structure no list
can be built for raises ``ValueError`` naming the problem, instead of reaching
vesin's C++ code, which divides by zero (SIGFPE, killing the process) for a
degenerate periodic cell or coordinates a million Å apart.
"""

import math

import numpy as np
import torch

from ase_distilled.batch import AtomsBatch

BACKENDS = ("vesin", "torch", "torch-cluster")
# Å. Farther from the origin is the wrong unit or an MD run that blew up: there float32
# (the calculator's default) resolves positions only to 0.008 Å.
MAX_COORDINATE = 1e5
# Å. Lattice planes of a periodic direction closer than this mean a degenerate cell;
# the images to search grow as cutoff / spacing (measured with vesin, two atoms, 5 Å
# cutoff: 1e-2 Å 0.1 s and 25,000 pairs, 1e-3 Å 12 s, 1e-6 Å out of memory).
MIN_PLANE_SPACING = 0.1


def plane_spacings(cell, pbc) -> np.ndarray:
    """(3,) distances in Å between the lattice planes of each periodic direction.

    Measured within the span of the periodic cell vectors (a slab's in-plane
    spacings ignore its third vector); ``inf`` for non-periodic directions, 0 for
    a periodic direction whose vector is zero or depends on the other periodic ones.
    """
    # Plain floats, not numpy: this runs for every periodic structure of every batch.
    a = np.asarray(cell, dtype=np.float64).tolist()
    periodic = [axis for axis in range(3) if pbc[axis]]

    def cross(u, v):
        return [u[1] * v[2] - u[2] * v[1], u[2] * v[0] - u[0] * v[2], u[0] * v[1] - u[1] * v[0]]

    def norm(u):
        return math.sqrt(u[0] * u[0] + u[1] * u[1] + u[2] * u[2])

    def ratio(size, base):
        return size / base if base > 0 else 0.0

    spacings = [math.inf] * 3
    if len(periodic) == 3:  # volume / area of the other two vectors' face
        faces = [cross(a[1], a[2]), cross(a[2], a[0]), cross(a[0], a[1])]
        volume = abs(sum(x * y for x, y in zip(a[0], faces[0])))
        spacings = [ratio(volume, norm(face)) for face in faces]
    elif len(periodic) == 2:  # in their plane: area / length of the other vector
        i, j = periodic
        area = norm(cross(a[i], a[j]))
        spacings[i], spacings[j] = ratio(area, norm(a[j])), ratio(area, norm(a[i]))
    elif len(periodic) == 1:
        spacings[periodic[0]] = norm(a[periodic[0]])
    return np.array(spacings)


def check_geometry(batch: AtomsBatch):
    """Raise ``ValueError`` naming the problem for structures no neighbour list can take.

    - Every coordinate must be finite and at most :data:`MAX_COORDINATE` Å from
      the origin in magnitude (farther: the wrong unit, or an MD run that blew up).
    - Every periodic direction needs a cell vector of its own: its lattice planes
      must lie at least :data:`MIN_PLANE_SPACING` Å apart (see :func:`plane_spacings`),
      so a zero cell, or two parallel periodic vectors, is refused.
    """
    positions = batch.positions.detach()
    count = len(batch.num_atoms)
    # One reduction when all is well (NaN fails the comparison too); details only if not.
    if positions.numel() and not bool(positions.abs().amax() <= MAX_COORDINATE):
        bad = ~(positions.abs() <= MAX_COORDINATE).all(dim=1)
        atom = int(torch.nonzero(bad)[0, 0])
        k = int(batch.system[atom])
        index = atom - int(batch.num_atoms[:k].sum())
        where = f"Structure {k}: atom" if count > 1 else "Atom"
        raise ValueError(
            f"{where} {index} is at {positions[atom].tolist()} Å ({int(bad.sum())} atom(s) "
            f"with NaN, inf or a coordinate beyond {MAX_COORDINATE:g} Å): fix the "
            f"coordinates (are they in Å?); if this happened during MD, the simulation blew "
            f"up (shorten the time step).")
    cells = batch.cell.detach().cpu().double().numpy()
    pbcs = batch.pbc.cpu().numpy()
    for k in np.flatnonzero(pbcs.any(axis=1)).tolist():
        where = f"Structure {k}: the" if count > 1 else "The"
        if not np.isfinite(cells[k]).all():
            raise ValueError(f"{where} cell {cells[k].tolist()} has NaN or inf entries; "
                             f"set atoms.cell.")
        spacings = plane_spacings(cells[k], pbcs[k])
        degenerate = np.flatnonzero(spacings < MIN_PLANE_SPACING)
        if len(degenerate):
            raise ValueError(
                f"{where} cell is degenerate along periodic direction(s) "
                f"{degenerate.tolist()} (pbc {pbcs[k].tolist()}, cell {cells[k].tolist()}): "
                f"their lattice planes lie {np.round(spacings[degenerate], 6).tolist()} Å "
                f"apart, below {MIN_PLANE_SPACING} Å. Every periodic direction needs a cell "
                f"vector of its own, not zero nor parallel to the other periodic ones: set "
                f"atoms.cell, or make those directions non-periodic (atoms.pbc).")


def neighbor_list(batch: AtomsBatch, cutoff: float, backend: str = "vesin"):
    """Neighbour pairs within ``cutoff`` (Å) for every structure of a batch.

    Returns
    -------
    edge_index : (2, E) long tensor
    shifts : (E, 3) tensor with the batch's floating dtype

    Raises
    ------
    ValueError
        For structures no list can be built for (see :func:`check_geometry`).
    """
    if backend not in BACKENDS:
        raise ValueError(f"Unknown neighbour-list backend {backend!r}; choose from {BACKENDS}.")
    check_geometry(batch)
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


def closest_pair(batch: AtomsBatch, edge_index, shifts):
    """``(i, j, distance)`` of the shortest edge (global atom indices, Å); None without edges."""
    if edge_index.shape[1] == 0:
        return None
    lengths = edge_lengths(batch, edge_index, shifts)
    closest = int(torch.argmin(lengths))
    i, j = edge_index[:, closest].tolist()
    return i, j, float(lengths[closest])


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
