"""Students, teachers and peers side by side; writes results/compare.{json,md} and a plot.

Run from the repository root (schnetpack, when wanted, from its own venv; see README.md)::

    python benchmarks/compare.py                      # everything, ~1 h on 2 busy cores
    python benchmarks/compare.py --sections latency --repeats 5

Sections: ``latency`` (time per force call vs atoms, every calculator), ``batch``
(predict_batch of 64 molecules vs 64 calls), ``scaling`` (81 -> 10,125 atoms of
liquid water, with peak memory), ``flops`` (FLOPs per call, achieved FLOP/s, matmul
peak), ``floor`` (MD step vs ASE's EMT), ``optim`` (each optimisation on and off).
Students have random weights: speed does not depend on the weight values.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from ase import units
from ase.calculators.emt import EMT
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
from ase.md.verlet import VelocityVerlet
from bench_systems import (
    drug_like,
    force_call_flops,
    machine,
    matmul_peak_gflops,
    moved,
    peak_rss_mb,
    time_interleaved,
    water_box,
)

from ase_distilled import DistilledCalculator, build_student
from ase_distilled.batch import AtomsBatch
from ase_distilled.neighbors import neighbor_list

SIZES = ("small", "tiny", "ultra-tiny")
ORB_NAMES = ("orb-v3-conservative-inf-omat", "orb-v3-direct-20-omat")
ORB_MAX_ATOMS = 100  # Orb conservative takes ~10 s a call beyond this here
BASELINE_REV = "50aa05c"  # the student as first committed, before this work
ROOT = Path(__file__).resolve().parent.parent
REUSE_MEMORY = True  # --malloc-defaults: students leave glibc's malloc as it is (the "before")


def student(size, seed=0):
    torch.manual_seed(seed)
    return build_student(size, elements=["H", "C", "N", "O", "F", "S", "Cl", "Br"])


def student_calc(size, **options):
    options.setdefault("reuse_memory", REUSE_MEMORY)
    return DistilledCalculator(student(size), device="cpu", **options)


def torchscript_calc(size, scratch):
    from ase_distilled.export import export_torchscript

    path = export_torchscript(student(size), Path(scratch) / f"{size}.pt")
    return DistilledCalculator(str(path), device="cpu", reuse_memory=REUSE_MEMORY)


def schnetpack_calc(size, scratch):
    """schnetpack's PaiNN with the student's widths, through its SpkCalculator (or None)."""
    import torch.utils.data.dataloader as dataloader

    dataloader.T_co = dataloader._T_co  # schnetpack 2.0.4 imports a name torch 2.13 renamed
    os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        import schnetpack as spk
    except ImportError:
        return None
    config = student(size).config
    torch.manual_seed(0)
    representation = spk.representation.PaiNN(
        n_atom_basis=config.hidden, n_interactions=config.num_interactions,
        radial_basis=spk.nn.GaussianRBF(n_rbf=config.num_rbf, cutoff=config.cutoff),
        cutoff_fn=spk.nn.CosineCutoff(config.cutoff))
    model = spk.model.NeuralNetworkPotential(
        representation=representation, input_modules=[spk.atomistic.PairwiseDistances()],
        output_modules=[spk.atomistic.Atomwise(n_in=config.hidden, output_key="energy"),
                        spk.atomistic.Forces(energy_key="energy", force_key="forces")])
    path = Path(scratch) / f"spk_{size}.pt"
    torch.save(model, path)
    calc = spk.interfaces.SpkCalculator(
        str(path), neighbor_list=spk.transform.MatScipyNeighborList(cutoff=config.cutoff),
        energy_unit="eV", device="cpu")
    calc.parameters_count = sum(p.numel() for p in model.parameters())
    return calc


def teacher_calcs() -> dict:
    calcs = {}
    try:
        from ase_distilled.teachers import get_teacher

        for name in ORB_NAMES:
            calcs[name] = get_teacher(name, weights="random", device="cpu")
    except ImportError as error:
        print(f"Orb not measured: {error}")
    try:
        from tblite.ase import TBLite

        calcs["GFN2-xTB"] = TBLite(method="GFN2-xTB", verbosity=0)
    except ImportError as error:
        print(f"GFN2-xTB not measured: {error}")
    return calcs


def force_call(calc, atoms, rng):
    def call():
        moved(atoms, rng)
        atoms.calc = calc
        atoms.get_forces()
    return call


def latency(args, scratch) -> dict:
    # H, C, N, O only: ASE's EMT has parameters for these and not for F, S, Cl, Br.
    systems = {f"drug-like {len(a)}": a for a in
               (drug_like(n, 1, seed=1, elements="HCNO")[0] for n in (24, 40, 60))}
    systems["water cluster 375"] = water_box(5, periodic=False)
    calcs = {f"student {size}": student_calc(size) for size in SIZES}
    calcs["student tiny (TorchScript)"] = torchscript_calc("tiny", scratch)
    for size in SIZES:
        peer = schnetpack_calc(size, scratch)
        if peer is not None:
            calcs[f"schnetpack PaiNN {size}-width"] = peer
    calcs.update(teacher_calcs())
    calcs["EMT (ASE)"] = EMT()
    rng = np.random.default_rng(0)
    table = {}
    for label, atoms in systems.items():
        chosen = {name: calc for name, calc in calcs.items()
                  if not (name.startswith("orb") and len(atoms) > ORB_MAX_ATOMS)}
        repeats = args.repeats if len(atoms) <= 100 else max(2, args.repeats // 3)
        calls = {name: force_call(calc, atoms.copy(), rng) for name, calc in chosen.items()}
        table[label] = {"atoms": len(atoms), "seconds": time_interleaved(calls, repeats)}
        print(label, {k: f"{v * 1e3:.1f} ms" for k, v in table[label]["seconds"].items()},
              flush=True)
    return table


def batch_throughput(args, scratch) -> dict:
    molecules = [a for n in (20, 30, 40, 50) for a in drug_like(n, 16, seed=2)]
    out = {"molecules": len(molecules), "atoms": sum(len(a) for a in molecules)}
    rng = np.random.default_rng(1)
    for size in SIZES:
        calc = student_calc(size)
        sequential = [(student_calc(size), a.copy()) for a in molecules]

        def one_batch(calc=calc):
            calc.predict_batch([moved(a, rng) for a in molecules])

        def one_by_one(sequential=sequential):
            for each, atoms in sequential:
                moved(atoms, rng)
                atoms.calc = each
                atoms.get_forces()

        seconds = time_interleaved({"batch": one_batch, "sequential": one_by_one},
                                   max(2, args.repeats // 2))
        out[size] = {**seconds, "speedup": seconds["sequential"] / seconds["batch"]}
        print("batch", size, out[size], flush=True)
    return out


def scaling(args, scratch) -> dict:
    calc = student_calc("tiny")
    rng = np.random.default_rng(2)
    rows = []
    for per_side in (3, 4, 5, 7, 10, 14, 15):
        atoms = water_box(per_side)
        call = force_call(calc, atoms, rng)
        start = time.perf_counter()
        call()  # includes the neighbour-list build
        first = time.perf_counter() - start
        seconds = time_interleaved({"call": call}, max(2, args.repeats // 3), warmup=0)["call"]
        rows.append({"atoms": len(atoms), "first_call": first, "seconds": seconds,
                     "peak_rss_mb": peak_rss_mb()})
        print("scaling", rows[-1], flush=True)
    by_atoms = {row["atoms"]: row["seconds"] for row in rows}
    return {"rows": rows, "ratio_8232_over_1029": by_atoms[8232] / by_atoms[1029]}


def flops(args, scratch) -> dict:
    systems = {"drug-like 40": drug_like(40, 1, seed=1), "water 1029": [water_box(7)]}
    out = {"matmul_peak_gflops": matmul_peak_gflops()}
    for size in SIZES:
        model = student(size).eval()
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        for label, atoms_list in systems.items():
            count = force_call_flops(model, atoms_list)
            batch = AtomsBatch.from_atoms(atoms_list)
            edges = neighbor_list(batch, model.cutoff)
            seconds = time_interleaved({"x": partial(model.predict, batch, *edges)},
                                       args.repeats)["x"]
            out[f"{size} / {label}"] = {"parameters": model.num_parameters(), "flops": count,
                                        "seconds": seconds, "gflops_per_s": count / seconds / 1e9}
            print("flops", size, label, out[f"{size} / {label}"], flush=True)
    out["matmul_peak_gflops_after"] = matmul_peak_gflops()
    return out


def md_floor(args, scratch) -> dict:
    out = {}
    for label, atoms in {"water 81": water_box(3), "water 1029": water_box(7)}.items():
        runs = {}
        for name, calc in {"student tiny": student_calc("tiny"), "EMT": EMT()}.items():
            copy = atoms.copy()
            copy.calc = calc
            MaxwellBoltzmannDistribution(copy, temperature_K=300, rng=np.random.default_rng(0))
            dynamics = VelocityVerlet(copy, timestep=0.5 * units.fs)
            runs[name] = lambda dynamics=dynamics: dynamics.run(5)
        seconds = time_interleaved(runs, args.repeats)
        out[label] = {name: value / 5 for name, value in seconds.items()}
        out[label]["ratio"] = out[label]["student tiny"] / out[label]["EMT"]
        print("floor", label, out[label], flush=True)
    return out


def baseline_model(size):
    """The student as committed at BASELINE_REV, with the same weights as today's."""
    import importlib.util

    source = subprocess.run(["git", "show", f"{BASELINE_REV}:ase_distilled/models/painn.py"],
                            cwd=ROOT, capture_output=True, text=True, check=True).stdout
    path = Path(tempfile.mkdtemp()) / "painn_baseline.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("painn_baseline", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.PaiNN(module.PaiNNConfig(**student(size).config.to_dict()))
    model.load_state_dict(student(size).state_dict())
    return model


def optimisations(args, scratch) -> dict:
    out = {}
    rng = np.random.default_rng(3)
    for label, atoms in {"drug-like 40": drug_like(40, 1, seed=1)[0],
                         "water 1029": water_box(7)}.items():
        repeats = args.repeats if len(atoms) < 100 else max(2, args.repeats // 3)
        # Model step, before (baseline module, cutoff + skin list) vs after (trimmed list).
        models = {"baseline": baseline_model("tiny"), "now": student("tiny")}
        batch = AtomsBatch.from_atoms(atoms)
        skinned = neighbor_list(batch, 5.5)
        trimmed = neighbor_list(batch, 5.0)
        for model in models.values():
            model.eval().requires_grad_(False)
        calls = {"model baseline": partial(models["baseline"].predict, batch, *skinned),
                 "model now, untrimmed list": partial(models["now"].predict, batch, *skinned),
                 "model now": partial(models["now"].predict, batch, *trimmed)}
        # Calculator per MD step: skin reuse on/off, eager vs TorchScript.
        calcs = {"calculator skin 0.5": student_calc("tiny", skin=0.5),
                 "calculator skin 0 (rebuild)": student_calc("tiny", skin=0.0),
                 "calculator TorchScript": torchscript_calc("tiny", scratch)}
        calls.update({name: force_call(calc, atoms.copy(), rng) for name, calc in calcs.items()})
        out[label] = {"atoms": len(atoms), "seconds": time_interleaved(calls, repeats)}
        print("optim", label, out[label], flush=True)
    if args.compile:
        out["torch.compile"] = compiled_vs_eager(args)
    return out


def compiled_vs_eager(args) -> dict:
    atoms = drug_like(40, 1, seed=1)[0]
    eager, compiled = student_calc("tiny"), student_calc("tiny")
    compiled.model.compile(dynamic=True)
    start = time.perf_counter()
    compiled.get_forces(atoms.copy())
    compile_seconds = time.perf_counter() - start
    rng = np.random.default_rng(4)
    seconds = time_interleaved({"eager": force_call(eager, atoms.copy(), rng),
                                "compiled": force_call(compiled, atoms.copy(), rng)},
                               args.repeats)
    return {"first_call_seconds": compile_seconds, **seconds}


SECTIONS = {"latency": latency, "batch": batch_throughput, "scaling": scaling, "flops": flops,
            "floor": md_floor, "optim": optimisations}


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 5))
    if "latency" in results:
        rows = [row for label, row in results["latency"].items() if label != "machine"]
        for name in sorted({n for row in rows for n in row["seconds"]}):
            points = sorted((row["atoms"], row["seconds"][name])
                            for row in rows if name in row["seconds"])
            axis.plot(*zip(*points), marker="o", label=name)
    if "scaling" in results:
        rows = results["scaling"]["rows"]
        axis.plot([r["atoms"] for r in rows], [r["seconds"] for r in rows], "k--", marker="s",
                  label="student tiny, liquid water (periodic)")
    axis.set(xscale="log", yscale="log", xlabel="atoms", ylabel="seconds per force call",
             title="Energy + forces per call, positions changing (CPU)")
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def markdown(results) -> str:
    lines = []
    if "latency" in results:
        lines += [f"Machine: `{json.dumps(results['latency']['machine'])}`", ""]
        labels = [label for label in results["latency"] if label != "machine"]
        names = list(dict.fromkeys(n for lab in labels for n in results["latency"][lab]["seconds"]))
        lines += ["| calculator | " + " | ".join(labels) + " |",
                  "|---" * (len(labels) + 1) + "|"]
        for name in names:
            cells = [f"{results['latency'][lab]['seconds'][name] * 1e3:.1f} ms"
                     if name in results["latency"][lab]["seconds"] else "not measured"
                     for lab in labels]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default=",".join(SECTIONS))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--compile", action="store_true",
                        help="also measure torch.compile (minutes of compilation)")
    parser.add_argument("--malloc-defaults", action="store_true",
                        help="students do not raise glibc's mmap/trim thresholds")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    global REUSE_MEMORY
    REUSE_MEMORY = not args.malloc_defaults
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # Sections may be run one at a time: each replaces its own entry in compare.json.
    stored = out / "compare.json"
    results = json.loads(stored.read_text()) if stored.is_file() else {}
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.sections.split(","):
            started = machine()
            results[name] = SECTIONS[name](args, scratch)
            results[name]["machine"] = {"before": started, "after": machine(),
                                        "date": time.strftime("%Y-%m-%d %H:%M")}
            stored.write_text(json.dumps(results, indent=1, default=str))
    (out / "compare.md").write_text(markdown(results))
    if "latency" in results or "scaling" in results:
        plot(results, out / "latency.png")
    print(markdown(results))


if __name__ == "__main__":
    sys.exit(main())
