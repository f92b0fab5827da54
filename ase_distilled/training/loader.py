"""Labelled structures as a torch Dataset, with neighbour lists computed once.

Positions do not change during training, so each structure's neighbour list
is built once, when the dataset is made, and stored compactly (int32 pairs,
int16 image shifts only for periodic structures). :func:`collate` concatenates
structures into an :class:`~ase_distilled.batch.AtomsBatch`, the matching
``edge_index`` / ``shifts`` and the target tensors.
"""

import numpy as np
import torch
from ase.data import chemical_symbols
from ase.stress import voigt_6_to_full_3x3_stress

from ase_distilled.batch import AtomsBatch
from ase_distilled.calculator import MIN_DISTANCE
from ase_distilled.neighbors import closest_pair, neighbor_list


def _describe(k, atoms) -> str:
    label = atoms.info.get("id")
    return f"Structure {k}" + (f" (id {label!r})" if label is not None else "")


def labels_of(k, atoms) -> dict:
    """Energy, forces and (if present) stress of a labelled structure, as float64 arrays.

    Raises
    ------
    ValueError
        If the structure carries no energy or no forces.
    """
    results = atoms.calc.results if atoms.calc is not None else {}
    missing = [key for key in ("energy", "forces") if results.get(key) is None]
    if missing:
        raise ValueError(
            f"{_describe(k, atoms)} has no {' or '.join(missing)}: training needs teacher "
            f"labels (energy and forces) on every structure, e.g. from `ase-distilled label` "
            f"or atoms.calc = SinglePointCalculator(atoms, energy=..., forces=...)."
        )
    forces = np.asarray(results["forces"], dtype=np.float64)
    if forces.shape != (len(atoms), 3):
        raise ValueError(f"{_describe(k, atoms)} has forces of shape {forces.shape}, "
                         f"expected ({len(atoms)}, 3).")
    labels = {"energy": float(results["energy"]), "forces": forces}
    stress = results.get("stress")
    if stress is not None and atoms.pbc.all():
        stress = np.asarray(stress, dtype=np.float64)
        labels["stress"] = voigt_6_to_full_3x3_stress(stress) if stress.shape == (6,) else stress
    return labels


def check_finite(atoms_list):
    """Raise ``ValueError`` naming every structure with a NaN or infinite number.

    Positions, cell, energy, forces, stress and Hessian rows are checked: one such
    value makes the energy references, the loss and then every weight NaN.
    Structures are named by ``info["id"]``, else by their index (``#k``). Also
    raises (see :func:`labels_of`) for a structure without labels.
    """
    bad = []
    for k, atoms in enumerate(atoms_list):
        values = {"positions": atoms.positions, "cell": atoms.cell.array, **labels_of(k, atoms)}
        if "hessian_rows" in atoms.info:
            values["hessian_rows"] = atoms.info["hessian_rows"]
        names = [name for name, value in values.items()
                 if not np.isfinite(np.asarray(value, dtype=np.float64)).all()]
        if names:
            label = atoms.info.get("id")
            bad.append(f"{label!r}" if label is not None else f"#{k}")
            bad[-1] += f" ({', '.join(names)})"
    if bad:
        raise ValueError(
            f"{len(bad)} structure(s) hold NaN or infinite values: {'; '.join(bad[:10])}"
            f"{'; ...' if len(bad) > 10 else ''}. Training on them would make the student's "
            f"weights NaN. Remove them (ase_distilled.data: load, drop these ids, save); a "
            f"teacher returns such labels for overlapping atoms, and `ase-distilled label` "
            f"now drops them itself.")


def check_elements(atoms_list, elements):
    """Raise ``ValueError`` naming the first structure with an element outside ``elements``."""
    allowed = set(elements)
    for k, atoms in enumerate(atoms_list):
        extra = set(atoms.get_chemical_symbols()) - allowed
        if extra:
            raise ValueError(
                f"{_describe(k, atoms)} contains {sorted(extra)}, which the training config "
                f"excludes (elements = {list(elements)}). Add them to `elements` in the "
                f"config, or remove such structures from the dataset."
            )


class LabelledDataset(torch.utils.data.Dataset):
    """Teacher-labelled structures with precomputed neighbour lists.

    Parameters
    ----------
    atoms_list : list of ase.Atoms
        Each with a calculator holding ``energy`` and ``forces`` (and ``stress``
        for 3-D periodic cells, optional). Optional Hessian rows in
        ``atoms.info["hessian_index"]`` / ``["hessian_rows"]`` (see
        :func:`ase_distilled.training.hessian.label_hessian_rows`).
    cutoff : float
        Neighbour-list radius in Å (the model's cutoff).
    elements : sequence of str, optional
        Allowed elements; structures with others raise ``ValueError``.
    weights : sequence of float, optional
        Each structure's weight in the loss (default 1 each).
    """

    def __init__(self, atoms_list, cutoff: float, elements=None, weights=None):
        atoms_list = list(atoms_list)
        if elements is not None:
            check_elements(atoms_list, elements)
        check_finite(atoms_list)
        self.items = [self._prepare(k, atoms, cutoff) for k, atoms in enumerate(atoms_list)]
        weights = [1.0] * len(self.items) if weights is None else list(weights)
        if len(weights) != len(self.items):
            raise ValueError(f"Got {len(weights)} loss weights for {len(self.items)} structures.")
        for item, weight in zip(self.items, weights):
            item["weight"] = float(weight)

    @staticmethod
    def _prepare(k, atoms, cutoff) -> dict:
        item = labels_of(k, atoms)
        batch = AtomsBatch.from_atoms(atoms, dtype=torch.float64)
        try:
            edge_index, shifts = neighbor_list(batch, cutoff)
        except ValueError as error:
            raise ValueError(f"{_describe(k, atoms)}: {error}") from error
        pair = closest_pair(batch, edge_index, shifts)
        if pair is not None and pair[2] < MIN_DISTANCE:
            i, j, distance = pair
            raise ValueError(
                f"{_describe(k, atoms)} has atoms {i} and {j} {distance:.3f} Å apart (below "
                f"{MIN_DISTANCE} Å): duplicated atoms, on which the student's forces are NaN. "
                f"Remove the structure from the data.")
        item.update(
            positions=np.asarray(atoms.positions, dtype=np.float64),
            numbers=np.asarray(atoms.numbers, dtype=np.int64),
            cell=np.asarray(atoms.cell.array, dtype=np.float64),
            pbc=np.asarray(atoms.pbc, dtype=bool),
            edge_index=edge_index.numpy().astype(np.int32),
            shifts=shifts.numpy().astype(np.int16) if atoms.pbc.any() else None,
        )
        if "hessian_rows" in atoms.info:
            index = np.asarray(atoms.info["hessian_index"], dtype=np.int64).reshape(-1)
            rows = np.asarray(atoms.info["hessian_rows"], dtype=np.float64)
            if rows.shape != (len(index), len(atoms), 3) or (index >= 3 * len(atoms)).any():
                raise ValueError(f"{_describe(k, atoms)} has Hessian rows of shape {rows.shape} "
                                 f"for indices {index.tolist()}; expected "
                                 f"({len(index)}, {len(atoms)}, 3) and indices < {3 * len(atoms)}.")
            item.update(hessian_index=index, hessian_rows=rows)
        return item

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index) -> dict:
        return self.items[index]

    @property
    def elements(self) -> list:
        """Symbols present, by atomic number."""
        numbers = np.unique(np.concatenate([item["numbers"] for item in self.items]))
        return [chemical_symbols[z] for z in numbers]


def collate(items):
    """Concatenate dataset items into model inputs and targets (float64, CPU).

    Returns
    -------
    batch : AtomsBatch
    edge_index : (2, E) long tensor
    shifts : (E, 3) tensor
    targets : dict
        ``energy`` (B,), ``forces`` (N, 3), ``stress`` (B, 3, 3) with
        ``stress_mask`` (B,) bool, ``weight`` (B,) the structures' loss weights, and
        when any item has Hessian rows,
        ``hessian_index`` (B, R) global coordinate indices (-1 where absent) with
        ``hessian_rows`` (R, N, 3).
    """
    counts = np.array([len(item["numbers"]) for item in items])
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    total = int(counts.sum())

    def cat(key):
        return torch.from_numpy(np.concatenate([item[key] for item in items]))

    batch = AtomsBatch(
        positions=cat("positions"),
        numbers=cat("numbers"),
        cell=torch.from_numpy(np.stack([item["cell"] for item in items])),
        pbc=torch.from_numpy(np.stack([item["pbc"] for item in items])),
        system=torch.from_numpy(np.repeat(np.arange(len(items)), counts)),
        num_atoms=torch.from_numpy(counts.astype(np.int64)),
    )
    edge_index = torch.from_numpy(np.concatenate(
        [item["edge_index"].astype(np.int64) + offset for item, offset in zip(items, offsets)],
        axis=1))
    shifts = torch.from_numpy(np.concatenate(
        [item["shifts"] if item["shifts"] is not None
         else np.zeros((item["edge_index"].shape[1], 3)) for item in items]).astype(np.float64))
    stress_mask = np.array(["stress" in item for item in items])
    targets = {
        "energy": torch.tensor([item["energy"] for item in items], dtype=torch.float64),
        "forces": cat("forces"),
        "stress": torch.from_numpy(np.stack([item.get("stress", np.zeros((3, 3)))
                                             for item in items])),
        "stress_mask": torch.from_numpy(stress_mask),
        "weight": torch.tensor([item["weight"] for item in items], dtype=torch.float64),
    }
    rows = max(len(item.get("hessian_index", ())) for item in items)
    if rows:
        index = np.full((len(items), rows), -1, dtype=np.int64)
        values = np.zeros((rows, total, 3))
        for b, (item, offset) in enumerate(zip(items, offsets)):
            if "hessian_index" in item:
                r = len(item["hessian_index"])
                index[b, :r] = item["hessian_index"] + 3 * offset
                values[:r, offset:offset + counts[b]] = item["hessian_rows"]
        targets["hessian_index"] = torch.from_numpy(index)
        targets["hessian_rows"] = torch.from_numpy(values)
    return batch, edge_index, shifts, targets


def to_device(sample, device, dtype):
    """Move a collated sample to ``device``; floating tensors to ``dtype``."""
    batch, edge_index, shifts, targets = sample

    def move(t):
        return t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)

    return (batch.to(device, dtype), edge_index.to(device), move(shifts),
            {key: move(value) for key, value in targets.items()})
