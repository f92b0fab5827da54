"""Cost of the uncertainty on a force call: shipped students with and without it.

    OMP_NUM_THREADS=1 python benchmarks/uncertainty_cost.py

One thread, drug-like molecules of about 20, 40 and 60 atoms (MOSES), positions
moved before every call, the two calculators timed interleaved (medians of 200
calls). Writes ``results/uncertainty_cost.json``.
"""

import json
import warnings
from pathlib import Path

import numpy as np
import torch
from bench_systems import drug_like, machine, moved, time_interleaved

from ase_distilled import DistilledCalculator

RESULTS = Path(__file__).parent / "results" / "uncertainty_cost.json"


def main():
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")  # warnings past the threshold are not what is timed
    rows = []
    for size in ("small", "tiny", "ultra-tiny"):
        with_it = DistilledCalculator(size, device="cpu")
        without = DistilledCalculator(size, device="cpu")
        without.uncertainty = None
        for atoms in (drug_like(n, 1, seed=1)[0] for n in (20, 40, 60)):
            rng = np.random.default_rng(0)
            pair = {name: atoms.copy() for name in ("with", "without")}
            pair["with"].calc, pair["without"].calc = with_it, without

            def call(a, rng=rng):
                return lambda: (moved(a, rng), a.get_forces())

            times = time_interleaved({k: call(a) for k, a in pair.items()}, repeats=200,
                                     warmup=5)
            rows.append({"student": size, "atoms": len(atoms),
                         "ms_with": 1e3 * times["with"], "ms_without": 1e3 * times["without"],
                         "overhead": times["with"] / times["without"] - 1})
            print(f"{size:10s} {len(atoms):3d} atoms: {rows[-1]['ms_without']:.2f} -> "
                  f"{rows[-1]['ms_with']:.2f} ms ({rows[-1]['overhead']:+.1%})")
    RESULTS.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
