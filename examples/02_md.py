"""MD with ``DistilledCalculator`` as a drop-in ASE calculator, then judge the trajectory.

Plain ASE Langevin dynamics writes a trajectory; ``ase_distilled.analysis`` reads
it back for stability, temperature and a figure.

    python examples/02_md.py [--model tiny] [--steps 1000] [--out runs/02_md]
"""

import argparse
from pathlib import Path

import numpy as np
from ase import units
from ase.io import read
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import Stationary, ZeroRotation

from ase_distilled import DistilledCalculator
from ase_distilled.analysis import MDRun
from ase_distilled.analysis.md import thermalize_momenta
from ase_distilled.analysis.plots import plot_md

HERE = Path(__file__).parent


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="shipped name or checkpoint path")
    parser.add_argument("--structure", default=HERE / "paracetamol.xyz")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--temperature", type=float, default=300.0, help="K")
    parser.add_argument("--timestep", type=float, default=0.5, help="fs")
    parser.add_argument("--out", type=Path, default=Path("runs/02_md"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    atoms = read(args.structure)
    atoms.calc = DistilledCalculator(args.model)
    thermalize_momenta(atoms, temperature_K=args.temperature, rng=np.random.default_rng(0))
    Stationary(atoms)
    ZeroRotation(atoms)
    interval = 10
    dyn = Langevin(atoms, args.timestep * units.fs, temperature_K=args.temperature,
                   friction=0.01 / units.fs, trajectory=str(args.out / "md.traj"),
                   loginterval=interval, logfile="-")
    dyn.run(args.steps)

    frames = read(args.out / "md.traj", index=":")
    run = MDRun(frames=frames, ensemble="nvt", temperature_K=args.temperature,
                timestep_fs=args.timestep,
                time_ps=np.arange(len(frames)) * interval * args.timestep / 1000)
    print(run.summary())
    print(f"figure: {plot_md(run, args.out / 'md.png')}")


if __name__ == "__main__":
    main()
