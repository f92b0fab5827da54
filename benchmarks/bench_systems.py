"""Shared pieces of the benchmarks: test systems, the machine, interleaved timing.

Absolute times on a shared machine are noisy, so every comparison here times
its calculators *interleaved* (one call of each in turn, repeated) and reports
medians; ratios taken this way are what the README quotes.
"""

import os
import platform
import resource
import time
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from ase.build import molecule

SMILES_FILE = Path(__file__).parents[1] / "train" / "data" / "moses_5k.smi"  # in the repo
WATER_SPACING = 3.104  # Å per molecule on a cubic grid: 1.00 g/cm^3


def machine() -> dict:
    """The machine a result was measured on."""
    cpu = platform.processor() or "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return {"cpu": cpu, "nproc": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "load_average_1min": os.getloadavg()[0],
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def rss_mb() -> float:
    """Current resident set size of this process in MB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def drug_like(num_atoms, count=1, seed=0, tolerance=4,
              elements=("H", "C", "N", "O", "F", "S", "Cl", "Br")) -> list:
    """Drug-like molecules (with H) of about ``num_atoms`` atoms of ``elements`` (MOSES SMILES).

    Falls back to ``ase.build.molecule`` structures when RDKit or the file is missing.
    """
    try:
        from rdkit import Chem
        from rdkit.Chem import AllChem
    except ImportError:
        return [molecule(name) for name in ("C6H6", "CH3CH2OH", "C4H4S")][:count]
    lines = SMILES_FILE.read_text().split() if SMILES_FILE.is_file() else []
    order = np.random.default_rng(seed).permutation(len(lines))
    found = []
    for k in order:
        mol = Chem.MolFromSmiles(lines[k])
        if mol is None:
            continue
        mol = Chem.AddHs(mol)
        if abs(mol.GetNumAtoms() - num_atoms) > tolerance:
            continue
        if AllChem.EmbedMolecule(mol, randomSeed=int(seed)) != 0:
            continue
        symbols = [atom.GetSymbol() for atom in mol.GetAtoms()]
        if not set(symbols) <= set(elements):
            continue
        atoms = Atoms(symbols, positions=mol.GetConformer().GetPositions())
        atoms.info["smiles"] = lines[k]
        found.append(atoms)
        if len(found) == count:
            break
    return found


def water_box(per_side: int, seed=0, periodic=True) -> Atoms:
    """Liquid-density water: ``per_side**3`` randomly oriented molecules on a cubic grid."""
    rng = np.random.default_rng(seed)
    template = molecule("H2O")
    template.translate(-template.get_center_of_mass())
    box = Atoms(cell=[per_side * WATER_SPACING] * 3, pbc=periodic)
    for site in np.ndindex(per_side, per_side, per_side):
        water = template.copy()
        water.rotate(rng.uniform(0, 360), rng.normal(size=3))
        water.translate((np.array(site) + 0.5) * WATER_SPACING)
        box += water
    return box


def moved(atoms, rng, amplitude=1e-3):
    """Shift every atom a little, as an MD step does, so no calculator can use a cache."""
    atoms.positions = atoms.positions + rng.normal(scale=amplitude, size=atoms.positions.shape)
    return atoms


def time_interleaved(calls: dict, repeats: int, warmup: int = 1) -> dict:
    """Median seconds per call of each ``name -> function()``, calls taken in turn.

    Interleaving exposes every function to the same background load, so the
    ratios of the medians are meaningful even where absolute times are not.
    """
    times = {name: [] for name in calls}
    for round_ in range(warmup + repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            if round_ >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: float(np.median(values)) for name, values in times.items()}


def matmul_peak_gflops(size=2048, repeats=5) -> float:
    """Achievable float32 GFLOP/s of this machine: a large square matmul."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * size ** 3 / best / 1e9


def _timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def force_call_flops(model, atoms_list) -> int:
    """Matmul FLOPs of one energy + force evaluation (``FlopCounterMode``).

    Elementwise work (gathers, products, scatter-adds) is not counted: it is
    memory traffic, not arithmetic, and it is what bounds a small model on CPU.
    """
    from torch.utils.flop_counter import FlopCounterMode

    from ase_distilled.batch import AtomsBatch
    from ase_distilled.neighbors import neighbor_list

    parameter = next(model.parameters())
    batch = AtomsBatch.from_atoms(atoms_list, device=parameter.device, dtype=parameter.dtype)
    edge_index, shifts = neighbor_list(batch, model.cutoff)
    positions = batch.positions.clone().requires_grad_(True)
    species = model.species_of(batch.numbers)
    # predict()'s autograd.grad trips FlopCounterMode's module hooks; backward() does not.
    with FlopCounterMode(display=False) as counter:
        energy = model(positions, species, batch.system, batch.cell, shifts, edge_index,
                       batch.num_systems)
        energy.sum().backward()
    return counter.get_total_flops()
