"""Acceptance of on-policy distillation on a chemotype outside MOSES (nitro-aromatics).

    python train/distill_series.py run        # specialise tiny on half the series (15 min)
    python train/distill_series.py evaluate   # judge it on the other half and on MOSES

The series is ``nci.py``'s: the first 20 usable nitro-aromatics of RDKit's
``NCI/first_5K.smi``. Even positions are given to ``ase-distilled distill``
(which itself holds a quarter of them out for its acceptance check); odd
positions are never seen. Judged against GFN2-xTB:

- on the unseen half: force RMSE at the teacher's minimum ("at rest", BFGS to
  0.05 eV/Å from the MMFF conformer) and on 10 teacher 300 K Langevin frames per
  molecule (every 20 steps of 0.5 fs from the minimum);
- the same on the given half (its minima are training structures for 8 of its 10
  molecules; its teacher frames are new): the accuracy on the molecules a user
  specialised the student to;
- on the 100 held-out MOSES test molecules (``unc_moses.h5`` of
  ``uncertainty.py``: MMFF conformer and 4 teacher 300 K frames each): general
  accuracy, which should not get worse by more than 10 %;
- 10 ps of NVT at 300 K on all 20 molecules: no bond changes by more than 0.5 Å.

Figures go to ``work/series/acceptance.json``.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent


def _halves(work: Path):
    sys.path.insert(0, str(HERE))
    import nci

    series = work / "nci_nitro_series.smi"
    if not series.is_file():
        nci.write(work)
    lines = series.read_text().split()
    (work / "series").mkdir(parents=True, exist_ok=True)
    train, test = work / "series" / "given.smi", work / "series" / "unseen.smi"
    train.write_text("".join(f"{s}\n" for s in lines[0::2]))
    test.write_text("".join(f"{s}\n" for s in lines[1::2]))
    return train, test


def run(work: Path, minutes: float, init: str):
    from ase_distilled.distill import distill

    given, _ = _halves(work)
    began = time.monotonic()
    report = distill([given], "gfn2-xtb", init, work / "series" / f"{init}-nitro.pt",
                     minutes=minutes)
    print(f"wall {time.monotonic() - began:.0f} s; stop {report['stop_reason']}")


def _teacher_frames(work: Path, smiles: Path):
    from ase_distilled.data import label, load
    from ase_distilled.data.structures import Sampling
    from ase_distilled.distill import DistillConfig, _relax, read_systems
    from ase_distilled.teachers import get_teacher

    path = work / "series" / f"{smiles.stem}.h5"
    if not path.is_file():
        teacher = get_teacher("gfn2-xtb")
        minima = []
        for atoms in read_systems([smiles]):
            frames = _relax(atoms, teacher, DistillConfig(),
                            work / "series" / f"{smiles.stem}-{atoms.info['system']}.h5")
            minimum = frames[-1].copy()
            minimum.calc = None
            minimum.info = {"id": atoms.info["system"], "molecule": atoms.info["molecule"]}
            minima.append(minimum)
        label(minima, teacher, path, sampling=Sampling(
            conformers=1, rattle=(), md_temperatures=(300.0,), md_frames=10, md_interval=20,
            seed=5))
    frames = load(path)
    return {"at rest": [a for a in frames if "/md" not in a.info["id"]],
            "teacher 300 K": [a for a in frames if "/md" in a.info["id"]]}


def _warned_share(model, groups) -> dict:
    """Per group, the share of structures whose largest per-atom force uncertainty passes
    the student's warning threshold."""
    import warnings

    from ase_distilled.calculator import DistilledCalculator

    calc = DistilledCalculator(model, device="cpu")
    threshold = float(calc.uncertainty.threshold)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {group: float(np.mean([r["forces_uncertainty"].max() > threshold
                                      for r in calc.predict_batch(atoms)]))
                for group, atoms in groups.items()}


def evaluate(work: Path, init: str, md_ps: float, series: str = "series"):
    from ase_distilled.analysis.md import BOND_BREAK_A, run_md_side_by_side
    from ase_distilled.calculator import DistilledCalculator
    from ase_distilled.data import load
    from ase_distilled.distill import read_systems
    from ase_distilled.registry import load_model
    from ase_distilled.training.trainer import evaluate as metrics_of

    given, unseen = _halves(work)
    groups = {f"unseen nitro {k}": v for k, v in _teacher_frames(work, unseen).items()}
    groups.update({f"given nitro {k}": v for k, v in _teacher_frames(work, given).items()})
    moses = load(work / "unc_moses.h5")
    groups["MOSES test at rest"] = [a for a in moses if a.info["source"] == "conformer"]
    groups["MOSES test 300 K"] = [a for a in moses if a.info["source"] == "md:300"]
    models = {init: load_model(init),
              "specialised": load_model(work / series / f"{init}-nitro.pt")}
    result = {name: {group: metrics_of(model, atoms) for group, atoms in groups.items()}
              for name, model in models.items()}
    for group in groups:
        before, after = (result[name][group]["force_rmse"] for name in models)
        print(f"{group:28s} force RMSE {before:.4f} -> {after:.4f} eV/Å "
              f"({after / before - 1:+.0%})", flush=True)
    result["warned"] = {name: _warned_share(model, groups) for name, model in models.items()}
    print("share of structures past the uncertainty threshold:", result["warned"], flush=True)
    systems = read_systems([given, unseen])
    steps = round(md_ps * 2000)
    began = time.monotonic()
    runs = run_md_side_by_side(systems, DistilledCalculator(models["specialised"]),
                               temperature_K=300.0, steps=steps, interval=100, seed=0)
    result["stability"] = {
        "ps": md_ps, "molecules": len(systems), "seconds": time.monotonic() - began,
        "stable": int(sum(r.bond_deviation.max() <= BOND_BREAK_A and r.error is None
                          for r in runs)),
        "max_bond_change_A": float(max(r.bond_deviation.max() for r in runs)),
        "broken": [a.info["system"] for a, r in zip(systems, runs)
                   if r.bond_deviation.max() > BOND_BREAK_A or r.error is not None]}
    report = json.loads((work / series / f"{init}-nitro.json").read_text())
    result["distill"] = {k: report[k] for k in ("stop_reason", "minutes_spent", "labelled")}
    result["distill"]["segments"] = len(report["segments"])
    (work / series / "acceptance.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result["stability"]), json.dumps(result["distill"]))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=["run", "evaluate"])
    parser.add_argument("--work", type=Path, default=HERE / "work")
    parser.add_argument("--init", default="tiny")
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument("--md-ps", type=float, default=10.0)
    parser.add_argument("--series", default="series",
                        help="folder in WORK of the run to evaluate")
    args = parser.parse_args(argv)
    if args.stage == "run":
        run(args.work, args.minutes, args.init)
    else:
        evaluate(args.work, args.init, args.md_ps, args.series)


if __name__ == "__main__":
    main()
