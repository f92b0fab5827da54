"""Fit and calibrate the shipped students' uncertainty; measure how well it ranks errors.

    python train/uncertainty.py label      # teacher labels of the four sets below (resumable)
    python train/uncertainty.py ship       # fit + calibrate small, tiny, ultra-tiny; write them

Sets (GFN2-xTB labels, in ``train/work``):

- ``unc_fit``: 200 molecules of the students' own training part (``train.smi``
  of ``recipe.py molecules``), 2 conformers each, rattled 0.02 and 0.05 Å, and
  teacher Langevin frames at 300 and 500 K: the training distribution, whose
  features the latent distance is fitted to (no labels needed there; the fit
  reports its errors).
- ``unc_moses``: the 100 held-out MOSES test molecules (scaffolds never trained
  on), 1 conformer and 4 teacher frames at 300 K: in-distribution errors, and
  the structures whose 99th percentile sets the warning threshold.
- ``unc_nci_calibration``: 150 NCI molecules (``nci.py``), sampled as
  ``unc_moses``: other chemistry, for the slope of the calibration.
- ``unc_nci_measure``: 150 other NCI molecules: where the ranking is measured
  (never used to fit or calibrate).

``ship`` writes the calibrated students into ``ase_distilled/weights`` (their
weights unchanged), regenerates their cards and index, and writes
``work/uncertainty.json`` with the measured figures.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
SETS = {
    "unc_fit": ("train.smi", 200, dict(conformers=2, rattle=(0.02, 0.05), rattles=1,
                                       md_temperatures=(300.0, 500.0), md_frames=3,
                                       md_interval=10, seed=2)),
    "unc_moses": ("test.smi", 100, dict(conformers=1, rattle=(), md_temperatures=(300.0,),
                                        md_frames=4, md_interval=20, seed=3)),
    "unc_nci_calibration": ("nci_calibration.smi", 150, None),
    "unc_nci_measure": ("nci_measure.smi", 150, None),
}
# What MD visits: structures at rest and teacher frames at 300 K set the threshold.
AT_MD = ("conformer", "md:300")


def _sampling(name):
    from ase_distilled.data.structures import Sampling

    settings = SETS[name][2] or SETS["unc_moses"][2]
    return Sampling(**settings)


def label_sets(work: Path, teacher: str = "gfn2-xtb"):
    import sys

    from ase_distilled.data import label

    sys.path.insert(0, str(HERE))
    import nci
    import recipe

    if not (work / "train.smi").is_file():
        recipe.select_molecules(work)
    if not (work / "nci_measure.smi").is_file():
        nci.write(work)
    for name, (source, count, _) in SETS.items():
        label([work / source], teacher, work / f"{name}.h5", sampling=_sampling(name),
              limit=count)


def per_molecule_spearman(model, structures) -> dict:
    """Spearman correlation of predicted and true force RMSE: over molecules (each
    the RMS over its structures) and over structures."""
    from scipy.stats import spearmanr

    from ase_distilled.models.uncertainty import structure_errors

    errors = structure_errors(model, structures)
    true, predicted = errors["true_rmse"], errors["predicted_rmse"]
    owner = np.array([atoms.info["molecule"] for atoms in structures])
    molecules = sorted(set(owner))

    def per_molecule(values):
        return [np.sqrt(np.mean(values[owner == m] ** 2)) for m in molecules]

    return {"molecules": len(molecules), "structures": len(structures),
            "spearman_molecules": float(spearmanr(per_molecule(predicted),
                                                  per_molecule(true)).statistic),
            "spearman_structures": float(spearmanr(predicted, true).statistic),
            "force_rmse": float(np.sqrt(np.mean(true ** 2))),
            "warned_share": float(np.mean(errors["largest"]
                                          > float(model.uncertainty.threshold)))}


def attach(model, work: Path) -> dict:
    """Fit ``model``'s latent distance on ``unc_fit``, calibrate it on held-out MOSES and
    NCI calibration molecules, and measure it on the NCI measure set."""
    from ase_distilled.data import load
    from ase_distilled.models.uncertainty import calibrate, fit

    sets = {name: load(work / f"{name}.h5") for name in SETS}
    model.uncertainty = fit(model, sets["unc_fit"])
    calibration = sets["unc_moses"] + sets["unc_nci_calibration"]
    inside = [a.info["source"] in AT_MD for a in sets["unc_moses"]] + [False] * len(
        sets["unc_nci_calibration"])
    report = {"calibration": calibrate(model, model.uncertainty, calibration, inside)}
    for name, label in (("unc_moses", "held-out MOSES scaffolds"),
                        ("unc_nci_measure", "NCI, other chemistry")):
        at_md = [a for a in sets[name] if a.info["source"] in AT_MD]
        report[label] = per_molecule_spearman(model, at_md)
    return report


def ship(work: Path, sizes=("small", "tiny", "ultra-tiny")):
    from ase_distilled.checkpoint import save_checkpoint
    from ase_distilled.model_card import render_model_card
    from ase_distilled.registry import WEIGHTS_DIR, file_sha256, load_model

    results = {}
    for size in sizes:
        began = time.monotonic()
        model = load_model(size)
        report = attach(model, work)
        report["seconds"] = time.monotonic() - began
        model.metadata.setdefault("metrics", {})["uncertainty"] = report
        results[size] = report
        path = save_checkpoint(model, WEIGHTS_DIR / f"{size}.pt")
        (WEIGHTS_DIR / f"{size}.md").write_text(render_model_card(size, model))
        index_path = WEIGHTS_DIR / "models.json"
        index = json.loads(index_path.read_text())
        index[size]["sha256"] = file_sha256(path)
        index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        print(size, json.dumps(report, indent=1))
    (work / "uncertainty.json").write_text(json.dumps(results, indent=1))
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=["label", "ship"])
    parser.add_argument("--work", type=Path, default=HERE / "work")
    parser.add_argument("--size", action="append", help="only these students (repeatable)")
    args = parser.parse_args(argv)
    if args.stage == "label":
        label_sets(args.work)
    else:
        ship(args.work, tuple(args.size or ("small", "tiny", "ultra-tiny")))


if __name__ == "__main__":
    main()
