"""Resident memory over a long MD run of one small molecule with a student.

    python benchmarks/memory_md.py --steps 100000 --every 5000 --minutes 60

Writes results/memory_md.json: RSS (MB) every ``--every`` steps. A leak (a graph
kept alive, a cache that grows) shows as a rising RSS after the first few
thousand steps; the run stops early, saying so, when ``--minutes`` is spent.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
from ase import units
from ase.build import molecule
from ase.constraints import FixCom
from ase.md.langevin import Langevin
from bench_systems import machine, peak_rss_mb, rss_mb

from ase_distilled import DistilledCalculator


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="shipped student name or checkpoint")
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--every", type=int, default=5_000)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "memory_md.json"))
    args = parser.parse_args(argv)
    atoms = molecule("CH3CH2OH")
    atoms.calc = calc = DistilledCalculator(args.model, device="cpu")
    # A trained student (a random one can fly apart over 100,000 steps); FixCom with
    # fixcm=False is what ASE >= 3.28 asks for.
    atoms.set_constraint(FixCom())
    dynamics = Langevin(atoms, 0.5 * units.fs, temperature_K=300, friction=0.02, fixcm=False,
                        rng=np.random.default_rng(0))
    samples, start, done = [], time.perf_counter(), 0
    while done < args.steps and time.perf_counter() - start < 60 * args.minutes:
        dynamics.run(args.every)
        done += args.every
        samples.append({"step": done, "rss_mb": rss_mb(), "peak_rss_mb": peak_rss_mb(),
                        "seconds": time.perf_counter() - start,
                        "neighbor_builds": calc.neighbors.builds})
        print(samples[-1], flush=True)
    result = {"machine": machine(), "model": args.model, "atoms": len(atoms),
              "steps_requested": args.steps, "steps_done": done, "samples": samples,
              "rss_growth_after_first_sample_mb": samples[-1]["rss_mb"] - samples[0]["rss_mb"]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}))


if __name__ == "__main__":
    main()
