"""Energy and forces of one molecule with a student, then a geometry relaxation (ASE BFGS).

    python examples/01_single_point_and_relax.py [--model tiny] [--structure FILE]
"""

import argparse
from pathlib import Path

from ase.io import read
from ase.optimize import BFGS

from ase_distilled import DistilledCalculator

HERE = Path(__file__).parent


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="shipped name or checkpoint path")
    parser.add_argument("--structure", default=HERE / "paracetamol.xyz")
    parser.add_argument("--fmax", type=float, default=0.05, help="eV/Å")
    args = parser.parse_args()

    atoms = read(args.structure)
    atoms.calc = DistilledCalculator(args.model)
    print(f"{atoms.get_chemical_formula()}: E = {atoms.get_potential_energy():.4f} eV, "
          f"largest force {abs(atoms.get_forces()).max():.3f} eV/Å")

    relaxed = atoms.copy()
    relaxed.calc = atoms.calc
    converged = BFGS(relaxed, logfile="-").run(fmax=args.fmax, steps=300)
    moved = ((relaxed.positions - atoms.positions) ** 2).sum(axis=1).max() ** 0.5
    print(f"relaxed ({'converged' if converged else 'NOT converged'}): "
          f"E = {relaxed.get_potential_energy():.4f} eV, largest displacement {moved:.3f} Å")


if __name__ == "__main__":
    main()
