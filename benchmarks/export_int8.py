"""INT8 against float32 ONNX exports: speed and force accuracy on CPU.

For each student (the shipped ones, or random students of every size when none
are shipped) this exports float32 and INT8 ONNX files, then reports

- time per energy+force call (best of ``--repeats`` interleaved rounds, one
  thread) on a small molecule, C60 and a periodic 216-atom diamond cell, for
  eager PyTorch, ONNX float32 and ONNX INT8;
- force R^2 and MAE of INT8 against the float32 export on rattled structures.

Random weights are not trained weights: their INT8 error says nothing about a
trained student's, only the timings carry over (a forward pass costs the same
whatever the weights). The output names which kind was measured.

    python benchmarks/export_int8.py [--out benchmarks/results/export_int8.json]
"""

import argparse
import json
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from ase.build import bulk, molecule

from ase_distilled import available_models, build_student, load_model
from ase_distilled.batch import AtomsBatch
from ase_distilled.export import export_onnx, onnx_predict
from ase_distilled.neighbors import neighbor_list


def timing_structures():
    crystal = bulk("C", "diamond", a=3.57, cubic=True) * (3, 3, 3)
    return {"CH3CH2OH (9)": molecule("CH3CH2OH"), "C60 (60)": molecule("C60"),
            "diamond cell (216)": crystal}


def accuracy_structures(seed=0):
    rng = np.random.default_rng(seed)
    structures = []
    for name in ("CH3CH2OH", "C6H6", "CH3COOH", "CH3CONH2", "C60"):
        for amplitude in (0.02, 0.05, 0.1):
            atoms = molecule(name)
            atoms.positions += rng.normal(scale=amplitude, size=atoms.positions.shape)
            structures.append(atoms)
    crystal = bulk("C", "diamond", a=3.57, cubic=True) * (2, 2, 2)
    crystal.positions += rng.normal(scale=0.05, size=crystal.positions.shape)
    return structures + [crystal]


def inputs(atoms, cutoff):
    batch = AtomsBatch.from_atoms(atoms)
    edge_index, shifts = neighbor_list(batch, cutoff)
    return batch, edge_index, shifts


def best_times(calls, repeats):
    """Best time (ms) of each call; rounds interleave the calls so load hits all alike."""
    times = {name: [] for name in calls}
    for _ in range(repeats + 1):  # the first round warms up
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return {name: 1e3 * min(values[1:]) for name, values in times.items()}


def measure(model, repeats, workdir):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    sessions = {}
    for tag, quantize in (("onnx fp32", None), ("onnx int8", "int8")):
        path = export_onnx(model, Path(workdir) / f"{tag.replace(' ', '_')}.onnx", quantize)
        sessions[tag] = onnxruntime.InferenceSession(str(path), options,
                                                     providers=["CPUExecutionProvider"])
    timings = {}
    for name, atoms in timing_structures().items():
        batch, edge_index, shifts = inputs(atoms, model.cutoff)
        args = (batch.positions, batch.numbers, batch.cell[0], edge_index, shifts)
        calls = {"eager fp32": partial(model.predict, batch, edge_index, shifts)}
        calls.update({tag: partial(onnx_predict, session, *args)
                      for tag, session in sessions.items()})
        row = best_times(calls, repeats)
        row["int8 speed-up vs onnx fp32"] = row["onnx fp32"] / row["onnx int8"]
        timings[name] = row
    reference, quantized = [], []
    for atoms in accuracy_structures():
        batch, edge_index, shifts = inputs(atoms, model.cutoff)
        args = (batch.positions, batch.numbers, batch.cell[0], edge_index, shifts)
        reference.append(onnx_predict(sessions["onnx fp32"], *args)[1])
        quantized.append(onnx_predict(sessions["onnx int8"], *args)[1])
    reference, quantized = np.concatenate(reference), np.concatenate(quantized)
    residual = quantized - reference
    r2 = 1.0 - np.sum(residual**2) / np.sum((reference - reference.mean()) ** 2)
    accuracy = {"force_r2": float(r2), "force_mae": float(np.abs(residual).mean()),
                "force_mae_relative": float(np.abs(residual).mean() / np.abs(reference).mean())}
    return {"timings_ms": timings, "int8_vs_fp32": accuracy}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, help="write the results as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    names = available_models()
    if names:
        models = {name: (load_model(name), "shipped (trained) weights") for name in names}
    else:
        models = {}
        for size in ("small", "tiny", "ultra-tiny"):
            torch.manual_seed(0)
            models[size] = (build_student(size).eval(), "random weights (no trained student)")
    results = {}
    for name, (model, weights) in models.items():
        with tempfile.TemporaryDirectory() as workdir:
            results[name] = {"weights": weights, "parameters": model.num_parameters(),
                             **measure(model, args.repeats, workdir)}
        print(f"\n{name} ({weights}, {results[name]['parameters']} parameters)")
        for structure, row in results[name]["timings_ms"].items():
            cells = "  ".join(f"{k} {v:7.2f}" for k, v in row.items())
            print(f"  {structure:20s} {cells}")
        accuracy = results[name]["int8_vs_fp32"]
        print(f"  INT8 vs fp32 forces: R2 {accuracy['force_r2']:.4f}  MAE "
              f"{accuracy['force_mae']:.4f} eV/A ({100 * accuracy['force_mae_relative']:.1f}%)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
