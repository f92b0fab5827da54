"""The labelled dataset: an HDF5 file, crash-safe appending and resume, splits.

Schema (``schema_version`` 1). Per-atom arrays are concatenated over
structures; structure ``k`` owns rows ``sum(num_atoms[:k])`` to
``sum(num_atoms[:k + 1])``. Units are ASE's.

=============  ===========  ==================================================
dataset        shape/dtype  meaning
=============  ===========  ==================================================
num_atoms      (S,) int32   atoms per structure
numbers        (N,) uint8   atomic numbers
positions      (N, 3) f8    Å
forces         (N, 3) f8    eV/Å
cell           (S, 3, 3) f8 Å, vectors as rows
pbc            (S, 3) bool
energy         (S,) f8      eV
stress         (S, 6) f8    eV/Å^3, Voigt (xx yy zz yz xz xy); NaN where absent
charge, spin   (S,) int32   total charge, spin multiplicity
id             (S,) str     stable id, ``"<unit>/<suffix>"`` (see data.structures)
source         (S,) str     how it was made: conformer, file, bulk, rattle:<Å>, md:<K>
molecule       (S,) str     group key: conformers, rattles, MD frames of a molecule share it
scaffold       (S,) str     Bemis-Murcko scaffold SMILES (else equal to molecule)
=============  ===========  ==================================================

File attributes: ``schema_version``, ``teacher_name``, ``teacher_package``,
``teacher_version``, ``teacher_weights``, ``created`` (ISO 8601, UTC),
``ase_distilled_version``, ``sampling`` (JSON of
:class:`~ase_distilled.data.structures.Sampling`, ``""`` when written by
:func:`save`), ``shard`` (``"i/n"`` or ``""``) and ``complete``.

Crash safety. An HDF5 file killed mid-write can be left unreadable, so no
file is ever written in place: every write goes to a temporary name, is
fsynced and renamed over its target (an atomic step on POSIX). A labelling
run appends chunks as separate small files in ``OUT.h5.journal/`` and every
so often (when the journal has grown as large as the file, so the total work
stays linear) consolidates file and journal into a new ``OUT.h5``, sorted by
id, before deleting the consolidated chunks. A SIGKILL at any moment
therefore leaves ``OUT.h5`` (if any) readable and every finished chunk
intact; rerunning the same command regenerates the same structures and ids
and skips those already in the file or journal. A lock file makes a second
writer fail at once. The torch ``Dataset`` and collate for training live in
``ase_distilled.training``.
"""

import datetime
import hashlib
import json
import os
import time
import warnings
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.calculators.calculator import CalculationFailed, PropertyNotImplementedError
from ase.calculators.singlepoint import SinglePointCalculator
from ase.stress import full_3x3_to_voigt_6_stress

from ase_distilled.data.structures import (
    Sampling,
    pushed,
    rattled,
    stretched,
    teacher_md,
    units_from_inputs,
    with_labels,
)
from ase_distilled.teachers import get_teacher, label_batch, teacher_info
from ase_distilled.teachers.ase_calc import charge_and_spin

SCHEMA_VERSION = 1
_STRINGS = ("id", "source", "molecule", "scaffold")
_TEACHER_KEYS = ("name", "package", "version", "weights")
# Attributes that must match for a run to resume into a file.
_RUN_KEYS = (*(f"teacher_{key}" for key in _TEACHER_KEYS), "sampling", "shard")


def _h5py():
    try:
        import h5py
    except ImportError as error:
        raise ImportError("Datasets need h5py: pip install 'ase-distilled[data]'") from error
    return h5py


def _label_of(atoms, k):
    calc = atoms.calc

    def get(name):
        if calc is None:
            return None
        try:
            return calc.get_property(name, atoms, allow_calculation=False)
        except PropertyNotImplementedError:
            return None

    energy, forces = get("energy"), get("forces")
    if energy is None or forces is None:
        raise ValueError(f"Structure {k} ({atoms.info.get('id', atoms.get_chemical_formula())})"
                         " has no energy and forces: label it first (atoms.calc with results)"
                         " and do not move it afterwards.")
    stress = get("stress") if atoms.pbc.all() else None
    return float(energy), forces, stress


def _columns(atoms_list) -> dict:
    labels = [_label_of(atoms, k) for k, atoms in enumerate(atoms_list)]
    info = []
    for k, atoms in enumerate(atoms_list):
        molecule = str(atoms.info.get("molecule", atoms.get_chemical_formula()))
        info.append({"id": str(atoms.info.get("id", f"{k:08d}")),
                     "source": str(atoms.info.get("source", "given")), "molecule": molecule,
                     "scaffold": str(atoms.info.get("scaffold", molecule))})
    stress = [np.full(6, np.nan) if s is None else
              full_3x3_to_voigt_6_stress(s) if np.shape(s) == (3, 3) else np.asarray(s)
              for _, _, s in labels]
    states = np.array([charge_and_spin(atoms) for atoms in atoms_list], np.int32).reshape(-1, 2)

    def cat(arrays, shape, dtype):
        return np.concatenate(arrays).astype(dtype) if arrays else np.zeros(shape, dtype)

    columns = {
        "num_atoms": np.array([len(a) for a in atoms_list], np.int32),
        "numbers": cat([a.numbers for a in atoms_list], (0,), np.uint8),
        "positions": cat([a.positions for a in atoms_list], (0, 3), np.float64),
        "forces": cat([f for _, f, _ in labels], (0, 3), np.float64),
        "cell": np.array([a.cell.array for a in atoms_list], np.float64).reshape(-1, 3, 3),
        "pbc": np.array([a.pbc for a in atoms_list], bool).reshape(-1, 3),
        "energy": np.array([e for e, _, _ in labels], np.float64),
        "stress": np.array(stress, np.float64).reshape(-1, 6),
        "charge": states[:, 0], "spin": states[:, 1],
    }
    for name in _STRINGS:
        columns[name] = np.array([row[name] for row in info], dtype=object)
    return columns


def _fsync(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write(path, atoms_list, attrs):
    """Write atomically: temporary file, fsync, rename over ``path``."""
    h5py = _h5py()
    path = Path(path)
    columns = _columns(atoms_list)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    with h5py.File(tmp, "w") as f:
        f.attrs.update(attrs)
        for name, values in columns.items():
            if name in _STRINGS:
                f.create_dataset(name, data=values, dtype=h5py.string_dtype())
            else:
                f.create_dataset(name, data=values)
    _fsync(tmp)
    os.replace(tmp, path)
    _fsync(path.parent)


def _attrs(teacher, *, sampling="", shard="", complete=True, created=None) -> dict:
    from ase_distilled import __version__

    info = teacher_info(teacher) if teacher is not None else dict.fromkeys(_TEACHER_KEYS, "")
    created = created or datetime.datetime.now(datetime.UTC).isoformat(
        timespec="seconds")
    return {"schema_version": SCHEMA_VERSION,
            **{f"teacher_{key}": str(info.get(key, "")) for key in _TEACHER_KEYS},
            "created": created, "ase_distilled_version": __version__,
            "sampling": sampling, "shard": shard, "complete": complete}


def save(atoms_list, path, teacher=None):
    """Write labelled structures to an HDF5 dataset (atomically).

    Parameters
    ----------
    atoms_list : list of ase.Atoms
        Each with a calculator holding energy and forces (and stress, kept for
        3-D periodic cells); ``info`` keys id, source, molecule, scaffold,
        charge, spin are stored, with defaults (position, ``"given"``, the
        chemical formula, the molecule, 0, 1) where absent.
    path : str or path
    teacher : str or ase Calculator, optional
        Recorded in the file attributes (see :func:`ase_distilled.teachers.teacher_info`).
    """
    _write(path, list(atoms_list), _attrs(teacher))


def _open(path):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Dataset {str(path)!r} does not exist.")
    h5py = _h5py()
    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise ValueError(f"{path} is not a readable HDF5 dataset ({error}).") from error
    version = int(handle.attrs.get("schema_version", -1))
    if version != SCHEMA_VERSION:
        handle.close()
        raise ValueError(f"{path} has dataset schema version {version}; this ase-distilled "
                         f"reads version {SCHEMA_VERSION}.")
    return handle


def _attrs_of(handle) -> dict:
    return {key: value.item() if isinstance(value, np.generic) else value
            for key, value in handle.attrs.items()}


def read_metadata(path) -> dict:
    """File attributes of a dataset, the teacher's as a nested dict, plus ``num_structures``."""
    with _open(path) as f:
        attrs, count = _attrs_of(f), len(f["energy"])
    meta = {key: value for key, value in attrs.items() if not key.startswith("teacher_")}
    meta["teacher"] = {key: attrs.get(f"teacher_{key}", "") for key in _TEACHER_KEYS}
    # As settings: a file written before a sampling field existed reads with its default.
    meta["sampling"] = (json.loads(Sampling.from_json(meta["sampling"]).to_json())
                        if meta.get("sampling") else None)
    meta["complete"] = bool(meta.get("complete", True))
    meta["num_structures"] = count
    return meta


def _raw_attrs(path) -> dict:
    with _open(path) as f:
        return _attrs_of(f)


def _read_ids(path) -> list:
    with _open(path) as f:
        return list(f["id"].asstr()[()])


def content_sha256(path) -> str:
    """sha256 of a dataset's arrays (names, dtypes, shapes and values), not of its bytes.

    A file's bytes also hold its attributes (``created``) and the HDF5 layout, so the
    same structures and labels, regenerated by the same recipe, give another file
    sha256 but the same content digest.
    """
    digest = hashlib.sha256()
    with _open(path) as f:
        for name in sorted(f.keys()):
            values = f[name][()]
            if name in _STRINGS:
                values = np.array([b"\0".join(values)])
            values = np.ascontiguousarray(values)
            digest.update(f"{name} {values.dtype.str} {values.shape}\n".encode())
            digest.update(values.tobytes())
    return digest.hexdigest()


def load(path) -> list:
    """Structures of a dataset as ``ase.Atoms`` with single-point energy, forces (stress).

    ``atoms.info`` holds id, source, molecule, scaffold, charge, spin.
    """
    with _open(path) as f:
        data = {name: f[name].asstr()[()] if name in _STRINGS else f[name][()]
                for name in f.keys()}
    bounds = np.concatenate([[0], np.cumsum(data["num_atoms"], dtype=np.int64)])
    structures = []
    for k in range(len(data["num_atoms"])):
        rows = slice(bounds[k], bounds[k + 1])
        atoms = Atoms(numbers=data["numbers"][rows].astype(int),
                      positions=data["positions"][rows], cell=data["cell"][k],
                      pbc=data["pbc"][k])
        atoms.info.update({name: str(data[name][k]) for name in _STRINGS})
        atoms.info.update(charge=int(data["charge"][k]), spin=int(data["spin"][k]))
        labels = {"energy": float(data["energy"][k]), "forces": data["forces"][rows]}
        if np.isfinite(data["stress"][k]).all():
            labels["stress"] = data["stress"][k]
        atoms.calc = SinglePointCalculator(atoms, **labels)
        structures.append(atoms)
    return structures


# Finer groupings tried in turn when split_key gives too few groups: the parts of info["id"]
# (see data.structures) up to its first, then its second "/".
ID_GROUPINGS = {
    "id:unit": (1, "unit id (info['id'] before the first '/': one molecule, file frame "
                   "or crystal)"),
    "id:base": (2, "base-structure id (info['id'] up to its second '/': one conformer, "
                   "frame or strained cell with its rattled copies and MD frames)"),
}
_PART_NAMES = ("training", "validation", "test")


def _group_labels(atoms_list, key) -> list:
    if key in ID_GROUPINGS:
        depth = ID_GROUPINGS[key][0]
        return ["/".join(str(atoms.info["id"]).split("/")[:depth]) if "id" in atoms.info
                else f"#{k}" for k, atoms in enumerate(atoms_list)]
    for atoms in atoms_list:
        if key not in atoms.info:
            raise ValueError(f"A structure has no info[{key!r}] to group by; label it with "
                             "ase_distilled.data or set the key.")
    return [str(atoms.info[key]) for atoms in atoms_list]


def split_grouping(atoms_list, fractions=(0.8, 0.1, 0.1), key="molecule"):
    """The grouping :func:`split_by_group` uses: ``key``, or a finer one if it gives too few groups.

    A split needs a group for every part with a positive fraction. When
    ``atoms.info[key]`` has fewer distinct values (200 periodic copper cells all
    have molecule ``"Cu"``), the groupings of :data:`ID_GROUPINGS` are tried in
    turn, the unit id, then the base-structure id; the first with enough groups
    is used, else the one with the most (``key`` on a tie).

    Returns
    -------
    grouping : str
        ``key``, ``"id:unit"`` or ``"id:base"``.
    labels : list of str
        Each structure's group.
    counts : dict
        Number of groups of each grouping tried, by name.
    """
    needed = int((np.asarray(fractions, float) > 0).sum())
    counts, labels = {}, {}
    for grouping in [key, *(name for name in ID_GROUPINGS if name != key)]:
        labels[grouping] = _group_labels(atoms_list, grouping)
        counts[grouping] = len(set(labels[grouping]))
        if counts[grouping] >= needed:
            return grouping, labels[grouping], counts
    grouping = max(counts, key=counts.get)
    return grouping, labels[grouping], counts


def _part_name(k, count) -> str:
    return _PART_NAMES[k] if count == 3 else f"part {k}"


def split_by_group(atoms_list, fractions=(0.8, 0.1, 0.1), key="molecule", seed=0):
    """Split structures so that no group (``atoms.info[key]``) is in two parts.

    Groups are shuffled with ``seed`` and laid end to end; each goes to the part
    whose share of the structures its middle falls in. A part with a positive
    fraction left empty that way takes, from a part holding several groups, the
    group whose middle lies nearest to its share.

    If ``key`` gives fewer groups than there are parts with a positive fraction,
    the structures are grouped by unit id, or failing that by base-structure id
    (see :func:`split_grouping`), with a warning naming the grouping used. With
    too few groups even so, a part stays empty, with a warning. ``key`` may name
    these groupings itself: ``"id:unit"`` or ``"id:base"``.

    Returns
    -------
    tuple of lists
        One list of structures per fraction (train, val, test by default).
    """
    fractions = np.asarray(fractions, float)
    if (fractions < 0).any() or not np.isclose(fractions.sum(), 1.0):
        raise ValueError(f"fractions must be non-negative and sum to 1, got {fractions}.")
    atoms_list = list(atoms_list)
    if not atoms_list:
        return tuple([] for _ in fractions)
    grouping, labels, counts = split_grouping(atoms_list, fractions, key)
    needed = int((fractions > 0).sum())
    if grouping != key:
        warnings.warn(
            f"split_key {key!r} gives {counts[key]} group(s) for {len(atoms_list)} "
            f"structures, too few for the {needed} parts of split fractions "
            f"{fractions.tolist()}; grouping by {ID_GROUPINGS[grouping][1]} instead "
            f"({counts[grouping]} groups). Set split_key to choose the grouping.",
            stacklevel=2)
    groups = {}
    for label, atoms in zip(labels, atoms_list):
        groups.setdefault(label, []).append(atoms)
    order = sorted(groups)
    order = [order[i] for i in np.random.default_rng(seed).permutation(len(order))]
    bounds = np.cumsum(fractions) * len(atoms_list)
    sizes = np.array([len(groups[name]) for name in order])
    middles = np.cumsum(sizes) - sizes / 2
    where = np.minimum(np.searchsorted(bounds, middles, side="right"), len(fractions) - 1)
    empty = []
    for part in np.flatnonzero(fractions > 0):
        if part in where:
            continue
        donors = np.bincount(where, minlength=len(fractions))[where] > 1
        if not donors.any():
            empty.append(_part_name(part, len(fractions)))
            continue
        centre = bounds[part] - len(atoms_list) * fractions[part] / 2
        where[np.argmin(np.where(donors, np.abs(middles - centre), np.inf))] = part
    if empty:
        warnings.warn(
            f"The {' and '.join(empty)} part(s) of the split stay empty: "
            f"{', '.join(f'{name!r} gives {n}' for name, n in counts.items())} group(s) for "
            f"{len(atoms_list)} structures and {needed} parts. Label more structures, set "
            f"split_key to an atoms.info key with more values, or set those fractions to 0.",
            stacklevel=2)
    parts = [[] for _ in fractions]
    for name, part in zip(order, where):
        parts[part].extend(groups[name])
    return tuple(parts)


def _unit_of(id) -> str:
    return id.split("/", 1)[0]


class _Journal:
    """``OUT.h5`` plus chunk files in ``OUT.h5.journal/``, written by one process at a time."""

    def __init__(self, out, attrs):
        import fcntl

        self.out = Path(out)
        self.dir = self.out.with_name(self.out.name + ".journal")
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.dir / "lock", "w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise ValueError(f"Another labelling run is writing {self.out}; wait for it or "
                               "choose another --out (use --shard to split work).") from None
        for stale in [*self.dir.glob("*.tmp-*"), *self.out.parent.glob(self.out.name + ".tmp-*")]:
            stale.unlink()  # a write that was killed before its rename
        self.attrs = attrs
        self.chunks = sorted(self.dir.glob("chunk-*.h5"))
        self.ids, self.stored, self.pending = set(), 0, 0
        for path in ([self.out] if self.out.exists() else []) + self.chunks:
            self._check(path)
            ids = _read_ids(path)
            self.ids.update(ids)
            if path == self.out:
                self.stored = len(ids)
            else:
                self.pending += len(ids)

    def _check(self, path):
        theirs = _raw_attrs(path)
        for key in _RUN_KEYS:
            if not _same_setting(key, theirs.get(key, ""), self.attrs[key]):
                raise ValueError(
                    f"{path} was written with {key} = {theirs.get(key)!r}, this run has "
                    f"{self.attrs[key]!r}: rerun with the same options to resume, or choose "
                    "another --out.")

    def append(self, atoms_list):
        number = int(self.chunks[-1].stem.split("-")[1]) + 1 if self.chunks else 0
        path = self.dir / f"chunk-{number:06d}.h5"
        _write(path, atoms_list, {**self.attrs, "complete": False})
        self.chunks.append(path)
        self.pending += len(atoms_list)
        self.ids.update(atoms.info["id"] for atoms in atoms_list)

    def consolidate(self, complete=False):
        """Fold the journal into ``OUT.h5`` (sorted by id), then delete the folded chunks."""
        if not self.chunks and self.out.exists() and not complete:
            return
        by_id = {}
        for path in ([self.out] if self.out.exists() else []) + self.chunks:
            by_id.update((atoms.info["id"], atoms) for atoms in load(path))
        created = _raw_attrs(self.out)["created"] if self.out.exists() else None
        _write(self.out, [by_id[id] for id in sorted(by_id)],
               {**self.attrs, "complete": complete, "created": created or self.attrs["created"]})
        for path in self.chunks:
            path.unlink()
        self.chunks, self.stored, self.pending = [], len(by_id), 0

    def close(self, finished):
        self._lock.close()
        if finished:
            (self.dir / "lock").unlink()
            self.dir.rmdir()


def _same_setting(key, theirs, ours) -> bool:
    if key == "sampling" and theirs and ours:
        return Sampling.from_json(theirs) == Sampling.from_json(ours)
    return str(theirs) == str(ours)


def _parse_shard(shard):
    if shard is None:
        return 0, 1
    index, count = (int(part) for part in shard.split("/")) if isinstance(shard, str) \
        else shard
    if not 0 <= index < count:
        raise ValueError(f"shard must be i/n with 0 <= i < n, got {shard!r}.")
    return index, count


def label(inputs, teacher, out, *, sampling=None, shard=None, bulk=(), limit=None,
          weights=None, device=None, batch_size=16, chunk_size=256, flush_seconds=60.0,
          progress=True):
    """Generate structures, label them with a teacher and append them to an HDF5 dataset.

    Crash-safe and resumable: rerunning the same call after a crash (even
    SIGKILL) continues where it stopped, with no structure lost or duplicated.
    The finished file is sorted by id, so shards merged with :func:`merge`
    equal a single run.

    Parameters
    ----------
    inputs : iterable of str, path, ase.Atoms or Unit
        ``.smi`` files, files ASE reads, structures (see
        :func:`ase_distilled.data.structures.units_from_inputs`).
    teacher : str or ase Calculator
        See :func:`ase_distilled.teachers.get_teacher`.
    out : str or path
        The ``.h5`` dataset to create or resume.
    sampling : Sampling, optional
        Conformers, rattles and teacher MD per unit; defaults to ``Sampling()``.
    shard : "i/n" or (i, n), optional
        Label only units ``i, i + n, i + 2n, ...`` (0 <= i < n).
    bulk : iterable of str
        Crystal names (``ase.build.bulk``) to add.
    limit : int, optional
        Only the first ``limit`` units of each input file.
    weights, device
        Passed to :func:`~ase_distilled.teachers.get_teacher` for a teacher name.
    batch_size : int
        Structures per teacher call for batched teachers (Orb).
    chunk_size, flush_seconds
        Journal chunks are written every ``chunk_size`` structures or
        ``flush_seconds``, whichever comes first: at most that much work is
        lost to a crash.
    progress : bool
        Show a tqdm progress bar with ETA on stderr.

    Returns
    -------
    dict
        ``units`` (this shard's), ``skipped`` (done before), ``failed`` (units the
        teacher raised on; the file is then left incomplete so that a rerun retries
        them), ``nonfinite`` (structures, not units, dropped because the teacher
        returned a NaN or infinite energy, force or stress, e.g. for overlapping
        atoms; each is named in a warning; a rerun gives the same), ``structures``
        (in the file), ``path``.
    """
    from tqdm.auto import tqdm

    sampling = sampling or Sampling()
    index, count = _parse_shard(shard)
    units = units_from_inputs(inputs, bulk=bulk, limit=limit)[index::count]
    if not units:
        raise ValueError("Nothing to label: give input files or crystals (bulk).")
    calc = get_teacher(teacher, weights=weights, device=device)
    attrs = _attrs(calc, sampling=sampling.to_json(), shard=f"{index}/{count}" if count > 1
                   else "", complete=False)
    journal = _Journal(out, attrs)
    finished = False
    try:
        done_units = {_unit_of(id) for id in journal.ids}
        todo = [unit for unit in units if unit.key not in done_units]
        failed, nonfinite, buffer, flushed = 0, 0, [], time.monotonic()
        with tqdm(total=len(units), initial=len(units) - len(todo), unit="unit",
                  desc=f"labelling {Path(out).name}", disable=not progress) as bar:
            for unit in todo:
                try:
                    labelled, dropped = _label_unit(unit, calc, sampling, batch_size)
                    buffer += labelled
                except CalculationFailed as error:
                    failed += 1
                    warnings.warn(f"{unit.key}: the teacher failed ({error}); skipped.",
                                  stacklevel=2)
                except NotImplementedError as error:  # e.g. EMT meeting an element it lacks
                    raise ValueError(f"{unit.key}: teacher {attrs['teacher_name']} cannot "
                                     f"label it ({error}); choose another teacher.") from error
                else:
                    if dropped:
                        nonfinite += len(dropped)
                        warnings.warn(
                            f"{unit.key}: the teacher returned a non-finite energy, force or "
                            f"stress for {', '.join(dropped)} (overlapping atoms?); skipped.",
                            stacklevel=2)
                bar.update()
                if buffer and (len(buffer) >= chunk_size
                               or time.monotonic() - flushed > flush_seconds):
                    journal.append(buffer)
                    buffer, flushed = [], time.monotonic()
                    if journal.pending >= max(journal.stored, chunk_size):
                        journal.consolidate()
            if buffer:
                journal.append(buffer)
        journal.consolidate(complete=not failed)
        finished = True
    finally:
        journal.close(finished)
    return {"units": len(units), "skipped": len(units) - len(todo), "failed": failed,
            "nonfinite": nonfinite, "structures": journal.stored, "path": str(out)}


def _finite_labels(atoms) -> bool:
    return all(np.isfinite(np.asarray(value, dtype=float)).all()
               for key, value in atoms.calc.results.items()
               if key in ("energy", "forces", "stress") and value is not None)


def _label_unit(unit, calc, sampling, batch_size) -> tuple[list, list]:
    """All labelled structures of one unit: base, rattled, stretched and pushed copies,
    teacher MD; and the ids of those left out for a non-finite label."""
    base = unit.build(sampling)
    structures = base + [copy for atoms in base for copy in
                         rattled(atoms, sampling) + stretched(atoms, sampling)
                         + pushed(atoms, sampling)]
    labelled = []
    for start in range(0, len(structures), batch_size):
        batch = structures[start:start + batch_size]
        labelled += [with_labels(a, lab) for a, lab in zip(batch, label_batch(calc, batch))]
    if sampling.md_temperatures:
        for atoms in base:
            labelled += teacher_md(atoms, calc, sampling)
    finite = [_finite_labels(atoms) for atoms in labelled]
    return ([atoms for atoms, ok in zip(labelled, finite) if ok],
            [atoms.info["id"] for atoms, ok in zip(labelled, finite) if not ok])


def merge(paths, out):
    """Merge datasets (e.g. shards of one labelling run) into ``out``, sorted by id.

    All inputs must share teacher and sampling. Merging every shard of a run
    gives a file equal in content to a single unsharded run.
    """
    metas = [read_metadata(path) for path in paths]
    for path, meta in zip(paths[1:], metas[1:]):
        for key in ("teacher", "sampling"):
            if meta[key] != metas[0][key]:
                raise ValueError(f"Cannot merge: {path} has {key} {meta[key]} but "
                                 f"{paths[0]} has {metas[0][key]}.")
    by_id = {}
    for path in paths:
        for atoms in load(path):
            id = atoms.info["id"]
            if id in by_id and not _same(by_id[id], atoms):
                raise ValueError(f"Cannot merge: structure {id} differs between inputs.")
            by_id[id] = atoms
    shards = {meta.get("shard", "") for meta in metas} - {""}
    expected = {f"{i}/{n}" for n in {int(s.split("/")[1]) for s in shards} for i in range(n)}
    complete = all(meta["complete"] for meta in metas) and shards == expected
    teacher = metas[0]["teacher"]
    sampling = json.dumps(metas[0]["sampling"], sort_keys=True) if metas[0]["sampling"] else ""
    attrs = _attrs(None, sampling=sampling, complete=complete,
                   created=min(meta["created"] for meta in metas))
    attrs.update({f"teacher_{key}": teacher[key] for key in _TEACHER_KEYS})
    _write(out, [by_id[id] for id in sorted(by_id)], attrs)
    return {"structures": len(by_id), "complete": complete, "path": str(out)}


def _same(a, b) -> bool:
    return (np.array_equal(a.numbers, b.numbers) and np.allclose(a.positions, b.positions)
            and np.isclose(a.get_potential_energy(), b.get_potential_energy()))


def summary(path) -> dict:
    """Counts, elements, energy and force statistics and teacher of a dataset."""
    from ase.data import chemical_symbols

    meta = read_metadata(path)
    with _open(path) as f:
        numbers, energy = f["numbers"][()], f["energy"][()]
        num_atoms, forces = f["num_atoms"][()], f["forces"][()]
        sources = f["source"].asstr()[()]
        molecules = f["molecule"].asstr()[()]
    elements, counts = np.unique(numbers, return_counts=True)
    per_atom = energy / np.maximum(num_atoms, 1)
    norms = np.linalg.norm(forces, axis=1)

    def stats(values):
        if not len(values):
            return None
        return {"mean": float(values.mean()), "std": float(values.std()),
                "min": float(values.min()), "max": float(values.max())}

    journal = Path(str(path) + ".journal")
    return {
        "path": str(path), "teacher": meta["teacher"], "created": meta["created"],
        "complete": meta["complete"], "shard": meta.get("shard", ""),
        "structures": int(len(energy)), "atoms": int(num_atoms.sum()),
        "molecules": int(len(set(molecules))),
        "sources": {str(name): int(n) for name, n in zip(*np.unique(sources, return_counts=True))},
        "elements": {chemical_symbols[z]: int(n) for z, n in zip(elements, counts)},
        "energy": stats(energy), "energy_per_atom": stats(per_atom),
        "force_norm": stats(norms),
        "force_rms": float(np.sqrt((forces ** 2).mean())) if len(forces) else None,
        "pending_chunks": len(list(journal.glob("chunk-*.h5"))) if journal.is_dir() else 0,
    }
