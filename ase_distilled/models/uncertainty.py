"""Uncertainty from latent distance: how far each atom's environment lies from training.

A student's node features (the scalar features after its last interaction, the
input of its energy readout) describe each atom's environment as the model sees
it. :class:`LatentDistance` holds, per element, the mean and the whitening
(Cholesky factor of the regularised inverse covariance) of the features of the
atoms the student was trained on. An atom's distance is its Mahalanobis distance
from its element's cloud, divided by ``sqrt(F)``, so that a typical training atom
sits near 1 whatever the width ``F``.

Distances become eV/Å by a calibration against true errors (:func:`calibrate`):
the force uncertainty of atom ``i`` is ``a + b * d_i`` (the RMS error of one
force component expected at that distance), fitted by least squares to the RMS
error of atoms binned by distance. The energy uncertainty of a structure is
``c * sqrt(sum_i sigma_i^2)``, with ``c`` fitted to the structures' energy errors.
``threshold`` is the largest per-atom force uncertainty that 99 % of the
calibration's in-distribution structures stay below: past it, a structure holds an
environment the student rarely saw.

The cost is one small matrix product per atom on features the force call computes
anyway.
"""

import numpy as np
import torch
from torch import nn

TRAINING_QUANTILE = 0.99
_BINS = 12
_MIN_SHRINK = 1e-3


class LatentDistance(nn.Module):
    """Per-element Gaussian of training features, and its calibration to errors.

    Parameters
    ----------
    num_elements : int
        Number of elements of the student (``len(model.elements)``).
    hidden : int
        Feature width ``F`` of the student.

    Buffers
    -------
    mean : (K, F)
    whiten : (K, F, F)
        ``L`` with ``L L^T`` the inverse covariance; ``d^2 = |(s - mean) L|^2 / F``.
    force_fit : (2,)
        ``a, b`` of ``sigma_i = a + b * d_i`` in eV/Å.
    energy_factor : ()
        ``c`` of ``sigma_E = c * sqrt(sum_i sigma_i^2)``.
    threshold : ()
        Largest per-atom force uncertainty (eV/Å) of a structure above which the
        calculator warns; ``inf`` until calibrated.
    """

    def __init__(self, num_elements: int, hidden: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(num_elements, hidden))
        self.register_buffer("whiten", torch.eye(hidden).repeat(num_elements, 1, 1))
        self.register_buffer("force_fit", torch.tensor([0.0, 1.0]))
        self.register_buffer("energy_factor", torch.ones(()))
        self.register_buffer("threshold", torch.full((), float("inf")))

    def distance(self, features, species):
        """(N,) latent distance of each atom (about 1 for a typical training atom)."""
        centred = features - self.mean[species]
        # (K, N, F) for all K elements, then each atom's own: cheaper than gathering an
        # (N, F, F) stack of whitening matrices
        projected = torch.matmul(centred, self.whiten)[species, torch.arange(
            species.shape[0], device=species.device)]
        return torch.linalg.vector_norm(projected, dim=-1) / features.shape[-1] ** 0.5

    def forward(self, features, species, system, num_systems: int):
        """``(energy_uncertainty (B,) eV, forces_uncertainty (N,) eV/Å)``."""
        sigma = self.force_fit[0] + self.force_fit[1] * self.distance(features, species)
        variance = sigma.new_zeros(num_systems).index_add(0, system, sigma * sigma)
        return self.energy_factor * torch.sqrt(variance), sigma


def student_features(model, atoms_list, batch_size: int = 32):
    """Node features, species, per-atom force errors and energy errors of structures.

    Returns
    -------
    dict of numpy arrays: ``features`` (N, F), ``species`` (N,), ``system`` (N,),
    and where every structure carries teacher labels (``atoms.calc`` results)
    ``force_error`` (N,) (RMS over the three components) and ``energy_error`` (B,).
    """
    from ase_distilled.batch import AtomsBatch
    from ase_distilled.neighbors import neighbor_list

    parameter = next(model.parameters())
    parts = {key: [] for key in ("features", "species", "system", "force_error",
                                 "energy_error")}
    labelled = all(atoms.calc is not None for atoms in atoms_list)
    for start in range(0, len(atoms_list), batch_size):
        chunk = atoms_list[start:start + batch_size]
        batch = AtomsBatch.from_atoms(list(chunk), device=parameter.device, dtype=parameter.dtype)
        out = model.predict(batch, *neighbor_list(batch, model.cutoff))
        parts["features"].append(out["features"].cpu().double().numpy())
        parts["species"].append(model.species_of(batch.numbers).cpu().numpy())
        parts["system"].append(batch.system.cpu().numpy() + start)
        if labelled:
            forces = np.concatenate([a.get_forces() for a in chunk])
            energy = np.array([a.get_potential_energy() for a in chunk])
            error = out["forces"].detach().cpu().double().numpy() - forces
            parts["force_error"].append(np.sqrt((error ** 2).mean(axis=1)))
            parts["energy_error"].append(out["energy"].detach().cpu().double().numpy() - energy)
    return {key: np.concatenate(value) for key, value in parts.items() if value}


def _per_structure_rms(values, system, count) -> np.ndarray:
    """(B,) root mean square over each structure's atoms of per-atom ``values``."""
    return np.sqrt(np.bincount(system, values ** 2, minlength=count)
                   / np.bincount(system, minlength=count))


def structure_errors(model, atoms_list, batch_size: int = 32) -> dict:
    """Per labelled structure: true and predicted force RMSE, and the largest uncertainty.

    Parameters
    ----------
    model : PaiNN
        A student with an ``uncertainty``.
    atoms_list : list of ase.Atoms
        Labelled by the teacher (``atoms.calc`` results).

    Returns
    -------
    dict of (B,) arrays in eV/Å: ``true_rmse`` (against the labels, over all force
    components), ``predicted_rmse`` (RMS of the per-atom force uncertainties) and
    ``largest`` (the largest per-atom force uncertainty, what the calculator's
    warning compares with ``threshold``).
    """
    data = student_features(model, atoms_list, batch_size)
    uncertainty = model.uncertainty
    dtype, device = uncertainty.mean.dtype, uncertainty.mean.device
    with torch.no_grad():
        _, sigma = uncertainty(torch.as_tensor(data["features"], dtype=dtype, device=device),
                               torch.as_tensor(data["species"], device=device),
                               torch.as_tensor(data["system"], device=device), len(atoms_list))
    sigma, system = sigma.cpu().double().numpy(), data["system"]
    largest = np.zeros(len(atoms_list))
    np.maximum.at(largest, system, sigma)
    return {"true_rmse": _per_structure_rms(data["force_error"], system, len(atoms_list)),
            "predicted_rmse": _per_structure_rms(sigma, system, len(atoms_list)),
            "largest": largest}


def fit(model, atoms_list, batch_size: int = 32) -> LatentDistance:
    """A :class:`LatentDistance` of ``model`` fitted to the features of ``atoms_list``.

    Each element's covariance is shrunk toward its mean variance (Ledoit-Wolf style,
    with a weight that falls as atoms of that element grow in number), so that a
    rare element still gets a usable whitening. An element absent from
    ``atoms_list`` keeps zero mean and the features' overall scale: its atoms read
    as far from training, as they are.
    """
    data = student_features(model, atoms_list, batch_size)
    features, species = data["features"], data["species"]
    k_count, hidden = len(model.elements), features.shape[1]
    module = LatentDistance(k_count, hidden)
    overall = features.var(axis=0).mean() + 1e-12
    mean = np.zeros((k_count, hidden))
    whiten = np.repeat(np.eye(hidden)[None] / np.sqrt(overall), k_count, axis=0)
    for k in range(k_count):
        rows = features[species == k]
        if len(rows) < 2:
            continue
        mean[k] = rows.mean(axis=0)
        covariance = np.cov(rows, rowvar=False)
        scale = np.trace(covariance) / hidden + 1e-12
        shrink = max(_MIN_SHRINK, hidden / (hidden + len(rows)))
        covariance = (1 - shrink) * covariance + shrink * scale * np.eye(hidden)
        whiten[k] = np.linalg.cholesky(np.linalg.inv(covariance))
    module.mean.copy_(torch.as_tensor(mean))
    module.whiten.copy_(torch.as_tensor(whiten))
    parameter = next(model.parameters())
    return module.to(device=parameter.device, dtype=parameter.dtype)


def calibrate(model, uncertainty: LatentDistance, atoms_list, in_distribution=None,
              batch_size: int = 32) -> dict:
    """Fit ``force_fit``, ``energy_factor`` and ``threshold`` to true errors, in place.

    Parameters
    ----------
    model : PaiNN
    uncertainty : LatentDistance
        Fitted with :func:`fit`; its buffers are set here.
    atoms_list : list of ase.Atoms
        Labelled by the teacher and not trained on; spanning the chemistry the
        uncertainty should tell apart (in-distribution and beyond).
    in_distribution : sequence of bool, optional
        Which structures count as training chemistry for ``threshold``; default all.

    Returns
    -------
    dict
        The fit (``force_fit``, ``energy_factor``, ``threshold``) and how well it
        ranks errors: Spearman correlation between predicted and true force error
        over atoms and over structures (RMS over each structure's atoms).
    """
    from scipy.stats import spearmanr

    data = student_features(model, atoms_list, batch_size)
    dtype, device = uncertainty.mean.dtype, uncertainty.mean.device
    with torch.no_grad():
        distance = uncertainty.distance(torch.as_tensor(data["features"], dtype=dtype,
                                                        device=device),
                                        torch.as_tensor(data["species"], device=device))
    distance = distance.cpu().double().numpy()
    error, system = data["force_error"], data["system"]
    edges = np.quantile(distance, np.linspace(0, 1, _BINS + 1))
    which = np.clip(np.searchsorted(edges, distance, side="right") - 1, 0, _BINS - 1)
    centres, rms, counts = [], [], []
    for b in range(_BINS):
        members = which == b
        if members.any():
            centres.append(distance[members].mean())
            rms.append(np.sqrt((error[members] ** 2).mean()))
            counts.append(members.sum())
    design = np.stack([np.ones(len(centres)), centres], axis=1) * np.sqrt(counts)[:, None]
    a, b = np.linalg.lstsq(design, np.array(rms) * np.sqrt(counts), rcond=None)[0]
    b = max(b, 0.0)
    a = max(a, 0.05 * float(np.sqrt((error ** 2).mean())))  # never claim zero error
    sigma = a + b * distance
    num = len(atoms_list)
    variance = np.bincount(system, sigma ** 2, minlength=num)
    ratio = np.sqrt(np.mean(data["energy_error"] ** 2) / np.mean(variance))
    largest = np.zeros(num)
    np.maximum.at(largest, system, sigma)
    inside = np.ones(num, bool) if in_distribution is None else np.asarray(in_distribution)
    # A flat fit (b = 0) tells no structure from another: it never warns.
    threshold = float(np.quantile(largest[inside], TRAINING_QUANTILE)) if b > 0 else np.inf
    with torch.no_grad():
        uncertainty.force_fit.copy_(torch.tensor([a, b]))
        uncertainty.energy_factor.fill_(float(ratio))
        uncertainty.threshold.fill_(threshold)
    true_rms = _per_structure_rms(error, system, num)
    predicted_rms = _per_structure_rms(sigma, system, num)

    def spearman(x, y):  # undefined (NaN) when either side is constant
        return float(spearmanr(x, y).statistic) if np.ptp(x) > 0 and np.ptp(y) > 0 else None

    return {"force_fit": [float(a), float(b)], "energy_factor": float(ratio),
            "threshold": threshold, "spearman_atoms": spearman(sigma, error),
            "spearman_structures": spearman(predicted_rms, true_rms),
            "structures": num, "atoms": int(len(error))}
