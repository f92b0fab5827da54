"""Evaluate many molecules at once with ``predict_batch`` and compare with one call each.

    python examples/04_batched_evaluation.py [--model tiny] [--copies 20]
"""

import argparse
import time

import numpy as np
from ase.build import molecule
from ase.collections import g2

from ase_distilled import DistilledCalculator


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="shipped name or checkpoint path")
    parser.add_argument("--copies", type=int, default=3, help="rattled copies per molecule")
    args = parser.parse_args()

    calc = DistilledCalculator(args.model)
    allowed = set(calc.model.elements)
    names = [name for name in g2.names
             if len(molecule(name)) > 2 and set(molecule(name).get_chemical_symbols()) <= allowed]
    structures = []
    for k, name in enumerate(names):
        for copy in range(args.copies):
            atoms = molecule(name)
            atoms.rattle(0.05, seed=1000 * k + copy)
            structures.append(atoms)
    num_atoms = sum(len(atoms) for atoms in structures)
    print(f"{len(structures)} structures ({len(names)} molecules from ASE's g2 set), "
          f"{num_atoms} atoms")

    start = time.perf_counter()
    batched = calc.predict_batch(structures)
    batched_s = time.perf_counter() - start

    start = time.perf_counter()
    single = []
    for atoms in structures:
        atoms.calc = calc
        single.append(atoms.get_forces())
    single_s = time.perf_counter() - start

    difference = max(np.abs(b["forces"] - f).max() for b, f in zip(batched, single, strict=True))
    print(f"predict_batch: {batched_s:.2f} s ({len(structures) / batched_s:.0f} structures/s)")
    print(f"one by one:    {single_s:.2f} s ({len(structures) / single_s:.0f} structures/s)")
    print(f"largest force difference between the two: {difference:.2e} eV/Å")


if __name__ == "__main__":
    main()
