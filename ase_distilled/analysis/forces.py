"""Per-atom force comparison of a model against a reference (a teacher, any ASE
calculator, or labels stored in an HDF5 dataset).

Definitions (forces in eV/Å, energies in eV):

- ``r2``: coefficient of determination over all force components,
  ``1 - sum((F - F_ref)^2) / sum((F_ref - mean(F_ref))^2)``.
- ``rmse``, ``mae``: over all force components.
- ``angle_deg``: mean over atoms of the angle between predicted and reference
  force vectors; atoms where either vector is exactly zero are left out.
- ``max``, ``p90``, ``p95``: of the per-atom error norms ``|F_i - F_ref,i|``.
- ``energy_mae_per_atom``: mean over structures of ``|E - E_ref| / N_atoms``.
"""

import csv
import json
import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
from ase.calculators.singlepoint import SinglePointCalculator
from ase.data import chemical_symbols

from ase_distilled.training.metrics import force_angles, mae, mean_angle, r2, rmse

MAX_BATCH_ATOMS = 4096  # atoms per predict_batch call: bounds memory of the backward pass
_HDF5_SUFFIXES = (".h5", ".hdf5")


def force_metrics(predicted, reference) -> dict:
    """Force error metrics of ``predicted`` against ``reference`` (both (N, 3), eV/Å).

    Returns
    -------
    dict
        ``num_atoms``, ``r2``, ``rmse``, ``mae``, ``angle_deg``, ``max``, ``p90``,
        ``p95`` (see the module docstring); NaN where undefined (e.g. R² of a
        single constant component).
    """
    predicted, reference = np.asarray(predicted, float), np.asarray(reference, float)
    if predicted.shape != reference.shape or predicted.ndim != 2 or predicted.shape[1] != 3:
        raise ValueError(f"Forces must both have shape (N, 3); got {predicted.shape} and "
                         f"{reference.shape}.")
    if len(predicted) == 0:
        raise ValueError("No atoms to compare.")
    norms = np.linalg.norm(predicted - reference, axis=1)
    return {
        "num_atoms": len(predicted),
        "r2": r2(predicted, reference),
        "rmse": rmse(predicted, reference),
        "mae": mae(predicted, reference),
        "angle_deg": mean_angle(predicted, reference),
        "max": float(norms.max()),
        "p90": float(np.percentile(norms, 90)),
        "p95": float(np.percentile(norms, 95)),
    }


@dataclass
class ForceReport:
    """Predicted and reference forces of every atom of a set of structures.

    Attributes
    ----------
    model, reference : str
        Names shown in tables and figures.
    numbers : (N,) atomic numbers of all atoms, structure after structure.
    structure : (N,) index of each atom's structure.
    forces, reference_forces : (N, 3) eV/Å.
    energy, reference_energy : (S,) eV; ``reference_energy`` is NaN where the
        reference has no energy.
    num_atoms : (S,) atoms per structure.
    parameters : int or None
        Parameter count of the model, for accuracy-vs-size figures.
    """

    model: str
    reference: str
    numbers: np.ndarray
    structure: np.ndarray
    forces: np.ndarray
    reference_forces: np.ndarray
    energy: np.ndarray
    reference_energy: np.ndarray
    num_atoms: np.ndarray
    parameters: int | None = None

    @cached_property
    def errors(self) -> np.ndarray:
        """(N,) per-atom error norms ``|F - F_ref|`` in eV/Å."""
        return np.linalg.norm(self.forces - self.reference_forces, axis=1)

    @cached_property
    def angles(self) -> np.ndarray:
        """(N,) angles in degrees between predicted and reference forces."""
        return force_angles(self.forces, self.reference_forces)

    @cached_property
    def metrics(self) -> dict:
        """All metrics: pooled and per element forces, energy MAE per atom (JSON-ready)."""
        per_element = {}
        for z in np.unique(self.numbers):
            mask = self.numbers == z
            per_element[chemical_symbols[z]] = force_metrics(self.forces[mask],
                                                             self.reference_forces[mask])
        labelled = np.isfinite(self.reference_energy)
        energy_mae = (float(np.mean(np.abs(self.energy - self.reference_energy)[labelled]
                                    / self.num_atoms[labelled]))
                      if labelled.any() else math.nan)
        metrics = {
            "model": self.model,
            "reference": self.reference,
            "parameters": self.parameters,
            "units": {"forces": "eV/Å", "energy_mae_per_atom": "eV/atom", "angle": "degree"},
            "num_structures": len(self.num_atoms),
            "forces": force_metrics(self.forces, self.reference_forces),
            "per_element": per_element,
            "energy_mae_per_atom": energy_mae,
        }
        return _nan_to_none(metrics)

    def write(self, out_dir) -> dict:
        """Write ``metrics.json`` and ``per_atom.csv`` to ``out_dir``; return their paths."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = {"metrics": out_dir / "metrics.json", "per_atom": out_dir / "per_atom.csv"}
        paths["metrics"].write_text(json.dumps(self.metrics, indent=2, ensure_ascii=False))
        starts = np.concatenate([[0], np.cumsum(self.num_atoms)[:-1]])
        atom_in_structure = np.arange(len(self.numbers)) - starts[self.structure]
        with open(paths["per_atom"], "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["structure", "atom", "element",
                             "fx_ref", "fy_ref", "fz_ref", "fx", "fy", "fz",
                             "ref_norm_eV_per_A", "error_eV_per_A", "angle_deg"])
            reference_norms = np.linalg.norm(self.reference_forces, axis=1)
            for k in range(len(self.numbers)):
                writer.writerow([int(self.structure[k]), int(atom_in_structure[k]),
                                 chemical_symbols[self.numbers[k]],
                                 *(f"{x:.6g}" for x in self.reference_forces[k]),
                                 *(f"{x:.6g}" for x in self.forces[k]),
                                 f"{reference_norms[k]:.6g}", f"{self.errors[k]:.6g}",
                                 f"{self.angles[k]:.4g}"])
        return paths

    def summary(self) -> str:
        """A short human-readable table of the metrics."""
        m = self.metrics
        lines = [f"{self.model} vs {self.reference}: {m['num_structures']} structures, "
                 f"{m['forces']['num_atoms']} atoms"]
        header = (f"  {'':8s}{'atoms':>7s}{'R²':>8s}{'RMSE':>8s}{'MAE':>8s}{'angle':>8s}"
                  f"{'P95':>8s}{'max':>8s}   (forces in eV/Å, angle in °)")
        lines.append(header)
        rows = [("all", m["forces"]), *m["per_element"].items()]
        for name, row in rows:
            values = [row[key] for key in ("r2", "rmse", "mae", "angle_deg", "p95", "max")]
            cells = "".join(f"{v:8.3f}" if v is not None else f"{'-':>8s}" for v in values)
            lines.append(f"  {name:8s}{row['num_atoms']:7d}{cells}")
        if m["energy_mae_per_atom"] is not None:
            lines.append(f"  energy MAE: {1000 * m['energy_mae_per_atom']:.2f} meV/atom")
        return "\n".join(lines)


def reference_labels(reference, structures=None, *, weights=None, progress=False):
    """Structures labelled with reference energies and forces.

    Parameters
    ----------
    reference : str, path, ase Calculator or list of ase.Atoms
        A teacher name (see :func:`ase_distilled.teachers.get_teacher`), an HDF5
        dataset written by :func:`ase_distilled.data.save` (``.h5``), an ASE
        calculator, or structures that already carry energies and forces.
    structures : list of ase.Atoms, optional
        Required for a teacher name or a calculator; must be omitted when the
        reference already carries its structures (an HDF5 file or labelled Atoms).
    weights : str, optional
        Passed to ``get_teacher`` (Orb: ``None``, a checkpoint path or ``"random"``).
    progress : bool
        Show a progress bar (tqdm) while the reference is computed.

    Returns
    -------
    labelled : list of ase.Atoms
        Copies with a ``SinglePointCalculator`` holding ``forces`` (and ``energy``).
    name : str
        A name for the reference, for reports.
    """
    is_dataset = isinstance(reference, str | Path) and Path(reference).suffix in _HDF5_SUFFIXES
    if (is_dataset or isinstance(reference, list | tuple)) and structures:
        raise ValueError("The reference already holds its structures (labelled Atoms or an "
                         "HDF5 dataset); do not pass structures as well.")
    if isinstance(reference, list | tuple):
        _check_labelled(reference, "the reference structures")
        return list(reference), "reference"
    if is_dataset:
        if not Path(reference).is_file():
            raise FileNotFoundError(f"Reference dataset {str(reference)!r} does not exist.")
        from ase_distilled.data import load

        labelled = load(reference)
        _check_labelled(labelled, str(reference))
        return labelled, Path(reference).stem
    if not structures:
        raise ValueError("No structures to compare on: pass structures (files with "
                         "geometries), or a labelled HDF5 dataset as the reference.")
    from ase_distilled.teachers import get_teacher, teacher_info

    calc = get_teacher(reference, weights=weights)
    name = str(reference) if isinstance(reference, str) else teacher_info(calc)["name"]
    labelled = []
    for atoms, label in zip(structures, _evaluate(calc, structures, progress, name), strict=True):
        atoms = atoms.copy()
        atoms.calc = SinglePointCalculator(atoms, **label)
        labelled.append(atoms)
    return labelled, name


def compare_forces(calc, reference, structures=None, *, weights=None, name=None,
                   reference_name=None, progress=False) -> ForceReport:
    """Compare a model's forces and energies with a reference, atom by atom.

    Parameters
    ----------
    calc : DistilledCalculator, ase Calculator, str or path
        The model under test; a shipped student name or checkpoint path is loaded
        as a :class:`~ase_distilled.DistilledCalculator`. Students are evaluated with
        ``predict_batch`` (many structures per forward pass).
    reference : str, path, ase Calculator or list of ase.Atoms
        See :func:`reference_labels`.
    structures : list of ase.Atoms, optional
        See :func:`reference_labels`.
    weights : str, optional
        Teacher weights, see :func:`reference_labels`.
    name, reference_name : str, optional
        Names of the model and the reference in the report (default: the names
        or paths given, or the calculators' class names).
    progress : bool
        Show progress bars.

    Returns
    -------
    ForceReport

    Examples
    --------
    >>> report = compare_forces("tiny", "gfn2-xtb", molecules)     # doctest: +SKIP
    >>> print(report.summary()); report.write("out/")             # doctest: +SKIP
    """
    if isinstance(calc, str | Path):
        from ase_distilled.calculator import DistilledCalculator

        name = name or str(calc)
        calc = DistilledCalculator(calc)
    name = name or type(calc).__name__
    labelled, labelled_name = reference_labels(reference, structures, weights=weights,
                                               progress=progress)
    predictions = _evaluate(calc, labelled, progress, name)
    model = getattr(calc, "model", None)
    return ForceReport(
        model=name,
        reference=reference_name or labelled_name,
        numbers=np.concatenate([atoms.numbers for atoms in labelled]),
        structure=np.repeat(np.arange(len(labelled)), [len(atoms) for atoms in labelled]),
        forces=np.concatenate([out["forces"] for out in predictions]),
        reference_forces=np.concatenate([atoms.calc.results["forces"] for atoms in labelled]),
        energy=np.array([out["energy"] for out in predictions]),
        reference_energy=np.array([atoms.calc.results.get("energy", math.nan)
                                   for atoms in labelled], dtype=float),
        num_atoms=np.array([len(atoms) for atoms in labelled]),
        parameters=model.num_parameters() if hasattr(model, "num_parameters") else None,
    )


def _evaluate(calc, structures, progress, name) -> list:
    """Results of ``calc`` on each structure, in chunks of at most MAX_BATCH_ATOMS atoms.

    Calculators with ``predict_batch`` (students, Orb) take a whole chunk in one pass.
    """
    from ase_distilled.teachers import label_batch

    chunks, chunk, size = [], [], 0
    for atoms in structures:
        if chunk and size + len(atoms) > MAX_BATCH_ATOMS:
            chunks.append(chunk)
            chunk, size = [], 0
        chunk.append(atoms)
        size += len(atoms)
    chunks.append(chunk)
    results = []
    with progress_bar(total=len(structures), desc=name, unit="structure",
                      disable=not progress) as bar:
        for chunk in chunks:
            results += label_batch(calc, chunk)
            bar.update(len(chunk))
    return results


def _check_labelled(structures, where):
    for k, atoms in enumerate(structures):
        if atoms.calc is None or "forces" not in atoms.calc.results:
            raise ValueError(f"Structure {k} of {where} has no reference forces; label it "
                             f"first (ase-distilled label ... --teacher NAME).")


def progress_bar(iterable=None, **kwargs):
    """A tqdm progress bar, with a clear error when tqdm is missing."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        raise ImportError("Progress bars need tqdm: pip install tqdm "
                          "(or pip install 'ase-distilled[data]').") from None
    return tqdm(iterable, **kwargs)


def _nan_to_none(value):
    """JSON has no NaN: undefined metrics become null."""
    if isinstance(value, dict):
        return {key: _nan_to_none(item) for key, item in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
