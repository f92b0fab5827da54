"""Force parity of every student against the teacher: one 6-panel figure per student and
the accuracy-vs-size figure (the figures the prototype produced).

    python examples/03_force_parity.py [--models small tiny ultra-tiny] [--teacher gfn2-xtb]
        [--weights W] [--out runs/03_parity]
"""

import argparse
from pathlib import Path

from ase_distilled import available_models
from ase_distilled.analysis import compare_forces, reference_labels
from ase_distilled.analysis.plots import plot_force_report, plot_model_comparison
from ase_distilled.data import Sampling, units_from_inputs
from ase_distilled.data.structures import rattled

HERE = Path(__file__).parent


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=available_models() or ["tiny"],
                        help="shipped names or checkpoint paths (default: all shipped)")
    parser.add_argument("--teacher", default="gfn2-xtb", help="teacher name, or a labelled .h5")
    parser.add_argument("--weights", help="Orb teachers: checkpoint path or 'random'")
    parser.add_argument("--molecules", type=int, default=4, help="from examples/molecules.smi")
    parser.add_argument("--out", type=Path, default=Path("runs/03_parity"))
    args = parser.parse_args()

    # conformers at rest and rattled copies: judge each distortion level, not just the pool
    sampling = Sampling(conformers=2, rattle=(0.05,), rattles=1)
    structures = []
    for unit in units_from_inputs([HERE / "molecules.smi"], limit=args.molecules):
        for atoms in unit.build(sampling):
            structures += [atoms, *rattled(atoms, sampling)]
    labelled, _ = reference_labels(args.teacher, structures, weights=args.weights,
                                   progress=True)

    reports = []
    for model in args.models:
        name = Path(model).stem if Path(model).is_file() else model
        at_rest = [atoms for atoms in labelled if atoms.info["source"] == "conformer"]
        rest = compare_forces(model, at_rest, name=name, reference_name=args.teacher)
        print(f"[at rest] {rest.summary()}\n")
        report = compare_forces(model, labelled, name=name, reference_name=args.teacher)
        print(f"[at rest + rattled 0.05 Å] {report.summary()}\n")
        report.write(args.out / name)
        print(f"figure: {plot_force_report(report, args.out / name / 'forces.png')}")
        reports.append(report)
    if len(reports) > 1:
        print(f"figure: {plot_model_comparison(reports, args.out / 'comparison.png')}")


if __name__ == "__main__":
    main()
