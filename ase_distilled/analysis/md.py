"""Molecular dynamics with ASE's integrators, and trajectory metrics.

Metrics (times in ps, energies in eV, lengths in Å):

- stability (Fu et al. 2022, "Forces are not enough"): the time until any bonded
  pair deviates more than 0.5 Å from its initial length; bonds are the pairs
  within 1.2x ASE's natural cutoffs (covalent radii) in the first frame.
- NVE energy drift: slope of a linear fit of the total energy per atom against
  time, in meV/atom/ps.
- temperature statistics over the recorded frames.
- h(r): the distribution of interatomic distances (all pairs up to ``r_max``,
  averaged over frames, normalised to unit area), and its error against a
  reference trajectory, ``∫ |h(r) - h_ref(r)| dr`` (0 for identical
  distributions, 2 for disjoint ones).
"""

import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
from ase import Atoms, units
from ase.calculators.singlepoint import SinglePointCalculator
from ase.constraints import FixSubsetCom
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import Stationary, ZeroRotation
from ase.md.verlet import VelocityVerlet
from ase.neighborlist import natural_cutoffs, neighbor_list

from ase_distilled.analysis.forces import progress_bar

try:
    from ase.md.velocitydistribution import thermalize_momenta  # ASE >= 3.28
except ImportError:  # older ASE: the same call under its former name
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution as thermalize_momenta

BOND_BREAK_A = 0.5
# Covalent radii alone miss real bonds (ASE's own ethanol has C-H 1.09 Å > 0.76 + 0.31 Å),
# so bonds are pairs closer than 1.2x the sum of their natural cutoffs.
BOND_MULT = 1.2
ENSEMBLES = ("nvt", "nve")


def bonds(atoms):
    """Bonded pairs of ``atoms``: closer than ``BOND_MULT`` x the sum of ASE's natural cutoffs.

    Returns
    -------
    pairs : (M, 2) int array, ``i < j``
    shifts : (M, 3) int array of cell shifts (periodic images) of atom ``j``
    """
    i, j, shifts = neighbor_list("ijS", atoms, natural_cutoffs(atoms, mult=BOND_MULT))
    keep = i < j  # each bond once; a bond of an atom to its own image is not a molecular bond
    return np.stack([i[keep], j[keep]], axis=1), shifts[keep]


def bond_deviation(frames) -> np.ndarray:
    """(F,) largest change of any bond length from its length in the first frame, in Å."""
    pairs, shifts = bonds(frames[0])
    if len(pairs) == 0:
        return np.zeros(len(frames))
    lengths = np.array([
        np.linalg.norm(f.positions[pairs[:, 1]] - f.positions[pairs[:, 0]]
                       + shifts @ f.cell.array, axis=1)
        for f in frames
    ])
    return np.abs(lengths - lengths[0]).max(axis=1)


def stability_time(time_ps, deviation, threshold=BOND_BREAK_A):
    """Time (ps) of the first frame whose bond deviation exceeds ``threshold``; None if none."""
    broken = np.flatnonzero(np.asarray(deviation) > threshold)
    return float(np.asarray(time_ps)[broken[0]]) if len(broken) else None


def energy_drift(time_ps, energy, num_atoms) -> float:
    """Slope of a linear fit of ``energy / num_atoms`` (eV) against time (ps), in meV/atom/ps."""
    if len(time_ps) < 2:
        return float("nan")
    slope = np.polyfit(np.asarray(time_ps, float), np.asarray(energy, float) / num_atoms, 1)[0]
    return float(1000 * slope)


def distance_distribution(frames, r_max=8.0, bin_width=0.05):
    """h(r): distribution of interatomic distances up to ``r_max`` Å over all frames.

    Returns
    -------
    r : (K,) bin centres in Å
    h : (K,) density in 1/Å, normalised so that ``sum(h) * bin_width == 1``
    """
    edges = np.arange(0.0, r_max + bin_width / 2, bin_width)
    counts = np.zeros(len(edges) - 1)
    for frame in frames:
        counts += np.histogram(neighbor_list("d", frame, r_max), bins=edges)[0]
    total = counts.sum()
    h = counts / (total * bin_width) if total else counts
    return 0.5 * (edges[1:] + edges[:-1]), h


def distribution_error(h, h_ref, bin_width=0.05) -> float:
    """``∫ |h(r) - h_ref(r)| dr`` for two h(r) on the same bins."""
    return float(np.sum(np.abs(np.asarray(h) - np.asarray(h_ref))) * bin_width)


@dataclass
class MDRun:
    """A recorded trajectory and how it was produced.

    Attributes
    ----------
    frames : list of ase.Atoms
        Recorded frames with momenta and a ``SinglePointCalculator`` holding
        ``energy`` and ``forces``.
    time_ps : (F,) time of each frame.
    ensemble : {"nvt", "nve"}
    temperature_K, timestep_fs : float, optional
        Settings of the run (thermostat target; initial velocities for NVE).
    steps : int, optional
        Steps completed.
    steps_per_second : float, optional
    error : str, optional
        Why the run stopped early (e.g. atoms collapsed onto each other).
    files : dict
        Paths of the written trajectory files.
    """

    frames: list
    time_ps: np.ndarray
    ensemble: str
    temperature_K: float | None = None
    timestep_fs: float | None = None
    steps: int | None = None
    steps_per_second: float | None = None
    error: str | None = None
    files: dict = field(default_factory=dict)

    @cached_property
    def potential_energy(self) -> np.ndarray:
        return np.array([f.get_potential_energy() for f in self.frames])

    @cached_property
    def kinetic_energy(self) -> np.ndarray:
        return np.array([f.get_kinetic_energy() for f in self.frames])

    @property
    def total_energy(self) -> np.ndarray:
        return self.potential_energy + self.kinetic_energy

    @cached_property
    def temperature(self) -> np.ndarray:
        return np.array([f.get_temperature() for f in self.frames])

    @cached_property
    def bond_deviation(self) -> np.ndarray:
        """(F,) largest bond-length change from the first frame, Å."""
        return bond_deviation(self.frames)

    @cached_property
    def distance_distribution(self):
        """(r, h(r)); see :func:`distance_distribution`."""
        return distance_distribution(self.frames)

    def metrics(self, reference: "MDRun | None" = None) -> dict:
        """Stability, drift (NVE), temperature statistics, speed; h(r) error vs ``reference``."""
        num_atoms = len(self.frames[0])
        broken_at = stability_time(self.time_ps, self.bond_deviation)
        duration = float(self.time_ps[-1] - self.time_ps[0])
        metrics = {
            "ensemble": self.ensemble,
            "num_atoms": num_atoms,
            "steps": self.steps,
            "timestep_fs": self.timestep_fs,
            "duration_ps": duration,
            "steps_per_second": self.steps_per_second,
            "completed": self.error is None,
            "error": self.error,
            "num_bonds": len(bonds(self.frames[0])[0]),
            "stable": broken_at is None and self.error is None,
            # Fu et al.: a run that never breaks a bond is stable for its whole length
            "stability_ps": broken_at if broken_at is not None else duration,
            "max_bond_deviation_A": float(self.bond_deviation.max()),
            "temperature_K": {"target": self.temperature_K,
                              "mean": float(self.temperature.mean()),
                              "std": float(self.temperature.std()),
                              "min": float(self.temperature.min()),
                              "max": float(self.temperature.max())},
        }
        if self.ensemble == "nve":
            metrics["energy_drift_meV_atom_ps"] = energy_drift(self.time_ps, self.total_energy,
                                                               num_atoms)
        if reference is not None:
            metrics["hr_error"] = distribution_error(self.distance_distribution[1],
                                                     reference.distance_distribution[1])
        return metrics

    def summary(self, reference: "MDRun | None" = None) -> str:
        """A few lines for humans: stability, drift, temperature, speed."""
        m = self.metrics(reference)
        t = m["temperature_K"]
        if m["stable"]:
            stability = f"stable for the whole run ({m['stability_ps']:.3f} ps)"
        else:
            stability = f"UNSTABLE: a bond broke after {m['stability_ps']:.3f} ps"
        lines = [
            f"stability    {stability}; largest bond change {m['max_bond_deviation_A']:.3f} Å",
            f"temperature  mean {t['mean']:.1f} K, std {t['std']:.1f} K "
            f"(min {t['min']:.1f}, max {t['max']:.1f})",
        ]
        if "energy_drift_meV_atom_ps" in m:
            lines.append(f"energy drift {m['energy_drift_meV_atom_ps']:+.3f} meV/atom/ps (NVE)")
        if "hr_error" in m:
            lines.append(f"h(r) error   {m['hr_error']:.4f} (∫|h - h_ref| dr; 0 is identical)")
        if m["steps_per_second"]:
            lines.append(f"speed        {m['steps_per_second']:.1f} steps/s, "
                         f"{m['steps_per_second'] * (m['timestep_fs'] or 0) * 86400 / 1e6:.2f} "
                         f"ns/day")
        if m["error"]:
            lines.append(f"stopped      {m['error']}")
        return "\n".join(lines)


class _NonFinite(ValueError):
    pass


def run_md(atoms, calc, *, ensemble="nvt", temperature_K=300.0, timestep_fs=0.5, steps=1000,
           friction_per_fs=0.01, interval=10, seed=0, out_dir=None, name="md",
           progress=True, groups=None) -> MDRun:
    """Run MD with ASE's Langevin (NVT) or VelocityVerlet (NVE) integrator.

    Velocities start from a Maxwell-Boltzmann distribution at ``temperature_K``
    (no net momentum; no net rotation for non-periodic systems), so an NVE run
    settles near half that temperature.

    Parameters
    ----------
    atoms : ase.Atoms
        Starting structure (not modified).
    calc : ase Calculator
    ensemble : {"nvt", "nve"}
    temperature_K : float
    timestep_fs : float
    steps : int
    friction_per_fs : float
        Langevin friction in 1/fs (NVT only).
    interval : int
        Record (and write) a frame every ``interval`` steps.
    seed : int
        Seeds initial velocities and the Langevin noise.
    out_dir : str or Path, optional
        Write ``{name}.traj`` (ASE) and ``{name}.extxyz`` there.
    name : str
    progress : bool
        Show a progress bar with steps/s, temperature and energy.
    groups : list of index arrays, optional
        Independent parts of ``atoms`` (molecules far apart): each gets its own
        initial velocities and keeps its own centre of mass still. Default: one.

    Returns
    -------
    MDRun
        Stops early, with ``error`` set, if the calculator rejects the geometry
        (e.g. atoms collapsed onto each other) or returns non-finite energies.
    """
    if ensemble not in ENSEMBLES:
        raise ValueError(f"ensemble must be one of {ENSEMBLES}, got {ensemble!r}.")
    if steps < 1 or interval < 1 or timestep_fs <= 0:
        raise ValueError("steps and interval must be >= 1 and timestep_fs > 0.")
    if not temperature_K > 0 and not (ensemble == "nve" and temperature_K == 0):
        raise ValueError(f"temperature_K must be positive kelvin (0 only for nve: start at "
                         f"rest), got {temperature_K}.")
    atoms = atoms.copy()
    atoms.calc = calc
    groups = [np.arange(len(atoms))] if groups is None else groups
    rng = np.random.default_rng(seed)
    momenta = np.zeros((len(atoms), 3))
    for group in groups:
        part = atoms[group]
        thermalize_momenta(part, temperature_K=temperature_K, rng=rng)
        Stationary(part)
        if not part.pbc.any():
            ZeroRotation(part)
        momenta[group] = part.get_momenta()
    atoms.set_momenta(momenta)
    if ensemble == "nvt":
        # ASE's recommended way to keep centres of mass still under Langevin noise
        atoms.set_constraint([*atoms.constraints, *(FixSubsetCom(g) for g in groups)])
        dyn = Langevin(atoms, timestep_fs * units.fs, temperature_K=temperature_K,
                       friction=friction_per_fs / units.fs, fixcm=False, rng=rng)
    else:
        dyn = VelocityVerlet(atoms, timestep_fs * units.fs)

    files, writer = {}, None
    if out_dir is not None:
        from ase.io.trajectory import Trajectory

        Path(out_dir).mkdir(parents=True, exist_ok=True)
        files = {"traj": Path(out_dir) / f"{name}.traj",
                 "extxyz": Path(out_dir) / f"{name}.extxyz"}
        writer = Trajectory(files["traj"], "w")
    bar = progress_bar(total=steps, unit="step", desc=name, disable=not progress)
    frames = []

    def record():
        energy = atoms.get_potential_energy()
        if not np.isfinite(energy):
            raise _NonFinite(f"non-finite energy at step {dyn.nsteps}")
        frame = atoms.copy()
        frame.calc = SinglePointCalculator(frame, energy=energy, forces=atoms.get_forces())
        frame.info["time_ps"] = dyn.get_time() / (1000 * units.fs)
        frames.append(frame)
        if writer is not None:
            writer.write(frame)
        bar.set_postfix_str(f"T={atoms.get_temperature():.0f} K, Epot={energy:.3f} eV",
                            refresh=False)

    dyn.attach(record, interval=interval)
    dyn.attach(lambda: bar.update(dyn.nsteps - bar.n), interval=1)
    error, start = None, time.perf_counter()
    try:
        dyn.run(steps)
    except ValueError as exc:  # raised by calculators for collapsed or exploded geometries
        error = str(exc)
    finally:
        wall = time.perf_counter() - start
        bar.close()
        if writer is not None:
            writer.close()
    if not frames:  # the starting structure itself was rejected: nothing to analyse
        raise ValueError(error)
    if files:
        from ase.io import write

        write(files["extxyz"], frames, format="extxyz")
    return MDRun(frames=frames, time_ps=np.array([f.info["time_ps"] for f in frames]),
                 ensemble=ensemble, temperature_K=temperature_K, timestep_fs=timestep_fs,
                 steps=dyn.nsteps, steps_per_second=dyn.nsteps / wall if wall > 0 else None,
                 error=error, files=files)


def run_md_side_by_side(molecules, calc, *, gap=None, **settings) -> list:
    """MD of many molecules in one simulation: one force call per step for all of them.

    The molecules are laid out in a row, ``gap`` Å apart, so that a short-ranged
    calculator sees each alone: every molecule follows the dynamics it would
    follow on its own (its own initial velocities, centre of mass and thermostat
    noise), while a small student evaluates them all for little more than the
    cost of one. Each result is checked afterwards: if atoms of two molecules
    ever came within the calculator's cutoff, both runs get an ``error``.

    Parameters
    ----------
    molecules : list of ase.Atoms
        Non-periodic structures.
    calc : ase Calculator with a ``cutoff`` attribute (in Å)
        A short-ranged calculator such as :class:`~ase_distilled.DistilledCalculator`.
        Long-ranged ones (GFN2-xTB's electrostatics) would couple the molecules:
        run them one by one with :func:`run_md`.
    gap : float, optional
        Initial distance between neighbouring molecules; default 4x the cutoff.
    **settings
        As for :func:`run_md` (``out_dir`` writes the combined trajectory).

    Returns
    -------
    list of MDRun
        One per molecule, with its own frames; each frame's energy is the
        molecule's own, recomputed alone. A run stopped by the calculator stops
        them all, and each then carries its ``error``.
    """
    cutoff = getattr(calc, "cutoff", None)
    if cutoff is None:
        raise ValueError("Side-by-side MD needs a short-ranged calculator with a `cutoff` "
                         "attribute (a DistilledCalculator); run other calculators, whose "
                         "interactions may reach every molecule, one by one with run_md.")
    if any(m.pbc.any() for m in molecules):
        raise ValueError("Side-by-side MD is for non-periodic molecules; run periodic "
                         "systems one by one with run_md.")
    gap = 4 * cutoff if gap is None else gap
    packed, groups, x = Atoms(), [], 0.0
    for molecule in molecules:
        placed = molecule.copy()
        placed.positions -= placed.positions.min(axis=0)
        placed.positions[:, 0] += x
        x = placed.positions[:, 0].max() + gap
        groups.append(np.arange(len(packed), len(packed) + len(placed)))
        packed += placed
    run = run_md(packed, calc, groups=groups, **settings)
    owner = np.concatenate([np.full(len(g), k) for k, g in enumerate(groups)])
    too_close = set()  # molecules that had an atom of another within the cutoff
    for frame in run.frames:
        i, j = neighbor_list("ij", frame, cutoff)
        too_close.update(owner[i][owner[i] != owner[j]].tolist())
    runs = []
    for k, group in enumerate(groups):
        frames = []
        for frame in run.frames:
            alone = frame[group]
            probe = alone.copy()
            probe.calc = calc
            alone.calc = SinglePointCalculator(alone, energy=probe.get_potential_energy(),
                                               forces=frame.get_forces()[group])
            alone.info = dict(frame.info)
            frames.append(alone)
        error = run.error
        if k in too_close:
            error = (f"molecule {k} came within the cutoff ({cutoff} Å) of another; "
                     f"rerun with a larger gap")
        runs.append(MDRun(frames=frames, time_ps=run.time_ps, ensemble=run.ensemble,
                          temperature_K=run.temperature_K, timestep_fs=run.timestep_fs,
                          steps=run.steps, steps_per_second=run.steps_per_second,
                          error=error, files=run.files))
    return runs
