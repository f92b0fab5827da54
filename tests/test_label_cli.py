"""`ase-distilled label` / `dataset`: SIGKILL and resume, shards and merge, clear errors."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ase_distilled.cli import main
from ase_distilled.data import Sampling, label, load, read_metadata

pytest.importorskip("h5py", reason="datasets need h5py (extra 'data')")
pytest.importorskip("rdkit", reason="SMILES input needs RDKit (extra 'data')")

REPO = Path(__file__).resolve().parents[1]
# C, H, N, O only: EMT (a fast test teacher) has parameters for these.
SMILES = ["CCO", "CC(=O)O", "c1ccccc1", "CCN", "OCCO", "CC(C)O", "C1CCCCC1", "NC(=O)C",
          "COC", "CCCC", "OC1CCNCC1", "c1ccncc1", "CC(=O)NC", "OCC(O)CO", "C1CCOC1",
          "CCOC(=O)C", "NCCO", "CC#N", "c1ccoc1", "CN(C)C=O"]
OPTIONS = ["--teacher", "emt", "--conformers", "2", "--rattle", "0.05", "--stretch", "0.2",
           "--push", "30", "--md-temperatures", "400", "--md-frames", "3", "--md-interval", "5"]
SAMPLING = Sampling(conformers=2, rattle=(0.05,), stretch=(0.2,), push=(30.0,),
                    md_temperatures=(400.0,), md_frames=3, md_interval=5)


@pytest.fixture
def smi(tmp_path):
    path = tmp_path / "mols.smi"
    path.write_text("\n".join(SMILES) + "\n")
    return path


def _ids(path):
    return [atoms.info["id"] for atoms in load(path)]


def _assert_same(first, second):
    assert [a.info for a in first] == [b.info for b in second]
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a.positions, b.positions)
        assert a.get_potential_energy() == b.get_potential_energy()
        np.testing.assert_array_equal(a.get_forces(), b.get_forces())


def _newest_chunk(journal) -> float:
    newest = 0.0
    for path in journal.glob("chunk-*.h5"):
        try:
            newest = max(newest, path.stat().st_mtime)
        except FileNotFoundError:  # consolidated away meanwhile
            pass
    return newest


def _after_new_chunk(journal, delay):
    """A condition: a chunk newer than now has been journalled, and ``delay`` s have passed."""
    started, began = time.time(), []

    def ready():
        if not began and _newest_chunk(journal) > started:
            began.append(time.monotonic())
        return bool(began) and time.monotonic() - began[0] > delay

    return ready


def _kill_when(args, ready, timeout=180):
    """Start `ase-distilled label ARGS`, SIGKILL it once ``ready()``; True if it was killed."""
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    process = subprocess.Popen([sys.executable, "-m", "ase_distilled.cli", "label", *args],
                               cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while process.poll() is None and not ready() and time.monotonic() < deadline:
        time.sleep(0.005)
    killed = process.poll() is None
    process.send_signal(signal.SIGKILL)
    process.wait()
    return killed


def test_sigkill_then_resume_equals_an_uninterrupted_run(smi, tmp_path):
    reference = tmp_path / "reference.h5"
    label([smi], "emt", reference, sampling=SAMPLING, progress=False)
    out = tmp_path / "out.h5"
    journal = tmp_path / "out.h5.journal"
    args = [str(smi), *OPTIONS, "--out", str(out), "--chunk-size", "4"]

    # Killed as soon as a first chunk is journalled, then as soon as the resumed
    # run journals a chunk next to the consolidated file.
    assert _kill_when(args, _after_new_chunk(journal, 0.0))
    new_chunk = _after_new_chunk(journal, 0.0)
    assert _kill_when(args, lambda: new_chunk() and out.exists())
    seen = _ids(out)  # the file a kill leaves behind is readable
    assert 0 < len(seen) < len(_ids(reference))
    assert not read_metadata(out)["complete"]

    assert main(["label", *args, "--quiet"]) == 0
    _assert_same(load(out), load(reference))
    assert read_metadata(out)["complete"]
    assert not journal.exists()


@pytest.mark.slow
def test_repeated_sigkills_at_random_moments(smi, tmp_path):
    reference = tmp_path / "reference.h5"
    label([smi], "emt", reference, sampling=SAMPLING, progress=False)
    out = tmp_path / "out.h5"
    args = [str(smi), *OPTIONS, "--out", str(out), "--chunk-size", "2"]
    rng = np.random.default_rng(0)
    journal = tmp_path / "out.h5.journal"
    kills = 0
    for delay in rng.uniform(0.0, 1.0, size=8):
        ready = _after_new_chunk(journal, delay)
        if not _kill_when(args, ready):
            break
        kills += 1
        if out.exists():
            load(out)
    assert kills >= 3
    assert main(["label", *args, "--quiet"]) == 0
    _assert_same(load(out), load(reference))


def test_shards_merge_and_info(smi, tmp_path, capsys):
    single = tmp_path / "single.h5"
    assert main(["label", str(smi), *OPTIONS, "--limit", "5", "--out", str(single),
                 "--quiet"]) == 0
    shards = [tmp_path / f"shard{i}.h5" for i in range(3)]
    for i, path in enumerate(shards):
        assert main(["label", str(smi), *OPTIONS, "--limit", "5", "--out", str(path),
                     "--shard", f"{i}/3", "--quiet"]) == 0
    merged = tmp_path / "merged.h5"
    assert main(["dataset", "merge", *map(str, shards), "--out", str(merged)]) == 0
    _assert_same(load(merged), load(single))
    capsys.readouterr()
    assert main(["dataset", "info", str(merged)]) == 0
    text = capsys.readouterr().out
    assert "teacher     emt (ase" in text
    per_conformer = 1 + len(SAMPLING.rattle) + len(SAMPLING.stretch) + len(SAMPLING.push) \
        + SAMPLING.md_frames
    assert f"structures  {5 * 2 * per_conformer}" in text and "molecules 5" in text
    assert "elements    H " in text and "force_norm" in text


def test_bad_input_gives_clear_errors(smi, tmp_path, capsys):
    out = str(tmp_path / "x.h5")
    assert main(["label", str(smi), "--teacher", "orbital-v9", "--out", out]) == 2
    assert "Unknown teacher 'orbital-v9'" in capsys.readouterr().err
    bad = tmp_path / "broken.xyz"
    bad.write_text("3\nnot a number\n")
    assert main(["label", str(bad), "--teacher", "emt", "--out", out]) == 2
    assert "Cannot read structures from" in capsys.readouterr().err
    assert main(["label", str(tmp_path / "none.smi"), "--teacher", "emt", "--out", out]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["dataset", "info", str(bad)]) == 2
    assert "not a readable HDF5 dataset" in capsys.readouterr().err
