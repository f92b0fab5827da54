"""On-policy distillation: specialise a student to the molecules a user studies.

A general student is accurate inside the chemistry it was trained on and can be
far off outside it. :func:`distill` fixes that for given systems, in segments,
until its acceptance criteria pass or its time is spent:

0. *Set up* (once): read the systems and split them by molecule into training
   and held-out ones; check the student covers their elements (before any
   labelling); relax every system with the teacher (the relaxation path is kept
   as labelled data); label a small, deterministic reference set of the
   student's own training distribution (``weights/reference.smi``); run teacher
   MD at 300 K from each held-out system's minimum. The student's per-element
   energy references are refitted to the teacher's energies.
1. *Student MD*: the current student drives NVT of all training systems side by
   side (one force call per step for all), at each temperature and seed.
2. *Pick frames*: the latent-distance uncertainty of the student
   (:mod:`ase_distilled.models.uncertainty`) ranks the frames; the most
   uncertain are chosen, at most ``frames_per_segment``, spread over systems and
   in time. Frames where the student's MD broke a bond (more than 0.5 Å from its
   starting length) are taken first: that is where it is wrong.
3. *Label*: the teacher labels them into the crash-safe HDF5 dataset
   (:func:`ase_distilled.data.label`); a frame the teacher fails on is skipped
   and logged.
4. *Fine-tune*: the student trains on all on-policy frames so far, the
   relaxation paths and the reference set (the replay that keeps its general
   accuracy), from the previous segment's weights.
5. *Evaluate* on the held-out systems (teacher minimum "at rest" and teacher
   300 K frames) and on the reference set's held-out molecules.

The result is a checkpoint with a fitted and calibrated uncertainty, its model
card, and a report (JSON and PNG): errors per segment, uncertainty against true
error, MD stability.

Crash safety: every stage writes its result atomically into the work directory
and is skipped when its result exists; labelling and training resume inside a
stage. After ``kill -9`` at any moment, the same call continues where the run
stopped: no stored frame is labelled twice, and at most the stage in progress
(a relaxation, an MD segment, a training epoch) is redone.
"""

import dataclasses
import hashlib
import json
import math
import os
import time
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import ase.io
import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import CalculationFailed
from ase.calculators.singlepoint import SinglePointCalculator
from ase.optimize import BFGS

from ase_distilled.analysis.forces import progress_bar
from ase_distilled.analysis.md import BOND_BREAK_A, bond_deviation, run_md_side_by_side
from ase_distilled.calculator import DistilledCalculator
from ase_distilled.checkpoint import save_checkpoint
from ase_distilled.data import label, load, read_metadata, save, split_by_group
from ase_distilled.data.structures import Sampling, smiles_units, units_from_inputs
from ase_distilled.model_card import render_model_card
from ase_distilled.models.uncertainty import (
    calibrate,
    fit,
    structure_errors,
    student_features,
)
from ase_distilled.registry import WEIGHTS_DIR, load_model
from ase_distilled.teachers import get_teacher, teacher_info
from ase_distilled.training import TrainConfig
from ase_distilled.training.trainer import evaluate, train

REFERENCE_SMILES = WEIGHTS_DIR / "reference.smi"
_REST, _RELAX, _MD = "rest", "relax", "md:300"


@dataclass(frozen=True)
class DistillConfig:
    """Settings of an on-policy distillation run (defaults sized for 2 CPU cores).

    Parameters
    ----------
    temperatures : tuple of float
        Student NVT temperatures (K) per segment.
    seeds : tuple of int
        Student NVT runs per temperature, each with its own seed.
    md_steps, timestep_fs, frame_interval : int, float, int
        Steps of each student run per segment, time step, steps between candidate frames.
    frames_per_segment : int
        Most frames the teacher labels per segment.
    replay : int
        Most on-policy frames of earlier segments that each fine-tune replays (a seeded
        sample), besides the new frames, the relaxation paths and the reference set.
    holdout : float
        Share of the systems (by molecule) kept out of training to judge the student;
        at least one when there are three or more.
    epochs, lr, batch_size, energy_weight, forces_weight : int, float, int, float, float
        Fine-tuning per segment (AdamW, warm-up then cosine decay, EMA); segment ``k``
        peaks at ``lr / sqrt(k)``.
    target_rmse : float
        Acceptance: held-out force RMSE (eV/Å) at rest and on teacher 300 K frames at
        most this, and no student run of the segment broke a bond.
    max_segments : int
    reference_molecules : int
        Molecules of the reference set (``weights/reference.smi``) to replay; 0 for none.
    holdout_md_frames, holdout_md_interval : int
        Teacher 300 K frames per held-out system, and steps between them.
    relax_fmax, relax_steps : float, int
        Teacher relaxation (BFGS) of every system before anything else.
    final_md_ps : float
        NVT at 300 K of the final student on every system, to report its stability.
    seed : int
    """

    temperatures: tuple = (300.0, 600.0)
    seeds: tuple = (0, 1)
    md_steps: int = 300
    timestep_fs: float = 0.5
    frame_interval: int = 10
    frames_per_segment: int = 160
    replay: int = 480
    holdout: float = 0.25
    epochs: int = 10
    lr: float = 3e-4
    batch_size: int = 16
    energy_weight: float = 1.0
    forces_weight: float = 10.0
    target_rmse: float = 0.04
    max_segments: int = 20
    reference_molecules: int = 100
    holdout_md_frames: int = 5
    holdout_md_interval: int = 20
    relax_fmax: float = 0.05
    relax_steps: int = 200
    final_md_ps: float = 2.0
    seed: int = 0

    def __post_init__(self):
        for name in ("md_steps", "frame_interval", "frames_per_segment", "epochs",
                     "batch_size", "max_segments"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if not self.temperatures or min(self.temperatures) <= 0:
            raise ValueError(f"temperatures must be positive kelvin, got {self.temperatures}.")
        if not 0 <= self.holdout < 1:
            raise ValueError(f"holdout must lie in [0, 1), got {self.holdout}.")

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(self).items()}


# --------------------------------------------------------------------------- files


def _write_json(path: Path, data):
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=float))
    os.replace(tmp, path)


def _read_json(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


class _Clock:
    """Wall time spent on a run, kept across interruptions (``clock.json``)."""

    def __init__(self, path: Path):
        self.path = path
        self.spent = (_read_json(path) or {}).get("seconds", 0.0)
        self.mark = time.monotonic()

    def now(self) -> float:
        return self.spent + time.monotonic() - self.mark

    def save(self):
        _write_json(self.path, {"seconds": self.now()})


# --------------------------------------------------------------------------- inputs


def read_systems(structures) -> list:
    """Systems from SMILES files, files ASE reads, or ``ase.Atoms``: one per molecule/frame.

    Each gets ``info["system"]`` (a stable name) and ``info["molecule"]``.
    """
    if isinstance(structures, (str, Path, Atoms)):
        structures = [structures]
    structures = list(structures)
    if not structures:
        raise ValueError("No structures given: pass SMILES files, structure files or Atoms.")
    for item in structures:
        if not isinstance(item, Atoms) and not Path(item).is_file():
            raise FileNotFoundError(f"Input file {str(item)!r} does not exist.")
    systems = []
    for unit in units_from_inputs(structures):
        try:
            atoms = unit.build(Sampling(conformers=1))[0]
        except (ValueError, RuntimeError) as error:
            raise ValueError(f"{unit.key}: cannot build a structure ({error}); fix or remove "
                             "it from the input.") from error
        if atoms.pbc.any():
            raise ValueError(f"{unit.key} is periodic; distill specialises students to "
                             "molecules (non-periodic systems).")
        atoms.calc = None
        atoms.info["system"] = unit.key.replace("/", "_")
        systems.append(atoms)
    return systems


def _check_elements(systems, model):
    for atoms in systems:
        try:
            model.species_of(torch.as_tensor(atoms.numbers))
        except ValueError as error:
            raise ValueError(f"System {atoms.info['system']} ({atoms.get_chemical_formula()}): "
                             f"{error} Nothing was labelled.") from None


def _split(systems, holdout: float, seed: int):
    """Held-out systems by molecule: a seeded, order-free choice."""
    molecules = sorted({atoms.info["molecule"] for atoms in systems})
    count = 0 if len(molecules) < 3 else max(1, round(holdout * len(molecules)))
    ranked = sorted(molecules, key=lambda m: zlib.crc32(f"{seed}:{m}".encode()))
    held = set(ranked[:count])
    return ([a for a in systems if a.info["molecule"] not in held],
            [a for a in systems if a.info["molecule"] in held])


def _fingerprint(systems) -> str:
    digest = hashlib.sha256()
    for atoms in systems:
        digest.update(atoms.info["system"].encode())
        digest.update(atoms.numbers.tobytes())
        digest.update(np.round(atoms.positions, 6).tobytes())
    return digest.hexdigest()[:16]


# --------------------------------------------------------------------------- stages


def _relax(atoms, teacher, config, path: Path) -> list:
    """Teacher BFGS relaxation of one system: labelled path frames, the last at rest."""
    if path.is_file():
        return load(path)
    system = atoms.copy()
    system.calc = teacher
    frames = []

    def record():
        frame = system.copy()
        frame.calc = SinglePointCalculator(frame, energy=system.get_potential_energy(),
                                           forces=system.get_forces())
        frames.append(frame)

    optimizer = BFGS(system, logfile=None)
    optimizer.attach(record, interval=1)
    try:
        optimizer.run(fmax=config.relax_fmax, steps=config.relax_steps)
    except CalculationFailed as error:
        warnings.warn(f"{atoms.info['system']}: the teacher failed during relaxation "
                      f"({error}); keeping the path so far.", stacklevel=3)
    if not frames:
        return []
    keep = sorted({0, len(frames) - 1, *range(0, len(frames), 5)})
    kept = []
    for k in keep:
        frame = frames[k]
        last = k == len(frames) - 1
        frame.info.update(id=f"{atoms.info['system']}/relax{k:03d}",
                          source=_REST if last else _RELAX,
                          molecule=atoms.info["molecule"], scaffold=atoms.info["molecule"],
                          system=atoms.info["system"])
        kept.append(frame)
    save(kept, path, teacher)
    return load(path)


def _label(atoms_list, teacher, path: Path, sampling=None, progress=True) -> list:
    """Label structures into ``path`` (resumable), then load what is stored."""
    if atoms_list and not (path.is_file() and read_metadata(path)["complete"]):
        label(atoms_list, teacher, path, sampling=sampling or Sampling(conformers=1, rattle=()),
              chunk_size=1, progress=progress)
    return load(path) if path.is_file() else []


def _student_md(model, systems, config, segment, device, progress) -> list:
    """Candidate frames of the student's own NVT, with ``broken`` where a bond broke."""
    calc = DistilledCalculator(model, device=device)
    runs = [(t, s) for t in config.temperatures for s in config.seeds]
    candidates, summary = [], []
    for temperature, seed in progress_bar(runs, desc=f"segment {segment}: student MD",
                                          disable=not progress):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # uncertainty warnings: the point of this stage
            results = run_md_side_by_side(
                systems, calc, temperature_K=temperature, steps=config.md_steps,
                timestep_fs=config.timestep_fs, interval=config.frame_interval,
                seed=config.seed + 1000 * segment + seed, progress=False)
        broken = 0
        for system, run in zip(systems, results):
            deviation = bond_deviation(run.frames)
            past = np.flatnonzero(deviation > BOND_BREAK_A)
            end = int(past[0]) + 1 if len(past) else len(run.frames)
            broken += bool(len(past)) or run.error is not None
            for k, frame in enumerate(run.frames[:end]):
                frame = frame.copy()
                frame.info = {"system": system.info["system"], "molecule": system.info["molecule"],
                              "step": k * config.frame_interval,
                              "run": f"{temperature:g}K-s{seed}",
                              "broken": bool(len(past)) and k >= end - 2}
                candidates.append(frame)
        summary.append({"temperature": temperature, "seed": seed, "systems": len(systems),
                        "broken": int(broken),
                        "steps_per_second": results[0].steps_per_second if results else None})
    return candidates, summary


def select_frames(candidates, scores, cap: int, min_gap: int) -> list:
    """Indices of frames to label: broken ones first, then the most uncertain.

    At most ``cap`` frames, at most ``ceil(cap / systems)`` per system (then the cap
    is filled from any system), and frames of one run of one system at least
    ``min_gap`` steps apart.
    """
    systems = {frame.info["system"] for frame in candidates}
    per_system = max(1, math.ceil(cap / max(len(systems), 1)))
    chosen, counts, taken = [], {}, {}

    def fits(k, limit):
        info = candidates[k].info
        run = (info["system"], info["run"])
        if counts.get(info["system"], 0) >= limit:
            return False
        return all(abs(info["step"] - step) >= min_gap for step in taken.get(run, []))

    def take(k):
        info = candidates[k].info
        chosen.append(k)
        counts[info["system"]] = counts.get(info["system"], 0) + 1
        taken.setdefault((info["system"], info["run"]), []).append(info["step"])

    broken = [k for k, frame in enumerate(candidates) if frame.info["broken"]]
    for k in broken[:max(1, cap // 4)]:
        take(k)
    order = np.argsort(-np.asarray(scores), kind="stable")
    for limit in (per_system, cap):
        for k in order.tolist():
            if len(chosen) >= cap:
                return chosen
            if k not in chosen and fits(k, limit):
                take(k)
    return chosen


def _scores(model, reference_atoms, candidates) -> np.ndarray:
    """Largest per-atom latent distance of each candidate, from the training features."""
    distance_model = fit(model, reference_atoms)
    data = student_features(model, candidates)
    with torch.no_grad():
        parameter = distance_model.mean
        distance = distance_model.distance(
            torch.as_tensor(data["features"], dtype=parameter.dtype, device=parameter.device),
            torch.as_tensor(data["species"], device=parameter.device)).cpu().numpy()
    largest = np.zeros(len(candidates))
    np.maximum.at(largest, data["system"], distance)
    return largest


def _refit_energy_reference(model, labelled):
    """Shift the per-element energies so the student's energies match the teacher's on
    average per element (least squares): a new teacher has other zero points."""
    calc = DistilledCalculator(model, device="cpu")
    column = {z: k for k, z in enumerate(model.atomic_numbers)}
    counts = np.zeros((len(labelled), len(column)))
    residual = np.zeros(len(labelled))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        predicted = calc.predict_batch(labelled)
    for k, (atoms, result) in enumerate(zip(labelled, predicted)):
        z, n = np.unique(atoms.numbers, return_counts=True)
        counts[k, [column[int(v)] for v in z]] = n
        residual[k] = atoms.get_potential_energy() - result["energy"]
    present = counts.sum(axis=0) > 0
    delta = np.zeros(len(column))
    delta[present] = np.linalg.lstsq(counts[:, present], residual, rcond=None)[0]
    with torch.no_grad():
        model.atom_ref += torch.as_tensor(delta, dtype=model.atom_ref.dtype)
    return float(np.sqrt(np.mean((residual - counts @ delta) ** 2)))


def _metrics(model, groups: dict, batch_size: int) -> dict:
    return {name: evaluate(model, atoms, batch_size) for name, atoms in groups.items() if atoms}


def _fine_tune(init_path, reference, pool, config, segment, out: Path, device, progress):
    """Fine-tune from ``init_path`` on the reference set and the pool of the user's frames.

    The reference structures weigh as much in the loss, all together, as the pool,
    however large it grows: the replay that keeps general accuracy. The peak learning
    rate of segment ``k`` is ``lr / sqrt(k)``: every segment restarts its schedule, and
    a constant peak let the drift on the reference chemistry add up segment by segment.
    """
    for atoms in reference["train"] + reference["val"]:
        atoms.info["part"] = "reference"
    for atoms in pool:
        atoms.info["part"] = "systems"
    weight = max(1.0, len(pool) / max(len(reference["train"]), 1))
    settings = TrainConfig(epochs=config.epochs, lr=config.lr / math.sqrt(segment),
                           batch_size=config.batch_size,
                           warmup_epochs=0.5, patience=0, init_from=str(init_path),
                           energy_weight=config.energy_weight,
                           forces_weight=config.forces_weight, seed=config.seed,
                           val_group_key="part",
                           group_weights={"reference": weight} if reference["train"] else None,
                           device=device, progress=progress)
    train_atoms = reference["train"] + [a for a in pool if not _validation(a)]
    val_atoms = reference["val"] + [a for a in pool if _validation(a)]
    model, _ = train(train_atoms, val_atoms, settings, out=out, resume=True)
    return model


def _validation(frame) -> bool:
    return zlib.crc32(frame.info["id"].encode()) % 10 == 0


# --------------------------------------------------------------------------- main


def distill(structures, teacher, init="tiny", out="distilled.pt", *, minutes: float = 15.0,
            work=None, weights=None, device=None, config: DistillConfig | None = None,
            progress: bool = True) -> dict:
    """Specialise a student to ``structures`` by on-policy distillation from ``teacher``.

    Parameters
    ----------
    structures : path, ase.Atoms, or a list of them
        SMILES files (``.smi``: one molecule a line), or any file ASE reads (SDF,
        XYZ, extxyz, traj: each frame one system), or ``ase.Atoms``.
    teacher : str or ase Calculator
        A teacher name (``gfn2-xtb``, an Orb name: see
        :func:`ase_distilled.teachers.available_teachers`) or any ASE calculator.
    init : str, path or PaiNN
        The student to start from: a shipped name, a checkpoint, or a module.
    out : str or path
        The specialised student's checkpoint. Its report (``.json``, ``.png``) and
        model card (``.md``) are written next to it.
    minutes : float
        Wall-time budget, counted across interruptions; the loop stops earlier when
        the acceptance criteria pass.
    work : str or path, optional
        Work directory (default: ``OUT.work``); rerunning with the same one resumes.
    weights, device
        For a teacher name: Orb weights (a local checkpoint or ``"random"``) and device.
        ``device`` also places the student (default: CUDA when available).
    config : DistillConfig, optional
    progress : bool
        tqdm progress bars for each stage.

    Returns
    -------
    dict
        The report: settings, systems, per-segment metrics, stability, uncertainty
        calibration, stop reason and time spent; also written as ``OUT.json``.
    """
    config = config or DistillConfig()
    out = Path(out)
    work = Path(work) if work is not None else out.with_name(out.name + ".work")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    systems = read_systems(structures)
    model = load_model(init)
    if not hasattr(model, "config"):
        raise ValueError(f"Cannot distill from {init!r}: it is an export; start from the "
                         "student checkpoint (.pt) it was exported from.")
    _check_elements(systems, model)
    train_systems, held_systems = _split(systems, config.holdout, config.seed)
    calc = get_teacher(teacher, weights=weights, device=device)
    info = teacher_info(calc)

    work.mkdir(parents=True, exist_ok=True)
    settings = {"config": config.to_dict(), "teacher": info, "systems": _fingerprint(systems),
                "init": str(init) if not isinstance(init, torch.nn.Module) else "module"}
    stored = _read_json(work / "run.json")
    if stored is not None and stored != settings:
        changed = sorted(k for k in settings if stored.get(k) != settings[k])
        raise ValueError(f"{work} holds a run with other {', '.join(changed)}; rerun with the "
                         "same inputs and options to resume it, or choose another --work.")
    _write_json(work / "run.json", settings)
    clock = _Clock(work / "clock.json")

    init_path = work / "init.pt"
    if not init_path.is_file():
        start = model.__class__(model.config)
        start.load_state_dict(model.weights_only_state())
        start.metadata = dict(getattr(model, "metadata", {}))
        save_checkpoint(start, init_path)

    # 0. set up: relaxations, reference, held-out teacher MD
    relaxed, rest = {}, []
    (work / "relax").mkdir(exist_ok=True)
    for atoms in progress_bar(systems, desc="teacher relaxation", disable=not progress):
        frames = _relax(atoms, calc, config, work / "relax" / f"{atoms.info['system']}.h5")
        relaxed[atoms.info["system"]] = frames
        if frames:
            minimum = frames[-1].copy()
            minimum.calc = None
            minimum.info = {"id": atoms.info["system"], "system": atoms.info["system"],
                            "molecule": atoms.info["molecule"]}
            rest.append(minimum)
    clock.save()
    reference = _reference(model, calc, work, config, progress)
    held_names = {a.info["system"] for a in held_systems}
    held_minima = [a for a in rest if a.info["system"] in held_names]
    held_frames = _label(held_minima, calc, work / "holdout.h5", Sampling(
        conformers=1, rattle=(), md_temperatures=(300.0,), md_frames=config.holdout_md_frames,
        md_interval=config.holdout_md_interval, seed=config.seed), progress)
    held_groups = {"held-out at rest": [a for a in held_frames if "/md" not in a.info["id"]],
                   "held-out teacher 300 K": [a for a in held_frames if "/md" in a.info["id"]],
                   "reference held-out": reference["test"]}
    clock.save()

    train_names = {a.info["system"] for a in train_systems}
    base_train = [f for name in sorted(train_names) for f in relaxed[name]]
    starts = [a for a in rest if a.info["system"] in train_names]
    if not starts:
        raise ValueError("The teacher relaxed none of the training systems; see the warnings.")

    segments = _read_json(work / "segments.json") or []
    current = init_path
    if segments:
        current = work / f"segment-{len(segments):03d}" / "student.pt"
    elif not (work / "segment-000.json").is_file():
        baseline = load_model(init_path)
        offset = _refit_energy_reference(baseline, reference["train"] + base_train)
        save_checkpoint(baseline, init_path)
        _write_json(work / "segment-000.json", {
            "energy_offset_rms_eV": offset,
            "metrics": _metrics(baseline, held_groups, config.batch_size)})
    baseline = _read_json(work / "segment-000.json")

    stop_reason, on_policy = "max_segments", []
    for k in range(1, len(segments) + 1):
        on_policy += _label([], calc, work / f"segment-{k:03d}" / "frames.h5")
    while len(segments) < config.max_segments:
        if segments and segments[-1]["accepted"]:
            stop_reason = "accepted"
            break
        last = segments[-1]["seconds"] if segments else 0.0
        # a segment as long as the last, and a tenth of the budget for the final checks
        if clock.now() + last + 6 * minutes > 60 * minutes:
            stop_reason = "time"
            break
        began = clock.now()
        number = len(segments) + 1
        folder = work / f"segment-{number:03d}"
        folder.mkdir(exist_ok=True)
        student = load_model(current)
        chosen_path = folder / "chosen.extxyz"
        if not chosen_path.is_file():
            candidates, md_summary = _student_md(student, starts, config, number, device,
                                                 progress)
            training_now = reference["train"] + base_train + on_policy
            picks = select_frames(candidates, _scores(student, training_now, candidates),
                                  config.frames_per_segment, 5 * config.frame_interval)
            chosen = []
            for k in picks:
                frame = candidates[k].copy()
                frame.info = {"id": f"{frame.info['system']}~s{number:03d}-"
                                    f"{frame.info['run']}-{frame.info['step']:05d}",
                              "molecule": candidates[k].info["molecule"], "source": "on-policy",
                              "broken": candidates[k].info["broken"]}
                chosen.append(frame)
            _write_json(folder / "md.json", md_summary)
            tmp = folder / "chosen.extxyz.tmp"
            ase.io.write(tmp, chosen, format="extxyz")
            os.replace(tmp, chosen_path)
            clock.save()
        chosen = ase.io.read(chosen_path, index=":")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            new = _label(chosen, calc, folder / "frames.h5", progress=progress)
        for warning in caught:  # a frame the teacher failed on: logged, skipped
            warnings.warn(str(warning.message), stacklevel=2)
        clock.save()
        replay = on_policy
        if len(on_policy) > config.replay:  # a seeded sample of the earlier frames
            keep = np.random.default_rng([config.seed, number]).choice(
                len(on_policy), config.replay, replace=False)
            replay = [on_policy[k] for k in sorted(keep)]
        pool = base_train + replay + new
        on_policy += new
        model_k = _fine_tune(current, reference, pool, config, number, folder / "student.pt",
                             device, progress)
        metrics = _metrics(model_k, held_groups, config.batch_size)
        md_summary = _read_json(folder / "md.json")
        broken = sum(run["broken"] for run in md_summary)
        held = [metrics.get(name, {}).get("force_rmse") for name in
                ("held-out at rest", "held-out teacher 300 K")]
        accepted = (broken == 0 and all(v is not None and v <= config.target_rmse for v in held)
                    if held_systems else False)
        segments.append({"segment": number, "frames": len(new),
                         "teacher_failed": len(chosen) - len(new),
                         "broken_frames": int(sum(bool(a.info.get("broken")) for a in chosen)),
                         "md": md_summary, "broken_runs": int(broken), "metrics": metrics,
                         "accepted": bool(accepted), "seconds": clock.now() - began})
        _write_json(work / "segments.json", segments)
        clock.save()
        current = folder / "student.pt"
    else:
        if segments and segments[-1]["accepted"]:
            stop_reason = "accepted"

    return _finish(current, systems, train_systems, held_systems, rest, held_groups,
                   reference, base_train + on_policy, baseline, segments, stop_reason, calc,
                   info, init, config, out, work, clock, device, progress, minutes)


def _reference(model, teacher, work, config, progress) -> dict:
    """The replayed reference set: the first molecules of ``weights/reference.smi`` whose
    elements the student covers, one conformer, one 0.05 Å rattle and two teacher
    300 K frames each, split 80/10/10 by molecule."""
    parts = {"train": [], "val": [], "test": []}
    if config.reference_molecules == 0:
        return parts
    path = work / "reference.smi"
    if not path.is_file():
        from rdkit import Chem

        covered = set(model.elements)
        lines = [line.split()[0] for line in REFERENCE_SMILES.read_text().splitlines()
                 if line.strip() and not line.startswith("#")]
        lines = [line for line in lines
                 if {a.GetSymbol() for a in Chem.AddHs(Chem.MolFromSmiles(line)).GetAtoms()}
                 <= covered][:config.reference_molecules]
        path.write_text("".join(f"{line}\n" for line in lines))
    if not path.read_text().strip():
        warnings.warn("No reference molecule has only the student's elements: no replay.",
                      stacklevel=3)
        return parts
    structures = _label(smiles_units(path), teacher, work / "reference.h5",
                        Sampling(conformers=1, rattle=(0.05,), rattles=1,
                                 md_temperatures=(300.0,), md_frames=2, md_interval=10,
                                 seed=config.seed), progress)
    train, val, test = split_by_group(structures, (0.8, 0.1, 0.1),
                                      key="molecule", seed=config.seed)
    return {"train": train, "val": val, "test": test}


def _finish(current, systems, train_systems, held_systems, rest, held_groups, reference,
            training, baseline, segments, stop_reason, calc, info, init, config, out, work,
            clock, device, progress, minutes) -> dict:
    """Uncertainty, stability, checkpoint, card and report of the final student."""
    model = load_model(current)
    model.uncertainty = fit(model, reference["train"] + training)
    calibration_set = [a for group in held_groups.values() for a in group]
    uncertainty = (calibrate(model, model.uncertainty, calibration_set)
                   if calibration_set else None)
    stability_path = work / "stability.json"
    stability = _read_json(stability_path)
    if stability is None:
        steps = max(1, round(config.final_md_ps * 1000 / config.timestep_fs))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the report gives the uncertainty instead
            results = run_md_side_by_side(rest, DistilledCalculator(model, device=device),
                                          temperature_K=300.0, steps=steps,
                                          timestep_fs=config.timestep_fs, interval=20,
                                          seed=config.seed, progress=progress)
        stability = [{"system": a.info["system"], "ps": config.final_md_ps,
                      "max_bond_change_A": float(run.bond_deviation.max()),
                      "stable": bool(run.bond_deviation.max() <= BOND_BREAK_A
                                     and run.error is None)}
                     for a, run in zip(rest, results)]
        _write_json(stability_path, stability)
    clock.save()
    report = {
        "teacher": info, "init": str(init) if not isinstance(init, torch.nn.Module) else "module",
        "systems": {"train": [a.info["system"] for a in train_systems],
                    "held_out": [a.info["system"] for a in held_systems]},
        "config": config.to_dict(), "stop_reason": stop_reason,
        "minutes_budget": minutes, "minutes_spent": clock.now() / 60,
        "baseline": baseline, "segments": segments,
        "labelled": {"reference": len(reference["train"]) + len(reference["val"])
                     + len(reference["test"]),
                     "relaxation": sum(1 for a in training if a.info.get("source") != "on-policy"),
                     "on_policy": sum(1 for a in training if a.info.get("source") == "on-policy")},
        "uncertainty": uncertainty,
        "stability": {"ps": config.final_md_ps, "stable": sum(s["stable"] for s in stability),
                      "systems": len(stability), "runs": stability},
    }
    labelled = report["labelled"]
    largest = max((s["max_bond_change_A"] for s in stability), default=None)
    model.metadata = {**model.metadata, "teacher": info, "distill": {
        k: report[k] for k in ("init", "systems", "stop_reason", "minutes_spent", "labelled")},
        "data": {"structures": sum(labelled.values()), "sizes": labelled, "files": [],
                 "split": "held-out systems by molecule; reference 80/10/10 by molecule"},
        "data_description": (f"specialised by on-policy distillation to "
                             f"{len(train_systems)} systems from {report['init']}"),
        "test_description": "Held-out systems: see the specialisation section below.",
        "md": {"summary": f"NVT 300 K, {config.final_md_ps:g} ps, every system: "
                          f"{report['stability']['stable']}/{len(stability)} stable (largest "
                          f"bond change {_none_or(largest, '.2f')} Å)."},
    }
    model.metadata.setdefault("metrics", {})["distill"] = {
        "baseline": baseline["metrics"], "final": segments[-1]["metrics"] if segments else None,
        "stability": report["stability"]["stable"], "systems": len(stability)}
    if uncertainty:
        model.metadata["metrics"]["uncertainty"] = {"calibration": uncertainty}
    save_checkpoint(model, out)
    out.with_suffix(".md").write_text(render_model_card(out.stem, model))
    _write_json(out.with_suffix(".json"), report)
    try:
        from ase_distilled.analysis.plots import plot_distill_report

        errors = structure_errors(model, calibration_set) if calibration_set else None
        plot_distill_report(report, errors, out.with_suffix(".png"))
    except ImportError as error:
        warnings.warn(f"{error} No report figure.", stacklevel=3)
    return report


def _none_or(value, spec) -> str:
    return "not measured" if value is None else format(value, spec)
