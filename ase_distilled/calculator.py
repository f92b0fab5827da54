"""DistilledCalculator: a PaiNN student as an ASE calculator."""

import copy
import dataclasses
import warnings

import numpy as np
import torch
from ase.calculators.calculator import (
    Calculator,
    PropertyNotImplementedError,
    all_changes,
)
from ase.data import chemical_symbols
from ase.stress import full_3x3_to_voigt_6_stress

from ase_distilled.batch import AtomsBatch
from ase_distilled.host_memory import reuse_freed_memory
from ase_distilled.neighbors import NeighborCache, closest_pair, neighbor_list
from ase_distilled.registry import load_model

_DTYPES = {"float32": torch.float32, "float64": torch.float64}
MIN_DISTANCE = 0.1  # Å; closer pairs mean duplicated atoms or a simulation that blew up


class DistilledCalculator(Calculator):
    """ASE calculator for a distilled PaiNN student.

    Parameters
    ----------
    model : str, path or torch.nn.Module
        A shipped name (see :func:`ase_distilled.available_models`), a checkpoint
        file, or a student module (a copy is taken).
    device : str or torch.device, optional
        Defaults to CUDA when available, else CPU.
    dtype : {"float32", "float64"}
        Precision of the model and its inputs.
    skin : float
        Verlet skin in Å: the neighbour list is reused across MD steps until an
        atom moves more than ``skin / 2``. 0 rebuilds it every call.
    neighbor_backend : {"vesin", "torch", "torch-cluster"}
    reuse_memory : bool
        On CPU under Linux, keep freed memory in the process for the next call
        instead of returning it to the kernel (glibc ``mallopt``, process-wide; see
        :mod:`ase_distilled.host_memory`). Calls on 1,000-10,000 atoms ran
        1.4-3.8x faster here, batches of 64 molecules 1.1-1.9x; the process keeps
        its peak memory. False leaves ``malloc`` as it was.

    Notes
    -----
    Energy is in eV, forces in eV/Å, and stress (only for cells periodic in all
    three directions) in eV/Å^3, Voigt order ``xx yy zz yz xz xy``, sign as ASE.

    Students that carry an uncertainty (every shipped one; see
    :mod:`ase_distilled.models.uncertainty`) also put ``energy_uncertainty`` (eV)
    and ``forces_uncertainty`` ((N,) eV/Å, the expected RMS error of a force
    component of each atom) in ``results``, and warn once per system (a set of
    atomic numbers) whose largest per-atom uncertainty passes the calibrated
    threshold: it holds environments outside the student's training chemistry.

    Examples
    --------
    >>> atoms.calc = DistilledCalculator("tiny")          # doctest: +SKIP
    >>> atoms.get_forces()                                # doctest: +SKIP
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress",
                              "energy_uncertainty", "forces_uncertainty"]

    def __init__(self, model, *, device=None, dtype="float32", skin=0.5,
                 neighbor_backend="vesin", reuse_memory=True, **kwargs):
        super().__init__(**kwargs)
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {list(_DTYPES)}, got {dtype!r}.")
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if reuse_memory and self.device.type == "cpu":
            reuse_freed_memory()
        self.dtype = _DTYPES[dtype]
        module = load_model(model)
        if module is model:
            module = copy.deepcopy(model)
        self.model = module.to(device=self.device, dtype=self.dtype).eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        self.metadata = getattr(self.model, "metadata", {})
        self.neighbors = NeighborCache(self.model.cutoff, skin, neighbor_backend)
        self.uncertainty = getattr(self.model, "uncertainty", None)
        self._batch = None
        self._warned = set()

    @property
    def cutoff(self) -> float:
        """Range of the model in Å: atoms farther apart than this do not interact."""
        return float(self.model.cutoff)

    def set_atoms(self, atoms):
        """Called by ASE when the calculator is attached: reject bad structures early."""
        self.check_atoms(atoms)

    def check_atoms(self, atoms):
        """Raise ``ValueError`` naming the problem for structures the model cannot handle."""
        if len(atoms) == 0:
            raise ValueError("The Atoms object is empty; add atoms before computing.")
        positions = atoms.positions
        if not np.all(np.isfinite(positions)):
            bad = np.flatnonzero(~np.isfinite(positions).all(axis=1))
            raise ValueError(f"Atom positions contain NaN or inf (atoms {bad[:10].tolist()}); "
                             f"fix the coordinates, e.g. check the file they were read from.")
        missing = sorted(set(atoms.numbers.tolist()) - set(self.model.atomic_numbers))
        if missing:
            raise ValueError(
                f"Element(s) {[chemical_symbols[z] for z in missing]} not supported by this "
                f"model, which covers {self.model.elements}. Use a model trained on them."
            )
        if atoms.pbc.any() and abs(atoms.cell.volume) < 1e-9 and atoms.pbc.all():
            raise ValueError("Periodic Atoms have a zero-volume cell; set atoms.cell.")

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.check_atoms(self.atoms)
        want_stress = "stress" in properties
        if want_stress and not self.atoms.pbc.all():
            raise PropertyNotImplementedError(
                "Stress is defined only for cells periodic in all three directions "
                f"(pbc={self.atoms.pbc.tolist()})."
            )
        if self._batch is not None and set(system_changes) <= {"positions"}:
            # An MD step moves atoms only: keep numbers, cell, pbc and the system index
            # (on the device) and replace the positions.
            positions = torch.as_tensor(self.atoms.positions, dtype=self.dtype,
                                        device=self.device)
            batch = dataclasses.replace(self._batch, positions=positions)
        else:
            batch = AtomsBatch.from_atoms(self.atoms, device=self.device, dtype=self.dtype)
        self._batch = batch
        builds = self.neighbors.builds
        edge_index, shifts = self.neighbors.get(batch)
        if self.neighbors.builds != builds:
            _check_overlaps(batch, edge_index, shifts)
        out = self.model.predict(batch, edge_index, shifts, compute_stress=want_stress)
        self._add_uncertainty(out, batch, [self.atoms])
        self.results = _to_results(out, 0, slice(None), want_stress)

    def predict_batch(self, atoms_list) -> list:
        """Energies, forces (and stress where 3-D periodic) of many structures at once.

        One neighbour-list pass and one forward/backward pass for the whole list.

        Parameters
        ----------
        atoms_list : list of ase.Atoms

        Returns
        -------
        list of dict
            One per structure: ``energy`` (float), ``forces`` (N, 3), for cells
            periodic in all three directions ``stress`` (6,) in Voigt order, and for
            students with an uncertainty ``energy_uncertainty`` and ``forces_uncertainty``.
        """
        for atoms in atoms_list:
            self.check_atoms(atoms)
        if not atoms_list:
            return []
        batch = AtomsBatch.from_atoms(list(atoms_list), device=self.device, dtype=self.dtype)
        edge_index, shifts = neighbor_list(batch, self.model.cutoff, self.neighbors.backend)
        _check_overlaps(batch, edge_index, shifts)
        periodic = batch.pbc.all(dim=1).tolist()
        out = self.model.predict(batch, edge_index, shifts, compute_stress=any(periodic))
        self._add_uncertainty(out, batch, atoms_list)
        bounds = np.concatenate([[0], np.cumsum(batch.num_atoms.tolist())])
        return [_to_results(out, k, slice(bounds[k], bounds[k + 1]), periodic[k])
                for k in range(len(atoms_list))]

    def _add_uncertainty(self, out, batch, atoms_list):
        """Add the uncertainty to the model's output, and warn for systems past its threshold."""
        if self.uncertainty is None or "features" not in out:
            return
        with torch.no_grad():
            energy, forces = self.uncertainty(out["features"], self.model.species_of(batch.numbers),
                                              batch.system, batch.num_systems)
        out["energy_uncertainty"], out["forces_uncertainty"] = energy, forces
        over = forces > self.uncertainty.threshold
        if not bool(over.any()):
            return
        threshold = float(self.uncertainty.threshold)
        for k in torch.unique(batch.system[over]).tolist():
            largest = forces[batch.system == k].max()
            key = atoms_list[k].numbers.tobytes()
            if key not in self._warned:
                self._warned.add(key)
                warnings.warn(
                    f"{atoms_list[k].get_chemical_formula()}: force uncertainty up to "
                    f"{float(largest):.2f} eV/Å, above this student's calibrated "
                    f"{threshold:.2f}: the structure is outside this student's training "
                    f"chemistry and its forces may be far from the teacher's. `ase-distilled "
                    f"distill` specialises the student to your molecules.", stacklevel=4)


def _to_results(out, k, atoms_slice, with_stress) -> dict:
    energy = float(out["energy"][k].detach())
    results = {"energy": energy, "free_energy": energy,
               "forces": out["forces"][atoms_slice].detach().cpu().double().numpy()}
    if "energy_uncertainty" in out:
        results["energy_uncertainty"] = float(out["energy_uncertainty"][k])
        results["forces_uncertainty"] = (
            out["forces_uncertainty"][atoms_slice].cpu().double().numpy())
    if with_stress:
        stress = out["stress"][k].detach().cpu().double().numpy()
        results["stress"] = full_3x3_to_voigt_6_stress(stress)
    return results


def _check_overlaps(batch, edge_index, shifts):
    pair = closest_pair(batch, edge_index, shifts)
    if pair is not None and pair[2] < MIN_DISTANCE:
        i, j, distance = pair
        raise ValueError(
            f"Atoms {i} and {j} overlap ({distance:.3f} Å apart, below {MIN_DISTANCE} Å): "
            f"remove duplicated atoms, or if this happened during MD, the simulation blew "
            f"up (shorten the time step)."
        )
