"""The distillation loss: per-atom energy, forces, stress and Hessian rows.

Every term is a mean squared error divided by ``model.scale ** 2`` (the RMS of
the training forces, set from data), which keeps the loss near 1 at the start
whatever the units and the chemistry, so that one learning rate suits all data.
"""

import torch

from ase_distilled.training.hessian import student_hessian_rows


def loss_terms(model, batch, edge_index, shifts, targets, weights: dict,
               hessian_delta: float = 0.005) -> dict:
    """Weighted loss and its parts for one collated batch.

    Parameters
    ----------
    model : PaiNN
        In training mode, so that forces keep their graph.
    batch, edge_index, shifts, targets
        From :func:`ase_distilled.training.loader.collate`, on the model's device.
    weights : dict
        ``energy``, ``forces``, ``stress`` and ``hessian`` weights; a zero stress
        or Hessian weight skips that term's computation.
    hessian_delta : float
        Finite-difference step in Å for the student's Hessian rows.

    Returns
    -------
    dict of scalar tensors: ``total`` and each computed term (unweighted).
    """
    norm = model.scale.detach() ** 2
    stress_mask = targets["stress_mask"]
    with_stress = weights.get("stress", 0) > 0 and bool(stress_mask.any())
    out = model.predict(batch, edge_index, shifts, compute_stress=with_stress)
    num_atoms = batch.num_atoms.to(out["energy"].dtype)
    terms = {
        "energy": torch.mean(((out["energy"] - targets["energy"]) / num_atoms) ** 2) / norm,
        "forces": torch.mean((out["forces"] - targets["forces"]) ** 2) / norm,
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
