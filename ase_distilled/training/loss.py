"""The distillation loss: per-atom energy, forces, stress and Hessian rows.

Every term is a mean squared error divided by ``model.scale ** 2`` (the RMS of
the training forces, set from data), which keeps the loss near 1 at the start
whatever the units and the chemistry, so that one learning rate suits all data.

Relative force loss: distorted structures have forces tens of times those of
structures at rest, so a plain mean squared error is ruled by the most distorted
ones (GFN2-xTB labels of drug-like molecules here: rattles of 0.1 Å carry 82 % of
the sum of squared forces, conformers at rest 0.3 %). ``relative`` divides each
structure's squared force errors by its own mean squared force (plus
``RELATIVE_FLOOR ** 2``), so every structure counts by its relative error: what
force R² and angles measure at each distortion level.
"""

import torch

from ase_distilled.training.config import FORCE_LOSSES
from ase_distilled.training.hessian import student_hessian_rows

RELATIVE_FLOOR = 0.1  # eV/Å: below this RMS a structure's forces are noise, not signal


def loss_terms(model, batch, edge_index, shifts, targets, weights: dict,
               hessian_delta: float = 0.005, force_loss: str = "mse") -> dict:
    """Weighted loss and its parts for one collated batch.

    Parameters
    ----------
    model : PaiNN
        In training mode, so that forces keep their graph.
    batch, edge_index, shifts, targets
        From :func:`ase_distilled.training.loader.collate`, on the model's device.
        ``targets["weight"]`` weighs each structure's energy and force errors (a
        weighted mean: all ones give the plain mean).
    weights : dict
        ``energy``, ``forces``, ``stress`` and ``hessian`` weights; a zero stress
        or Hessian weight skips that term's computation.
    hessian_delta : float
        Finite-difference step in Å for the student's Hessian rows.
    force_loss : {"mse", "relative"}
        Force term: squared errors over ``model.scale ** 2``, or over each
        structure's own mean squared force (see the module docstring).

    Returns
    -------
    dict of scalar tensors: ``total`` and each computed term (unweighted).
    """
    norm = model.scale.detach() ** 2
    stress_mask = targets["stress_mask"]
    with_stress = weights.get("stress", 0) > 0 and bool(stress_mask.any())
    out = model.predict(batch, edge_index, shifts, compute_stress=with_stress)
    num_atoms = batch.num_atoms.to(out["energy"].dtype)
    weight = targets["weight"]
    atom_weight = weight[batch.system]
    force_error = (out["forces"] - targets["forces"]) ** 2
    if force_loss == "relative":
        squared = (targets["forces"] ** 2).sum(dim=1)
        own = squared.new_zeros(len(num_atoms)).index_add(0, batch.system, squared) / num_atoms
        force_error = force_error / (own / 3 + RELATIVE_FLOOR ** 2)[batch.system].unsqueeze(1)
    elif force_loss == "mse":
        force_error = force_error / norm
    else:
        raise ValueError(f"force_loss must be one of {FORCE_LOSSES}, got {force_loss!r}.")
    energy_error = ((out["energy"] - targets["energy"]) / num_atoms) ** 2 / norm
    terms = {
        "energy": torch.sum(weight * energy_error) / torch.sum(weight),
        "forces": torch.sum(atom_weight * force_error.sum(dim=1)) / (3 * torch.sum(atom_weight)),
    }
    if with_stress:
        error = out["stress"][stress_mask] - targets["stress"][stress_mask]
        terms["stress"] = torch.mean(error ** 2) / norm
    if weights.get("hessian", 0) > 0 and "hessian_index" in targets:
        index = targets["hessian_index"]
        rows = student_hessian_rows(model, batch, edge_index, shifts, index, hessian_delta)
        present = (index >= 0).T[:, batch.system]  # (R, N): atoms whose structure has row r
        error = (rows - targets["hessian_rows"])[present]
        terms["hessian"] = torch.mean(error ** 2) / norm
    terms["total"] = sum(weights.get(name, 0) * value for name, value in terms.items())
    return terms
