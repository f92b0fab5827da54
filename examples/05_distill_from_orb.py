"""Distill Orb into a student end to end: label molecules with Orb, train, compare, run MD.

Orb's published weights download on first use; without network pass
``--weights PATH`` (a local Orb checkpoint), or ``--weights random`` to see the
mechanics with Orb's architecture and random weights (then the student learns
a meaningless teacher, quickly).

    python examples/05_distill_from_orb.py --weights random [--size tiny] [--epochs 20]
"""

import argparse
from pathlib import Path

from ase.io import read

from ase_distilled import DistilledCalculator
from ase_distilled.analysis import compare_forces, run_md
from ase_distilled.analysis.plots import plot_force_report, plot_md
from ase_distilled.data import Sampling, label, load, split_by_group
from ase_distilled.training import TrainConfig, train_from_file

HERE = Path(__file__).parent


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="orb-v3-conservative-inf-omat")
    parser.add_argument("--weights", help="local Orb checkpoint, or 'random'")
    parser.add_argument("--molecules", type=int, default=6, help="from examples/molecules.smi")
    parser.add_argument("--size", default="tiny", choices=["small", "tiny", "ultra-tiny"])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--md-steps", type=int, default=200)
    parser.add_argument("--out", type=Path, default=Path("runs/05_distill"))
    args = parser.parse_args()

    # 1. label: conformers, rattles and short teacher MD (off-equilibrium data keeps MD stable)
    data = args.out / "labels.h5"
    sampling = Sampling(conformers=2, rattle=(0.02, 0.05, 0.1), md_temperatures=(400.0,),
                        md_frames=2, md_interval=5)
    label([HERE / "molecules.smi"], args.teacher, data, sampling=sampling,
          weights=args.weights, limit=args.molecules)

    # 2. train: split by molecule, so that test molecules are never seen in training
    config = TrainConfig(size=args.size, epochs=args.epochs, split_fractions=[0.6, 0.2, 0.2])
    student, _ = train_from_file(data, args.out / f"{args.size}.pt", config,
                                 overwrite=True)  # a rerun trains afresh

    # 3. compare with the teacher on the held-out molecules
    test = split_by_group(load(data), config.split_fractions, config.split_key, config.seed)[2]
    if not test:
        raise SystemExit("No held-out molecules: raise --molecules.")
    report = compare_forces(DistilledCalculator(student), test, name=args.size,
                            reference_name=args.teacher)
    print(report.summary())
    report.write(args.out / "test")
    print(f"figure: {plot_force_report(report, args.out / 'test' / 'forces.png')}")

    # 4. run MD with the new student
    run = run_md(read(HERE / "paracetamol.xyz"), DistilledCalculator(student),
                 steps=args.md_steps, out_dir=args.out / "md")
    print(run.summary())
    print(f"figure: {plot_md(run, args.out / 'md' / 'md.png')}")


if __name__ == "__main__":
    main()
