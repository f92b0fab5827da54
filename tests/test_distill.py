"""On-policy distillation: the loop end to end, frame selection, bad input, crash safety."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.calculators.calculator import CalculationFailed
from ase.calculators.emt import EMT

from ase_distilled import DistilledCalculator, build_student, save_checkpoint
from ase_distilled.cli import main
from ase_distilled.distill import DistillConfig, distill, select_frames

SMILES = ["CCO", "CC(=O)N", "OCCN", "CCCO", "NCC=O"]
# Small enough for seconds on one core: what is tested is the mechanics, not accuracy.
FAST = DistillConfig(temperatures=(300.0,), seeds=(0,), md_steps=40, frame_interval=5,
                     frames_per_segment=8, epochs=2, max_segments=2, reference_molecules=8,
                     holdout_md_frames=2, holdout_md_interval=5, relax_steps=20,
                     final_md_ps=0.02)


@pytest.fixture()
def inputs(tmp_path):
    torch.manual_seed(0)
    save_checkpoint(build_student("ultra-tiny", elements=["H", "C", "N", "O"]),
                    tmp_path / "init.pt")
    (tmp_path / "mols.smi").write_text("".join(f"{s}\n" for s in SMILES))
    return tmp_path


def _frame(system, run, step, broken=False):
    atoms = Atoms("H")
    atoms.info.update(system=system, run=run, step=step, broken=broken)
    return atoms


def test_select_frames_takes_broken_first_then_uncertain_spread_over_systems_and_time():
    candidates = [_frame(s, "r", step) for s in ("a", "b") for step in range(0, 100, 10)]
    candidates.append(_frame("b", "r", 100, broken=True))
    scores = np.zeros(len(candidates))
    scores[:10] = np.arange(10) + 10  # every frame of "a" beats every frame of "b"
    chosen = select_frames(candidates, scores, cap=4, min_gap=30)
    assert chosen[0] == len(candidates) - 1  # the broken frame, although its score is 0
    systems = [candidates[k].info["system"] for k in chosen]
    assert systems.count("a") == 2 and len(chosen) == 4  # ceil(4 / 2) per system first
    steps_a = sorted(candidates[k].info["step"] for k in chosen if systems[chosen.index(k)] == "a")
    assert steps_a == [60, 90]  # the two most uncertain frames of "a" that are 30 steps apart


def test_distill_end_to_end_writes_a_loadable_student_report_card_and_figure(inputs):
    out = inputs / "special.pt"
    report = distill([inputs / "mols.smi"], EMT(), inputs / "init.pt", out, minutes=10,
                     config=FAST, progress=False)
    assert report["stop_reason"] in ("max_segments", "accepted")
    assert len(report["segments"]) == 2 and report["labelled"]["on_policy"] > 0
    assert len(report["systems"]["held_out"]) == 1  # a quarter of 5 molecules, at least one
    for path in (out, out.with_suffix(".json"), out.with_suffix(".md"), out.with_suffix(".png")):
        assert path.is_file(), path
    calc = DistilledCalculator(out, device="cpu")
    atoms = Atoms("CO", positions=[[0, 0, 0], [1.2, 0, 0]])
    atoms.calc = calc
    atoms.get_forces()
    assert calc.results["forces_uncertainty"].shape == (2,)
    lineage = calc.metadata["distill"]
    assert lineage["init"] == str(inputs / "init.pt") and lineage["systems"]["train"]
    card = out.with_suffix(".md").read_text()
    assert "on-policy" in card and "EMT" in card.upper()
    # The teacher (EMT) trained the student: on the held-out systems, the error fell.
    before = report["baseline"]["metrics"]["held-out teacher 300 K"]["force_rmse"]
    after = report["segments"][-1]["metrics"]["held-out teacher 300 K"]["force_rmse"]
    assert after < before


class _CountingEMT(EMT):
    calls = 0

    def calculate(self, *args, **kwargs):
        type(self).calls += 1
        super().calculate(*args, **kwargs)


def test_a_rerun_resumes_without_labelling_again_and_other_settings_are_refused(inputs):
    out = inputs / "special.pt"
    first = distill([inputs / "mols.smi"], _CountingEMT(), inputs / "init.pt", out,
                    config=FAST, progress=False)
    assert _CountingEMT.calls > 0
    _CountingEMT.calls = 0
    again = distill([inputs / "mols.smi"], _CountingEMT(), inputs / "init.pt", out,
                    config=FAST, progress=False)
    assert _CountingEMT.calls == 0  # every stage was done: nothing is labelled twice
    assert again["segments"] == first["segments"]
    with pytest.raises(ValueError, match="other config"):
        distill([inputs / "mols.smi"], EMT(), inputs / "init.pt", out,
                config=DistillConfig(epochs=3), progress=False)


def test_an_element_the_student_lacks_stops_before_any_labelling(inputs, capsys):
    (inputs / "bad.smi").write_text("CCO\nCCCl\n")
    with pytest.raises(ValueError, match=r"\['Cl'\].*Nothing was labelled"):
        distill([inputs / "bad.smi"], EMT(), inputs / "init.pt", inputs / "x.pt",
                config=FAST, progress=False)
    assert not list(inputs.rglob("*.h5"))
    code = main(["distill", str(inputs / "bad.smi"), "--teacher", "emt", "--init",
                 str(inputs / "init.pt"), "--out", str(inputs / "y.pt")])
    assert code == 2 and "Cl" in capsys.readouterr().err
    assert not list(inputs.rglob("*.h5"))


@pytest.mark.parametrize("content, message", [("", "holds no SMILES"),
                                              (None, "does not exist")])
def test_empty_or_missing_input_is_a_clear_error(inputs, content, message):
    path = inputs / "in.smi"
    if content is not None:
        path.write_text(content)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        distill([path], EMT(), inputs / "init.pt", inputs / "x.pt", config=FAST,
                progress=False)
    (inputs / "junk.xyz").write_text("this is not a structure file\n")
    with pytest.raises(ValueError, match="Cannot read structures"):
        distill([inputs / "junk.xyz"], EMT(), inputs / "init.pt", inputs / "x.pt",
                config=FAST, progress=False)


class _FlakyEMT(EMT):
    """EMT that fails on every fourth structure after its first 100 calls."""

    calls = 0

    def calculate(self, *args, **kwargs):
        type(self).calls += 1
        if self.calls > 100 and self.calls % 4 == 0:
            raise CalculationFailed("SCF did not converge (test)")
        super().calculate(*args, **kwargs)


def test_a_frame_the_teacher_fails_on_is_skipped_and_logged(inputs):
    with pytest.warns(UserWarning, match="the teacher failed"):
        report = distill([inputs / "mols.smi"], _FlakyEMT(), inputs / "init.pt",
                         inputs / "x.pt", config=FAST, progress=False)
    assert sum(s["teacher_failed"] for s in report["segments"]) > 0
    assert (inputs / "x.pt").is_file()


_KILLABLE = textwrap.dedent("""
    import sys, torch
    torch.set_num_threads(1)
    from ase.calculators.emt import EMT
    from ase_distilled.distill import DistillConfig, distill
    config = DistillConfig(temperatures=(300.0,), seeds=(0,), md_steps=40, frame_interval=5,
                           frames_per_segment=8, epochs=3, max_segments=3,
                           reference_molecules=8, holdout_md_frames=2, holdout_md_interval=5,
                           relax_steps=20, final_md_ps=0.02)
    distill([sys.argv[1]], EMT(), sys.argv[2], sys.argv[3], config=config, progress=False)
""")


@pytest.mark.slow
def test_kill_9_anywhere_then_rerun_gives_the_uninterrupted_result(inputs):
    script = inputs / "run.py"
    script.write_text(_KILLABLE)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def command(out):
        return [sys.executable, str(script), str(inputs / "mols.smi"), str(inputs / "init.pt"),
                str(inputs / out)]

    began = time.monotonic()
    subprocess.run(command("plain.pt"), check=True, env=env, capture_output=True)
    duration = time.monotonic() - began
    rng = np.random.default_rng(0)
    kills = 0
    for _ in range(4):
        process = subprocess.Popen(command("killed.pt"), env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.2, 0.8) * duration)
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.wait()
    subprocess.run(command("killed.pt"), check=True, env=env, capture_output=True)
    assert kills >= 2
    plain = json.loads((inputs / "plain.json").read_text())
    killed = json.loads((inputs / "killed.json").read_text())
    assert [s["frames"] for s in killed["segments"]] == [s["frames"] for s in plain["segments"]]
    ids = []
    import h5py

    for path in sorted((inputs / "killed.pt.work").rglob("frames.h5")):
        with h5py.File(path) as f:
            ids += list(f["id"].asstr()[()])
    assert len(ids) == len(set(ids)) == killed["labelled"]["on_policy"]
    a = torch.load(inputs / "plain.pt", weights_only=True)["state_dict"]
    b = torch.load(inputs / "killed.pt", weights_only=True)["state_dict"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)


@pytest.mark.slow
def test_orb_teacher_mechanics_with_random_weights(inputs):
    pytest.importorskip("orb_models")
    config = DistillConfig(temperatures=(300.0,), seeds=(0,), md_steps=20, frame_interval=5,
                           frames_per_segment=4, epochs=1, max_segments=1,
                           reference_molecules=4, holdout=0.0, holdout_md_frames=1,
                           holdout_md_interval=2, relax_steps=3, final_md_ps=0.01)
    (inputs / "two.smi").write_text("CCO\nCN\n")
    report = distill([inputs / "two.smi"], "orb-v3-conservative-omol", inputs / "init.pt",
                     inputs / "orb.pt", weights="random", device="cpu", config=config,
                     progress=False)
    assert report["teacher"]["name"] == "orb-v3-conservative-omol"
    assert report["teacher"]["weights"].startswith("random")
    assert report["labelled"]["on_policy"] > 0
    assert DistilledCalculator(inputs / "orb.pt", device="cpu").metadata["teacher"][
        "package"] == "orb-models"
