"""Structure sources for labelling, deterministic from a seed.

Work is split into *units*: one molecule of a SMILES file (``.smi``), one frame
of any file ASE reads, one crystal, or one given ``ase.Atoms``. A unit has a
stable key (``"moses_5k:000123"``, ``"bulk:Cu"``) and builds its *base*
structures on demand: RDKit conformers (ETKDG + MMFF), the frame itself, or
strained copies of a crystal. :func:`rattled` adds copies at several
amplitudes; :func:`stretched` adds copies with one bond to hydrogen pulled
longer (the wall a bond meets before it breaks); :func:`pushed` adds copies with
one hydrogen bent toward a neighbour (the wall that keeps it from atoms it is
not bonded to); :func:`teacher_md` adds short
Langevin snapshots driven by the teacher at several temperatures. Every random
choice is seeded from ``Sampling.seed`` and the structure's id, so rerunning
the same command rebuilds exactly the same structures and ids, which is what
lets a labelling run resume or be sharded.

Structure ids are ``"<unit key>/c<k>"`` for base structures, with
``"/rattle<amplitude>-<k>"``, ``"/stretch<Å>"``, ``"/push<degrees>"`` or ``"/md<T>K-<frame>"``
appended for derived ones. ``atoms.info`` also carries ``source`` (``"conformer"``,
``"file"``, ``"bulk"``, ``"rattle:<Å>"``, ``"stretch:<Å>"``, ``"push:<degrees>"`` or
``"md:<K>"``: the distortion level),
``molecule`` (canonical SMILES, ``info["molecule"]`` of a file, else the
chemical formula, or the crystal name), ``scaffold`` (Bemis-Murcko scaffold
for SMILES, ``""`` for acyclic molecules; else equal to ``molecule``),
``charge`` and ``spin`` (multiplicity).
"""

import json
import warnings
import zlib
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
from ase import Atoms, units
from ase.calculators.singlepoint import SinglePointCalculator

from ase_distilled.teachers.ase_calc import charge_and_spin


@dataclass(frozen=True)
class Sampling:
    """How many structures of which kind each unit yields.

    Attributes
    ----------
    conformers : int
        RDKit conformers per SMILES; strained cells per crystal (the first unstrained).
    rattle : tuple of float
        Standard deviations (Å) of the Gaussian displacements of rattled copies.
    rattles : int
        Rattled copies per amplitude and base structure.
    stretch : tuple of float
        Lengthenings (Å) of one random bond to hydrogen: one copy per amplitude and
        base structure (see :func:`stretched`).
    push : tuple of float
        Angles (degrees) by which one random hydrogen is bent toward a random nearby
        atom: one copy per angle and base structure (see :func:`pushed`).
    md_temperatures : tuple of float
        Temperatures (K) of the teacher-driven Langevin runs, one per base structure each.
    md_frames, md_interval : int
        Snapshots per run, and MD steps between snapshots.
    md_timestep : float
        fs.
    max_strain : float
        Largest component of the random symmetric strain of crystals.
    seed : int
    """

    conformers: int = 4
    rattle: tuple = (0.02, 0.05, 0.1)
    rattles: int = 1
    stretch: tuple = ()
    push: tuple = ()
    md_temperatures: tuple = ()
    md_frames: int = 4
    md_interval: int = 10
    md_timestep: float = 0.5
    max_strain: float = 0.03
    seed: int = 0

    def to_json(self) -> str:
        """Canonical JSON, stored with a dataset so a resume can check it is the same."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Sampling":
        """The settings stored by :meth:`to_json`; fields added since take their
        defaults (which leave them off), so older datasets still resume."""
        return cls(**{key: tuple(value) if isinstance(value, list) else value
                      for key, value in json.loads(text).items()})


@dataclass(frozen=True)
class Unit:
    """A piece of work with a stable key; ``build(sampling)`` returns its base structures."""

    key: str
    build: object = field(compare=False)


def _rng(seed, name) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def _tag(atoms, id, source, molecule, scaffold=None):
    charge, spin = charge_and_spin(atoms)
    atoms.info.update(id=id, source=source, molecule=molecule,
                      scaffold=molecule if scaffold is None else scaffold,
                      charge=charge, spin=spin)
    return atoms


def _import_rdkit():
    try:
        from rdkit import Chem
        from rdkit.Chem import AllChem, Descriptors
        from rdkit.Chem.Scaffolds import MurckoScaffold
    except ImportError as error:
        raise ImportError("SMILES input needs RDKit: pip install 'ase-distilled[data]'") \
            from error
    return Chem, AllChem, Descriptors, MurckoScaffold


def _conformers(smiles, key, sampling) -> list:
    Chem, AllChem, Descriptors, MurckoScaffold = _import_rdkit()
    from rdkit import rdBase

    with rdBase.BlockLogs():  # our warning below says it once, without RDKit's dump
        mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        warnings.warn(f"{key}: RDKit cannot parse SMILES {smiles!r}; skipped.", stacklevel=2)
        return []
    canonical = Chem.MolToSmiles(mol)
    scaffold = MurckoScaffold.MurckoScaffoldSmiles(mol=mol)
    charge, spin = Chem.GetFormalCharge(mol), Descriptors.NumRadicalElectrons(mol) + 1
    mol = Chem.AddHs(mol)
    params = AllChem.ETKDGv3()
    params.randomSeed = (sampling.seed * 1_000_003 + zlib.crc32(key.encode())) % 2**31
    ids = list(AllChem.EmbedMultipleConfs(mol, sampling.conformers, params))
    if not ids:  # some ring systems only embed from random starting coordinates
        params.useRandomCoords = True
        ids = list(AllChem.EmbedMultipleConfs(mol, sampling.conformers, params))
    if not ids:
        warnings.warn(f"{key}: RDKit could not embed {smiles!r}; skipped.", stacklevel=2)
        return []
    if AllChem.MMFFHasAllMoleculeParams(mol):
        AllChem.MMFFOptimizeMoleculeConfs(mol, maxIters=1000)
    else:
        AllChem.UFFOptimizeMoleculeConfs(mol, maxIters=1000)
    numbers = [atom.GetAtomicNum() for atom in mol.GetAtoms()]
    structures = []
    for k, conf_id in enumerate(ids):
        atoms = Atoms(numbers=numbers, positions=mol.GetConformer(conf_id).GetPositions(),
                      info={"charge": charge, "spin": spin})
        structures.append(_tag(atoms, f"{key}/c{k:02d}", "conformer", canonical, scaffold))
    return structures


def conformers_from_smiles(smiles: str, count: int = 1, seed: int = 0) -> list:
    """3-D structures of a molecule: RDKit ETKDG conformers relaxed with MMFF (else UFF).

    Built as the labelling pipeline builds them, and tagged in ``atoms.info``
    (``id``, ``source``, ``molecule``, ``scaffold``, ``charge``, ``spin``).

    Raises
    ------
    ValueError
        If RDKit cannot parse or embed ``smiles``.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the error below says it plainly
        structures = _conformers(smiles, "smiles", Sampling(conformers=count, seed=seed))
    if not structures:
        raise ValueError(f"{smiles!r} is not a SMILES string RDKit can parse and embed in 3-D.")
    return structures


def smiles_units(path) -> list:
    """One unit per SMILES of a ``.smi`` file (first column; blank and ``#`` lines skipped)."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not a text SMILES file ({error}); give one SMILES "
                         "per line.") from error
    smiles = [line.split()[0] for line in lines if line.strip() and not line.startswith("#")]
    if not smiles:
        raise ValueError(f"{path} holds no SMILES; give one SMILES per line.")
    return [Unit(f"{path.stem}:{k:06d}", partial(_conformers, text, f"{path.stem}:{k:06d}"))
            for k, text in enumerate(smiles)]


def _as_given(atoms, key, sampling) -> list:
    atoms = atoms.copy()
    molecule = str(atoms.info.get("molecule", atoms.get_chemical_formula()))
    return [_tag(atoms, f"{key}/c00", str(atoms.info.get("source", "file")), molecule,
                 atoms.info.get("scaffold"))]


def atoms_units(atoms_list, prefix="atoms") -> list:
    """One unit per given structure, keyed by ``info["id"]`` or its position."""
    keys = [str(atoms.info.get("id", f"{prefix}:{k:06d}")).replace("/", "_")
            for k, atoms in enumerate(atoms_list)]
    return [Unit(key, partial(_as_given, atoms, key)) for key, atoms in zip(keys, atoms_list)]


def file_units(path) -> list:
    """One unit per frame of any file ``ase.io.read`` understands (extxyz, sdf, traj, ...)."""
    import ase.io

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Input file {str(path)!r} does not exist.")
    try:
        frames = ase.io.read(path, index=":")
    except Exception as error:  # ASE raises many types for unreadable files
        raise ValueError(f"Cannot read structures from {path}: {error}. Give a file ASE "
                         "reads (extxyz, sdf, traj, ...) or a .smi SMILES file.") from error
    if not frames:
        raise ValueError(f"{path} holds no structures.")
    return atoms_units(frames, prefix=path.stem)


def _crystal(name, key, sampling) -> list:
    """``name`` is what ``ase.build.bulk`` takes: ``"Cu"`` or ``"NaCl:rocksalt:5.64"``."""
    from ase.build import bulk

    symbol, *rest = name.split(":")
    kwargs = {"crystalstructure": rest[0]} if rest else {}
    if len(rest) > 1:
        kwargs["a"] = float(rest[1])
    try:
        atoms = bulk(symbol, cubic=True, **kwargs)
    except (ValueError, RuntimeError):  # hcp and others have no cubic cell
        atoms = bulk(symbol, orthorhombic=True, **kwargs)
    # At least 8 atoms, so that rattling moves atoms relative to each other.
    atoms = atoms.repeat(int(np.ceil((8 / len(atoms)) ** (1 / 3))))
    structures = []
    for k in range(max(sampling.conformers, 1)):
        strained = atoms.copy()
        if k:
            strain = _rng(sampling.seed, f"{key}/c{k:02d}").uniform(
                -sampling.max_strain, sampling.max_strain, (3, 3))
            strained.set_cell(atoms.cell.array @ (np.eye(3) + (strain + strain.T) / 2),
                              scale_atoms=True)
        structures.append(_tag(strained, f"{key}/c{k:02d}", "bulk", name))
    return structures


def crystal_units(names) -> list:
    """One unit per crystal name (see ``ase.build.bulk``), e.g. ``["Cu", "Si", "Al"]``."""
    units_ = [Unit(f"bulk:{name}", partial(_crystal, name, f"bulk:{name}")) for name in names]
    for unit in units_:  # fail now, not hours into a run
        try:
            unit.build(Sampling(conformers=1))
        except (ValueError, KeyError, RuntimeError) as error:
            raise ValueError(f"Cannot build crystal {unit.key[5:]!r} with ase.build.bulk: "
                             f"{error}. Use e.g. 'Cu' or 'NaCl:rocksalt:5.64'.") from error
    return units_


def units_from_inputs(inputs=(), *, bulk=(), limit=None) -> list:
    """Units from files (``.smi`` or ASE-readable), ``ase.Atoms``, units and crystal names.

    Parameters
    ----------
    inputs : iterable of str, path, ase.Atoms or Unit
    bulk : iterable of str
        Crystal names for :func:`crystal_units`.
    limit : int, optional
        Use only the first ``limit`` units of each input file.
    """
    units_, loose_atoms = [], []
    for item in inputs:
        if isinstance(item, Unit):
            units_.append(item)
        elif isinstance(item, Atoms):
            loose_atoms.append(item)
        else:
            path = Path(item)
            if not path.is_file():
                raise FileNotFoundError(f"Input file {str(path)!r} does not exist.")
            found = smiles_units(path) if path.suffix == ".smi" else file_units(path)
            units_.extend(found[:limit])
    units_ += atoms_units(loose_atoms) + crystal_units(bulk)
    keys = [unit.key for unit in units_]
    if len(set(keys)) != len(keys):
        duplicated = sorted({key for key in keys if keys.count(key) > 1})[:5]
        raise ValueError(f"Duplicate unit keys {duplicated}: two inputs share a file name "
                         "or two structures share info['id']; rename one.")
    return units_


def rattled(atoms, sampling) -> list:
    """Copies of ``atoms`` with Gaussian displacements at each ``sampling.rattle`` amplitude."""
    copies = []
    for amplitude in sampling.rattle:
        for k in range(sampling.rattles):
            id = f"{atoms.info['id']}/rattle{amplitude:.3f}-{k}"
            copy = atoms.copy()
            copy.positions += _rng(sampling.seed, id).normal(0.0, amplitude, copy.positions.shape)
            copy.info.update(id=id, source=f"rattle:{amplitude:g}")
            copies.append(copy)
    return copies


def stretched(atoms, sampling) -> list:
    """Copies of ``atoms`` with one bond to hydrogen longer by each ``sampling.stretch``.

    Per copy, a seeded random hydrogen moves away from its nearest atom along the
    bond between them (:func:`stretch_hydrogen`); the rest stays where it was. MD
    breaks bonds to hydrogen first, so a student must learn how steeply they resist.
    Structures without hydrogen (or with hydrogen only) yield no copies.
    """
    return _one_hydrogen_moved(atoms, sampling, "stretch", sampling.stretch, ".3f",
                               lambda atoms, hydrogen, amplitude, rng:
                               stretch_hydrogen(atoms, hydrogen, amplitude))


def stretch_hydrogen(atoms, index: int, amplitude: float):
    """A copy of ``atoms`` with hydrogen ``index`` moved ``amplitude`` Å further from its
    nearest non-hydrogen atom, along the bond between them."""
    to_partner = atoms.get_distance(index, _partner(atoms, index), mic=True, vector=True)
    copy = atoms.copy()
    copy.positions[index] -= amplitude * to_partner / np.linalg.norm(to_partner)
    return copy


def pushed(atoms, sampling, reach: float = 3.0) -> list:
    """Copies of ``atoms`` with one hydrogen bent toward a neighbour by each ``sampling.push``.

    Per copy, a seeded random hydrogen and a seeded random atom within ``reach`` Å of
    it (its bonded partner excepted: a geminal hydrogen, an atom two bonds away, a
    close contact) are drawn; the hydrogen turns about its partner toward that atom
    (:func:`push_hydrogen`), closing the angle between them. At rest and in 300 K
    MD such angles hardly close, yet a student that never felt the wall against it
    may let a hydrogen fall through (train/README.md, round 19). Structures without
    hydrogen, or whose drawn hydrogen has no atom in reach, yield no copy.
    """
    def push_toward_random_neighbour(atoms, hydrogen, degrees, rng):
        near = np.flatnonzero(_distances_to_others(atoms, hydrogen) < reach)
        return (push_hydrogen(atoms, hydrogen, degrees, target=rng.choice(near))
                if len(near) else None)

    return _one_hydrogen_moved(atoms, sampling, "push", sampling.push, ".1f",
                               push_toward_random_neighbour)


def _one_hydrogen_moved(atoms, sampling, kind, amounts, id_format, move) -> list:
    """Per amount, ``move(atoms, hydrogen, amount, rng)`` of a seeded random hydrogen,
    tagged ``<id>/<kind><amount>`` and source ``<kind>:<amount>``; moves returning
    None, and structures without hydrogen or with hydrogen only, yield no copy."""
    hydrogens = np.flatnonzero(atoms.numbers == 1)
    if not len(hydrogens) or len(hydrogens) == len(atoms):
        return []
    copies = []
    for amount in amounts:
        id = f"{atoms.info['id']}/{kind}{amount:{id_format}}"
        rng = _rng(sampling.seed, id)
        copy = move(atoms, rng.choice(hydrogens), amount, rng)
        if copy is not None:
            copy.info.update(id=id, source=f"{kind}:{amount:g}")
            copies.append(copy)
    return copies


def _partner(atoms, hydrogen: int) -> int:
    """The non-hydrogen atom nearest to ``hydrogen``: the atom it is bonded to."""
    partners = np.flatnonzero(atoms.numbers != 1)
    return partners[np.argmin(atoms.get_distances(hydrogen, partners, mic=True))]


def _distances_to_others(atoms, hydrogen: int):
    """Distances from ``hydrogen`` to every atom, itself and its partner set to infinity."""
    distances = atoms.get_distances(hydrogen, range(len(atoms)), mic=True)
    distances[[hydrogen, _partner(atoms, hydrogen)]] = np.inf
    return distances


def push_hydrogen(atoms, index: int, degrees: float, target=None):
    """A copy of ``atoms`` with hydrogen ``index`` turned by ``degrees`` about its bonded
    partner toward atom ``target`` (default: the nearest atom but the partner), in the
    plane of the three, its bond length kept.

    The turn stops where the hydrogen reaches the partner-target line (it never
    passes the target's side; a hydrogen already on it stays); everything else stays
    where it was.
    """
    partner = _partner(atoms, index)
    if target is None:
        target = np.argmin(_distances_to_others(atoms, index))
    bond = atoms.get_distance(partner, index, mic=True, vector=True)
    toward = atoms.get_distance(partner, target, mic=True, vector=True)
    length = np.linalg.norm(bond)
    along = bond / length
    across = toward - (toward @ along) * along
    between = np.arctan2(np.linalg.norm(across), toward @ along)
    turn = min(np.radians(degrees), between)
    copy = atoms.copy()
    if turn > 0:
        copy.positions[index] = atoms.positions[partner] + length * (
            np.cos(turn) * along + np.sin(turn) * across / np.linalg.norm(across))
    return copy


def with_labels(atoms, label):
    """A copy of ``atoms`` holding ``label`` (energy, forces[, stress]) as single-point results."""
    atoms = atoms.copy()
    atoms.calc = SinglePointCalculator(atoms, **label)
    return atoms


def teacher_md(atoms, teacher, sampling) -> list:
    """Labelled Langevin snapshots of ``atoms`` driven by ``teacher``, per temperature.

    Off-equilibrium geometries at MD temperatures are what keeps a student's own
    MD stable. Each snapshot carries the teacher's energy and forces at its geometry.
    """
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import Stationary

    try:
        from ase.md.velocitydistribution import thermalize_momenta  # ASE >= 3.29
    except ImportError:
        from ase.md.velocitydistribution import MaxwellBoltzmannDistribution as thermalize_momenta

    frames = []
    for temperature in sampling.md_temperatures:
        run_id = f"{atoms.info['id']}/md{temperature:g}K"
        rng = _rng(sampling.seed, run_id)
        system = atoms.copy()
        system.calc = teacher
        thermalize_momenta(system, temperature_K=temperature, rng=rng)
        Stationary(system)
        dynamics = Langevin(system, sampling.md_timestep * units.fs, temperature_K=temperature,
                            friction=0.01 / units.fs, fixcm=False, rng=rng)
        for frame in range(sampling.md_frames):
            dynamics.run(sampling.md_interval)
            label = {"energy": system.get_potential_energy(), "forces": system.get_forces()}
            if system.pbc.all() and "stress" in teacher.implemented_properties:
                label["stress"] = system.get_stress()
            snapshot = with_labels(system, label)
            snapshot.info.update(id=f"{run_id}-{frame:02d}", source=f"md:{temperature:g}")
            frames.append(snapshot)
    return frames
