"""``ase-distilled SUBCOMMAND``: the command-line face of the package.

Each subcommand is an ``_add_<name>`` function that declares its arguments and
a ``_run_<name>`` function that calls the library; heavy imports stay inside
the ``_run_`` functions so that ``ase-distilled --help`` is instant.
"""

import argparse
import sys


def _one_torch_thread():
    """One torch thread for this process: small students run no faster on two, and on a
    busy 2-core machine two spin-wait (README main job, tiny, paracetamol: 220 vs 249
    steps/s idle, 49 vs 248 with one busy process beside it). The teacher keeps its own
    threads (tblite uses OpenMP's)."""
    import torch

    torch.set_num_threads(1)


def _add_list(subparsers):
    parser = subparsers.add_parser("list", help="list the shipped students")
    parser.set_defaults(func=_run_list)


def _run_list(args):
    from ase_distilled.registry import available_models, model_info

    names = available_models()
    if not names:
        print("No students are shipped in this installation.")
    for name in names:
        print(f"{name:12s} {model_info(name)['summary']}")


def _add_info(subparsers):
    parser = subparsers.add_parser("info", help="show a student's model card")
    parser.add_argument("model", help="shipped name or checkpoint path")
    parser.set_defaults(func=_run_info)


def _run_info(args):
    from ase_distilled.registry import WEIGHTS_DIR, available_models, model_info

    if args.model in available_models():
        card = WEIGHTS_DIR / model_info(args.model)["file"].replace(".pt", ".md")
        if card.is_file():
            print(card.read_text())
            return
    import json

    from ase_distilled.registry import load_model

    model = load_model(args.model)
    print(json.dumps({"model_config": model.config.to_dict(),
                      "parameters": model.num_parameters(),
                      "metadata": getattr(model, "metadata", {})}, indent=2, default=str))


def _add_compare(subparsers):
    parser = subparsers.add_parser(
        "compare", help="compare students' forces with a reference, atom by atom",
        description="Force and energy errors of one or more students against a reference "
                    "(a teacher or a labelled .h5 dataset). Writes metrics.json, per_atom.csv "
                    "and forces.png to DIR (one subfolder per model when there are several, "
                    "plus comparison.png), and the reference labels to DIR/reference.h5 for "
                    "reuse with --reference.")
    parser.add_argument("structures", nargs="*", metavar="STRUCTURES",
                        help="structure files readable by ASE (every frame is used); may be "
                             "omitted when --reference is a labelled .h5 dataset")
    parser.add_argument("--model", action="append", required=True,
                        help="shipped student name or checkpoint path; repeat to compare several")
    parser.add_argument("--reference", required=True,
                        help="teacher name (gfn2-xtb, an Orb name, emt, ...) or a labelled .h5")
    parser.add_argument("--weights", help="teacher weights: Orb checkpoint path or 'random'")
    parser.add_argument("--max-structures", type=int, help="use only the first N structures")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--out", required=True, metavar="DIR")
    parser.set_defaults(func=_run_compare)


def _run_compare(args):
    from pathlib import Path

    from ase_distilled.analysis import compare_forces, reference_labels
    from ase_distilled.analysis.plots import plot_force_report, plot_model_comparison
    from ase_distilled.calculator import DistilledCalculator

    out = Path(args.out)
    structures = _read_structures(args.structures)[:args.max_structures]
    reference = args.reference
    if Path(reference).suffix not in (".h5", ".hdf5"):
        from ase_distilled.teachers import get_teacher

        reference = get_teacher(reference, weights=args.weights, device=args.device)
    labelled, _ = reference_labels(reference, structures, progress=True)
    if structures:
        try:
            from ase_distilled.data import save

            out.mkdir(parents=True, exist_ok=True)
            save(labelled, out / "reference.h5", teacher=reference)
            print(f"Reference labels saved: reuse them with --reference {out / 'reference.h5'}")
        except ImportError as error:  # the cache is a convenience, not the result
            print(f"(reference labels not cached: {error})")
    reports = []
    for model in args.model:
        name = Path(model).stem if Path(model).is_file() else model
        report = compare_forces(DistilledCalculator(model, device=args.device), labelled,
                                name=name, reference_name=args.reference, progress=True)
        folder = out / name if len(args.model) > 1 else out
        report.write(folder)
        plot_force_report(report, folder / "forces.png")
        print(report.summary())
        print(f"Wrote {folder}/metrics.json, per_atom.csv, forces.png\n")
        reports.append(report)
    if len(reports) > 1:
        print(f"Wrote {plot_model_comparison(reports, out / 'comparison.png')}")


def _read_structures(paths) -> list:
    from pathlib import Path

    from ase.io import read

    structures = []
    for path in paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f"Structure file {path!r} does not exist.")
        structures += read(path, index=":")
    return structures


def _add_md(subparsers):
    parser = subparsers.add_parser(
        "md", help="run MD with a student and judge the trajectory",
        description="Molecular dynamics with ASE's Langevin (nvt) or velocity Verlet (nve) "
                    "integrator. Writes md.traj, md.extxyz, metrics.json and md.png to DIR and "
                    "prints stability (time until a bond changes by 0.5 Å), NVE energy drift, "
                    "temperature and speed. With --reference, the teacher runs the same MD "
                    "(h(r) is compared) and its forces are compared along the model's "
                    "trajectory.")
    parser.add_argument("structure", metavar="STRUCTURE",
                        help="a structure file readable by ASE (first frame), or a SMILES "
                             "string (a 3-D conformer is embedded with RDKit, then MMFF-relaxed)")
    parser.add_argument("--model", default="tiny",
                        help="shipped student name or checkpoint path (default: tiny)")
    parser.add_argument("--ensemble", choices=["nvt", "nve"], default="nvt")
    parser.add_argument("--temperature", type=float, default=300.0, metavar="K",
                        help="thermostat (nvt) or initial velocity (nve) temperature")
    parser.add_argument("--timestep", type=float, default=0.5, metavar="FS")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--interval", type=int, default=10,
                        help="record a frame every N steps (default 10)")
    parser.add_argument("--friction", type=float, default=0.01, metavar="1/FS",
                        help="Langevin friction (nvt)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reference", help="teacher name to run and compare against")
    parser.add_argument("--weights", help="teacher weights: Orb checkpoint path or 'random'")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--out", required=True, metavar="DIR")
    parser.set_defaults(func=_run_md)


def _run_md(args):
    import json
    from pathlib import Path

    from ase_distilled.analysis import compare_forces, run_md
    from ase_distilled.calculator import DistilledCalculator

    _one_torch_thread()
    atoms = _structure_from_argument(args.structure)
    calc = DistilledCalculator(args.model, device=args.device)
    calc.check_atoms(atoms)
    settings = dict(ensemble=args.ensemble, temperature_K=args.temperature,
                    timestep_fs=args.timestep, steps=args.steps, interval=args.interval,
                    friction_per_fs=args.friction, seed=args.seed, out_dir=args.out)
    print(f"Model {args.model}: {calc.model.num_parameters():,} parameters on "
          f"{calc.device}, {atoms.get_chemical_formula()} ({len(atoms)} atoms)")
    print(f"{args.ensemble.upper()} at {args.temperature:g} K, {args.timestep:g} fs x "
          f"{args.steps} steps = {args.timestep * args.steps / 1000:g} ps")
    run = run_md(atoms, calc, name="md", **settings)
    results, reference = {"model": args.model}, None
    if args.reference:
        from ase_distilled.teachers import get_teacher

        teacher = get_teacher(args.reference, weights=args.weights, device=args.device)
        print(f"Reference: the same MD with {args.reference}")
        reference = run_md(atoms, teacher, name="reference", **settings)
        report = compare_forces(calc, teacher, run.frames, name=args.model,
                                reference_name=args.reference, progress=True)
        report.write(Path(args.out) / "forces_along_trajectory")
        results["reference"] = {"name": args.reference, "md": reference.metrics()}
        results["forces_along_trajectory"] = report.metrics["forces"]
    results["md"] = run.metrics(reference)
    (Path(args.out) / "metrics.json").write_text(json.dumps(results, indent=2,
                                                            ensure_ascii=False))
    print(f"\nSummary ({args.model}):\n{run.summary(reference)}")
    if args.reference:
        f = results["forces_along_trajectory"]
        print(f"forces       vs {args.reference} along the trajectory: R² {f['r2']:.3f}, "
              f"MAE {f['mae']:.3f} eV/Å, mean angle {f['angle_deg']:.1f}°")
    written = [*run.files.values(), Path(args.out) / "metrics.json"]
    try:
        from ase_distilled.analysis.plots import plot_md

        written.append(plot_md(run, Path(args.out) / "md.png", reference=reference))
    except ImportError as error:
        print(f"(no figure: {error})")
    print("Wrote " + ", ".join(str(path) for path in written))
    return 0 if run.error is None else 1


def _structure_from_argument(text):
    """A structure file (first frame), or else a SMILES string embedded in 3-D by RDKit.

    SMILES are accepted so that ``ase-distilled md "CC(=O)Nc1ccc(O)cc1"`` needs no
    file; the conformer is built as the labelling pipeline builds them.
    """
    from pathlib import Path

    from ase.io import read

    if Path(text).is_file():
        return read(text, index=0)
    from ase_distilled.data.structures import conformers_from_smiles

    try:
        return conformers_from_smiles(text)[0]
    except ValueError:
        raise ValueError(f"STRUCTURE {text!r} is neither an existing file nor a SMILES string "
                         f"RDKit can embed in 3-D.") from None


def _add_label(subparsers):
    from ase_distilled.data.structures import Sampling

    default = Sampling()
    parser = subparsers.add_parser(
        "label", help="sample structures and label them with a teacher into an HDF5 dataset",
        description="Generate structures (SMILES conformers, files, crystals, rattles, teacher "
                    "MD) and label them. Crash-safe: rerun the same command to resume.")
    parser.add_argument("inputs", nargs="*", metavar="INPUT",
                        help=".smi files (one SMILES a line) or files ASE reads")
    parser.add_argument("--teacher", required=True,
                        help="orb-v3-... (any Orb pretrained name), gfn2-xtb, emt or lj")
    parser.add_argument("--weights", help="Orb: local checkpoint PATH, or 'random'")
    parser.add_argument("--device", help="Orb: torch device (default: cuda if available)")
    parser.add_argument("--out", required=True, help="HDF5 dataset to write or resume")
    parser.add_argument("--shard", metavar="i/n",
                        help="label only every n-th unit from the i-th (0 <= i < n)")
    parser.add_argument("--bulk", nargs="+", default=[], metavar="CRYSTAL",
                        help="crystals for ase.build.bulk, e.g. Cu Si NaCl:rocksalt:5.64")
    parser.add_argument("--limit", type=int, help="use only the first N units of each file")
    group = parser.add_argument_group("sampling")
    group.add_argument("--conformers", type=int, default=default.conformers,
                       help="conformers per SMILES / strained cells per crystal "
                            "(default: %(default)s)")
    group.add_argument("--rattle", type=float, nargs="*", default=list(default.rattle),
                       metavar="Å", help="rattle amplitudes (default: %(default)s)")
    group.add_argument("--rattles", type=int, default=default.rattles,
                       help="rattled copies per amplitude (default: %(default)s)")
    group.add_argument("--stretch", type=float, nargs="*", default=list(default.stretch),
                       metavar="Å", help="lengthen one bond to hydrogen by each of these, "
                                         "one copy each (default: none)")
    group.add_argument("--push", type=float, nargs="*", default=list(default.push),
                       metavar="DEGREES", help="bend one hydrogen toward a nearby atom by "
                                               "each of these, one copy each (default: none)")
    group.add_argument("--md-temperatures", type=float, nargs="*", metavar="K",
                       default=list(default.md_temperatures),
                       help="teacher-driven Langevin MD temperatures (default: none)")
    group.add_argument("--md-frames", type=int, default=default.md_frames,
                       help="MD snapshots per run (default: %(default)s)")
    group.add_argument("--md-interval", type=int, default=default.md_interval,
                       help="MD steps between snapshots (default: %(default)s)")
    group.add_argument("--md-timestep", type=float, default=default.md_timestep,
                       metavar="FS", help="(default: %(default)s)")
    group.add_argument("--max-strain", type=float, default=default.max_strain,
                       help="crystal strain amplitude (default: %(default)s)")
    group.add_argument("--seed", type=int, default=default.seed)
    parser.add_argument("--batch-size", type=int, default=16,
                        help="structures per teacher call for batched teachers (Orb)")
    parser.add_argument("--chunk-size", type=int, default=256,
                        help="structures per journal chunk: at most this much work is lost "
                             "to a crash (default: %(default)s)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=_run_label)


def _run_label(args):
    from ase_distilled.data import Sampling, label

    sampling = Sampling(
        conformers=args.conformers, rattle=tuple(args.rattle), rattles=args.rattles,
        stretch=tuple(args.stretch), push=tuple(args.push),
        md_temperatures=tuple(args.md_temperatures),
        md_frames=args.md_frames, md_interval=args.md_interval, md_timestep=args.md_timestep,
        max_strain=args.max_strain, seed=args.seed)
    result = label(args.inputs, args.teacher, args.out, sampling=sampling, shard=args.shard,
                   bulk=args.bulk, limit=args.limit, weights=args.weights, device=args.device,
                   batch_size=args.batch_size, chunk_size=args.chunk_size,
                   progress=not args.quiet)
    print(f"{result['path']}: {result['structures']} structures; {result['units']} units, "
          f"{result['skipped']} already done, {result['failed']} failed; "
          f"{result['nonfinite']} structures dropped for non-finite labels")


def _add_dataset(subparsers):
    parser = subparsers.add_parser("dataset", help="inspect or merge labelled HDF5 datasets")
    actions = parser.add_subparsers(dest="action", required=True)
    info = actions.add_parser("info", help="counts, elements, energy/force statistics, teacher")
    info.add_argument("file")
    merge = actions.add_parser("merge", help="merge datasets (e.g. label shards) into one")
    merge.add_argument("files", nargs="+")
    merge.add_argument("--out", required=True)
    parser.set_defaults(func=_run_dataset)


def _run_dataset(args):
    from ase_distilled.data import merge, summary

    if args.action == "merge":
        result = merge(args.files, args.out)
        state = "complete" if result["complete"] else "INCOMPLETE (shards missing/unfinished)"
        print(f"{result['path']}: {result['structures']} structures, {state}")
        return
    info = summary(args.file)
    teacher = info["teacher"]
    print(f"{info['path']}  (created {info['created']}"
          f"{', shard ' + info['shard'] if info['shard'] else ''}"
          f"{'' if info['complete'] else ', INCOMPLETE'})")
    print(f"teacher     {teacher['name']} ({teacher['package']} {teacher['version']}"
          f"{', weights ' + teacher['weights'] if teacher['weights'] else ''})")
    print(f"structures  {info['structures']}  atoms {info['atoms']}  "
          f"molecules {info['molecules']}")
    print("sources     " + ", ".join(f"{k} {v}" for k, v in info["sources"].items()))
    print("elements    " + ", ".join(f"{k} {v}" for k, v in info["elements"].items()))
    for name, unit in (("energy", "eV"), ("energy_per_atom", "eV/atom"),
                       ("force_norm", "eV/Å")):
        if info[name]:
            s = info[name]
            print(f"{name:16s}mean {s['mean']:.4g}  std {s['std']:.4g}  min {s['min']:.4g}  "
                  f"max {s['max']:.4g} {unit}")
    if info["pending_chunks"]:
        print(f"journal     {info['pending_chunks']} chunk(s) not yet consolidated: rerun the "
              "label command to finish")


def _add_export(subparsers):
    parser = subparsers.add_parser(
        "export", help="export a student to TorchScript or ONNX (energy + forces)",
        description="Export one student (--format, --quantize) or every shipped one (--all: "
                    "TorchScript, ONNX and INT8 ONNX each, with parity.json).")
    parser.add_argument("model", nargs="?", help="shipped name or checkpoint path")
    parser.add_argument("--all", action="store_true", help="export every shipped student")
    parser.add_argument("--format", choices=["torchscript", "onnx"], default="torchscript")
    parser.add_argument("--quantize", choices=["int8"],
                        help="INT8 matrix products (ONNX only): faster on CPU, less accurate")
    parser.add_argument("--out", required=True, help="output file (a folder with --all)")
    parser.set_defaults(func=_run_export)


def _run_export(args):
    from ase_distilled import export

    if args.all == bool(args.model):
        raise ValueError("give either a model (name or checkpoint path) or --all, not both "
                         "or neither.")
    if args.all:
        if args.quantize or args.format != "torchscript":
            raise ValueError("--all writes every format (TorchScript, ONNX, INT8 ONNX); "
                             "drop --format/--quantize.")
        for name, files in export.export_all(args.out).items():
            for file, numbers in files.items():
                print(f"{name:12s} {file:24s} " + _format_parity(numbers))
        return
    path = export.export(args.model, args.out, args.format, args.quantize)
    from ase_distilled.registry import load_model

    model = load_model(args.model)
    structures = export.reference_structures(model.elements)
    print(f"wrote {path}")
    if structures:
        print("parity vs the eager model: " + _format_parity(export.parity(model, path,
                                                                           structures)))


def _format_parity(numbers):
    return "  ".join(f"{key} {value:.1e}" for key, value in numbers.items())


def _add_train(subparsers):
    parser = subparsers.add_parser(
        "train", help="distill a labelled dataset into a student",
        description="Train a student on a labelled HDF5 dataset (split by group, EMA, "
                    "early stopping, checkpoint every epoch). Under torchrun, every process "
                    "trains on a shard.")
    parser.add_argument("--data", required=True, nargs="+",
                        help="labelled HDF5 dataset(s), trained on together")
    parser.add_argument("--out", required=True, help="student checkpoint to write, e.g. tiny.pt")
    from ase_distilled.models.painn import STUDENT_SIZES

    parser.add_argument("--size", choices=list(STUDENT_SIZES),
                        help="student size (default: the config's, else tiny)")
    parser.add_argument("--config", help="TOML training settings, e.g. train/configs/tiny.toml")
    parser.add_argument("--epochs", type=int, help="maximum number of epochs")
    parser.add_argument("--max-time", type=float, metavar="MINUTES",
                        help="stop after the epoch that would overrun this budget")
    again = parser.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="continue from OUT's training state if there is one")
    again.add_argument("--overwrite", action="store_true",
                       help="train afresh and replace OUT if it exists (without this or "
                            "--resume, an existing OUT is an error)")
    parser.add_argument("--init", metavar="MODEL",
                        help="fine-tune this student (shipped name or checkpoint) instead of "
                             "starting from random weights")
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    parser.set_defaults(func=_run_train)


def _run_train(args):
    import logging

    from ase_distilled.training import (
        TrainConfig,
        distributed_from_env,
        rank_and_world,
        train_from_file,
    )

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config = TrainConfig.from_toml(args.config, size=args.size, epochs=args.epochs,
                                   max_time=args.max_time, device=args.device,
                                   init_from=args.init)
    with distributed_from_env():
        try:
            model, _ = train_from_file(args.data, args.out, config, resume=args.resume,
                                       overwrite=args.overwrite)
        except FileExistsError as error:  # main reports ValueErrors as clean CLI errors
            raise ValueError(str(error)) from None
        if rank_and_world()[0] != 0:
            return
    metrics = model.metadata["metrics"]
    for split in ("val", "test"):
        if split in metrics:
            print(f"{split}: force MAE {metrics[split]['force_mae']:.4f} eV/Å, "
                  f"R² {metrics[split]['force_r2']:.3f}")


def _add_distill(subparsers):
    parser = subparsers.add_parser(
        "distill", help="specialise a student to your molecules (on-policy, with a teacher)",
        description="On-policy distillation: the student runs MD on your systems, the teacher "
                    "labels the frames it is least sure of, the student is fine-tuned on them "
                    "(with a replay of its own training chemistry), in segments until the "
                    "held-out systems pass or the time is spent. Resumable: rerun the same "
                    "command after any interruption.")
    parser.add_argument("structures", nargs="+",
                        help="SMILES files (.smi) or structure files ASE reads (sdf, xyz, ...); "
                             "each molecule or frame is one system")
    parser.add_argument("--teacher", required=True,
                        help="teacher name, e.g. gfn2-xtb or orb-v3-conservative-omol")
    parser.add_argument("--weights", help="Orb teacher: local checkpoint file (or 'random')")
    parser.add_argument("--init", default="tiny",
                        help="student to start from: shipped name or checkpoint (default tiny)")
    parser.add_argument("--out", required=True, help="specialised student checkpoint to write")
    parser.add_argument("--minutes", type=float, default=15.0,
                        help="wall-time budget, counted across interruptions (default 15)")
    parser.add_argument("--work", help="work directory (default OUT.work); reuse it to resume")
    parser.add_argument("--target", type=float, metavar="EV_PER_A",
                        help="held-out force RMSE to accept (default 0.04 eV/Å)")
    parser.add_argument("--final-md-ps", type=float,
                        help="NVT ps per system of the final stability check (default 2)")
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    parser.set_defaults(func=_run_distill)


def _run_distill(args):
    import dataclasses

    from ase_distilled.distill import DistillConfig, distill

    _one_torch_thread()
    overrides = {"target_rmse": args.target, "final_md_ps": args.final_md_ps}
    config = dataclasses.replace(DistillConfig(),
                                 **{k: v for k, v in overrides.items() if v is not None})
    report = distill(args.structures, args.teacher, args.init, args.out, minutes=args.minutes,
                     work=args.work, weights=args.weights, device=args.device, config=config)
    print(summarise_distill(report))


def summarise_distill(report: dict) -> str:
    """A few lines on a distillation run: errors before and after, stability, time."""
    lines = []
    final = report["segments"][-1]["metrics"] if report["segments"] else {}
    for name, before in report["baseline"]["metrics"].items():
        after = final.get(name, {}).get("force_rmse")
        lines.append(f"{name}: force RMSE {before['force_rmse']:.3f} -> "
                     + (f"{after:.3f} eV/Å" if after is not None else "not measured"))
    stability = report["stability"]
    lines.append(f"{len(report['segments'])} segments, {report['labelled']['on_policy']} "
                 f"on-policy frames labelled; stop: {report['stop_reason']}; "
                 f"{report['minutes_spent']:.1f} of {report['minutes_budget']:g} min")
    lines.append(f"NVT 300 K {stability['ps']:g} ps: {stability['stable']}/"
                 f"{stability['systems']} systems stable")
    if report.get("uncertainty"):
        lines.append(f"uncertainty vs error, Spearman over structures: "
                     f"{report['uncertainty']['spearman_structures']:.2f}")
    return "\n".join(lines)


def _add_bench(subparsers):
    parser = subparsers.add_parser(
        "bench", help="time students against teachers side by side",
        description="Seconds per energy + force call, positions changing every call as in "
                    "MD, for students and teachers timed in turn (medians over repeats). The "
                    "full comparison is benchmarks/compare.py in the source repository.")
    parser.add_argument("--model", action="append",
                        help="shipped name, checkpoint path, or a size (small, tiny, "
                             "ultra-tiny) for a random-weights student; repeat for several "
                             "(default: tiny)")
    parser.add_argument("--teacher", action="append",
                        help="teacher name (emt, gfn2-xtb, an Orb name); repeat (default: emt)")
    parser.add_argument("--weights", help="Orb weights: checkpoint path or 'random'")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.set_defaults(func=_run_bench)


def _run_bench(args):
    import time

    import numpy as np
    import torch
    from ase.build import molecule

    from ase_distilled import DistilledCalculator, build_student
    from ase_distilled.models.painn import STUDENT_SIZES
    from ase_distilled.registry import available_models
    from ase_distilled.teachers import get_teacher

    calcs = {}
    for name in args.model or ["tiny"]:
        random_size = name in STUDENT_SIZES and name not in available_models()
        model = build_student(name) if random_size else name
        calcs[f"{name} (random weights)" if random_size else name] = DistilledCalculator(
            model, device=args.device)
    for name in args.teacher or ["emt"]:
        calcs[name] = get_teacher(name, weights=args.weights if name.startswith("orb") else None)
    water = molecule("H2O", cell=[3.104] * 3, pbc=True)  # liquid density, periodic
    systems = {"benzene": molecule("C6H6"), "water 81": water * (3, 3, 3),
               "water 1029": water * (7, 7, 7)}
    print(f"{torch.get_num_threads()} torch threads; median seconds per force call")
    print(f"{'calculator':32s}" + "".join(f"{label:>14s}" for label in systems))
    rng = np.random.default_rng(0)
    medians = {name: {} for name in calcs}
    for label, atoms in systems.items():
        copies = {name: atoms.copy() for name in calcs}
        times = {name: [] for name in calcs}
        for round_ in range(args.repeats + 1):  # interleaved: all share the same load
            for name, calc in calcs.items():
                copy = copies[name]
                copy.positions += rng.normal(scale=1e-3, size=copy.positions.shape)
                copy.calc = calc
                start = time.perf_counter()
                copy.get_forces()
                if round_:  # the first round warms up caches and neighbour lists
                    times[name].append(time.perf_counter() - start)
        for name in calcs:
            medians[name][label] = float(np.median(times[name]))
    for name in calcs:
        print(f"{name:32s}" + "".join(f"{medians[name][label]:14.4g}" for label in systems))


# Subcommands in the order `--help` lists them.
_COMMANDS = [_add_list, _add_info, _add_label, _add_dataset, _add_compare, _add_md, _add_train,
             _add_distill, _add_export, _add_bench]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ase-distilled",
        description="Small, fast PaiNN students distilled from large force fields.",
    )
    parser.add_argument("--traceback", action="store_true",
                        help="on an error, show the full Python traceback, not one line")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for add in _COMMANDS:
        add(subparsers)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except (ValueError, KeyError, FileNotFoundError, ImportError) as error:
        if args.traceback:
            raise
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"ase-distilled {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
