"""Error metrics between predicted and reference energies and forces (numpy only).

Small functions meant for reuse: training reports them on validation and test
splits, and an analysis of a finished student can call the same ones.
"""

import numpy as np


def mae(predicted, reference) -> float:
    """Mean absolute error over all elements."""
    return float(np.mean(np.abs(np.asarray(predicted) - np.asarray(reference))))


def rmse(predicted, reference) -> float:
    """Root-mean-square error over all elements."""
    return float(np.sqrt(np.mean((np.asarray(predicted) - np.asarray(reference)) ** 2)))


def r2(predicted, reference) -> float:
    """Coefficient of determination ``1 - SS_res / SS_tot`` over all elements."""
    predicted, reference = np.asarray(predicted).ravel(), np.asarray(reference).ravel()
    total = np.sum((reference - reference.mean()) ** 2)
    return float(1.0 - np.sum((predicted - reference) ** 2) / total) if total > 0 else float("nan")


def force_angles(predicted, reference) -> np.ndarray:
    """Angle in degrees between each pair of per-atom vectors; NaN where either is zero.

    ``atan2(|a x b|, a . b)`` stays accurate for small angles, where ``arccos`` does not.
    """
    predicted, reference = np.asarray(predicted, float), np.asarray(reference, float)
    cross = np.linalg.norm(np.cross(predicted, reference), axis=1)
    dot = np.einsum("ij,ij->i", predicted, reference)
    angles = np.degrees(np.arctan2(cross, dot))
    zero = (np.linalg.norm(predicted, axis=1) == 0) | (np.linalg.norm(reference, axis=1) == 0)
    angles[zero] = np.nan
    return angles


def mean_angle(predicted, reference) -> float:
    """Mean angle in degrees between predicted and reference per-atom vectors.

    Atoms where either vector is zero have no direction and are left out.
    """
    angles = force_angles(predicted, reference)
    return float(np.nanmean(angles)) if np.isfinite(angles).any() else float("nan")


def energy_force_metrics(energy, energy_ref, num_atoms, forces, forces_ref) -> dict:
    """The standard report of a student against its teacher.

    Parameters
    ----------
    energy, energy_ref : (B,) arrays, eV
    num_atoms : (B,) array
    forces, forces_ref : (N, 3) arrays, eV/Å

    Returns
    -------
    dict with ``energy_mae_per_atom`` (eV/atom), ``force_mae``, ``force_rmse``
    (eV/Å), ``force_r2`` and ``force_angle`` (degrees).
    """
    num_atoms = np.asarray(num_atoms)
    return {
        "energy_mae_per_atom": mae(np.asarray(energy) / num_atoms,
                                   np.asarray(energy_ref) / num_atoms),
        "force_mae": mae(forces, forces_ref),
        "force_rmse": rmse(forces, forces_ref),
        "force_r2": r2(forces, forces_ref),
        "force_angle": mean_angle(forces, forces_ref),
    }
