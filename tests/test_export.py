"""Exports (TorchScript, ONNX, INT8 ONNX) against the eager student they came from."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from ase import Atoms
from conftest import make_student, molecules, periodic_cells

from ase_distilled import DistilledCalculator, cli, save_checkpoint
from ase_distilled.batch import AtomsBatch
from ase_distilled.export import (
    export,
    export_all,
    export_onnx,
    export_torchscript,
    onnx_predict,
    parity,
    quantize_onnx,
)
from ase_distilled.neighbors import neighbor_list

TOLERANCE = 1e-5  # relative, float32
# INT8 against float32 forces of the random test student below, measured R^2 0.970 and
# MAE 16.3% of the mean |F|; the margin covers onnxruntime's CPU-dependent int8 kernels.
INT8_MIN_R2, INT8_MAX_RELATIVE_MAE = 0.95, 0.20


def structures():
    """Molecules and periodic cells of 2 to 16 atoms: the exports see many shapes."""
    return list(molecules().values()) + list(periodic_cells().values())


@pytest.fixture(scope="module")
def model():
    return make_student("ultra-tiny", seed=3).float().eval()


@pytest.fixture(scope="module")
def torchscript_file(model, tmp_path_factory):
    return export_torchscript(model, tmp_path_factory.mktemp("ts") / "student.pt")


@pytest.fixture(scope="module")
def onnx_file(model, tmp_path_factory):
    pytest.importorskip("onnxscript")
    return export_onnx(model, tmp_path_factory.mktemp("onnx") / "student.onnx")


def test_torchscript_matches_eager(model, torchscript_file):
    errors = parity(model, torchscript_file, structures())
    assert errors["energy_rel"] < TOLERANCE
    assert errors["forces_rel"] < TOLERANCE
    assert errors["stress_rel"] < TOLERANCE


def test_onnx_matches_eager(model, onnx_file):
    errors = parity(model, onnx_file, structures())
    assert errors["energy_rel"] < TOLERANCE
    assert errors["forces_rel"] < TOLERANCE


def test_onnx_marks_unknown_elements_with_nan(onnx_file):
    import onnxruntime

    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    gold = Atoms("AuH", positions=[[0, 0, 0], [1.5, 0, 0]])
    batch = AtomsBatch.from_atoms(gold)
    edge_index, shifts = neighbor_list(batch, 5.0)
    energy, _ = onnx_predict(session, batch.positions, batch.numbers, batch.cell[0],
                             edge_index, shifts)
    assert np.isnan(energy)


def test_torchscript_batch_with_mixed_pbc(model, torchscript_file):
    from ase_distilled.export import TorchScriptStudent

    atoms_list = structures()
    batch = AtomsBatch.from_atoms(atoms_list)
    edge_index, shifts = neighbor_list(batch, model.cutoff)
    ref = model.predict(batch, edge_index, shifts, compute_stress=True)
    out = TorchScriptStudent(torchscript_file).predict(batch, edge_index, shifts,
                                                       compute_stress=True)
    torch.testing.assert_close(out["energy"], ref["energy"].detach(), rtol=TOLERANCE, atol=0)
    torch.testing.assert_close(out["forces"], ref["forces"], rtol=0, atol=TOLERANCE)
    periodic = batch.pbc.all(dim=1)
    torch.testing.assert_close(out["stress"][periodic], ref["stress"][periodic],
                               rtol=0, atol=TOLERANCE)
    assert torch.isnan(out["stress"][~periodic]).all()


def test_torchscript_runs_without_ase_distilled(model, torchscript_file, tmp_path):
    atoms = periodic_cells()["cu_cubic"]
    script = f"""
import json, sys, numpy, torch
from ase.neighborlist import primitive_neighbor_list
positions = numpy.array({atoms.positions.tolist()}); cell = numpy.array({atoms.cell.array.tolist()})
module = torch.jit.load({str(torchscript_file)!r})
i, j, S = primitive_neighbor_list("ijS", [True] * 3, cell, positions, module.cutoff)
out = module(torch.tensor(positions, dtype=torch.float32), torch.tensor({atoms.numbers.tolist()}),
             torch.tensor(cell, dtype=torch.float32), torch.tensor([True] * 3),
             torch.tensor(numpy.stack([i, j])), torch.tensor(S, dtype=torch.float32))
assert "ase_distilled" not in sys.modules
print(json.dumps({{k: v.tolist() for k, v in out.items()}}))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=tmp_path, check=True)
    out = json.loads(result.stdout)
    batch = AtomsBatch.from_atoms(atoms)
    ref = model.predict(batch, *neighbor_list(batch, model.cutoff), compute_stress=True)
    np.testing.assert_allclose(out["energy"], ref["energy"].detach().numpy(), rtol=TOLERANCE)
    np.testing.assert_allclose(out["forces"], ref["forces"].numpy(), rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(out["stress"], ref["stress"].numpy(), rtol=0, atol=TOLERANCE)


def test_calculator_accepts_torchscript(model, torchscript_file):
    atoms_list = structures()
    exported = DistilledCalculator(torchscript_file, device="cpu").predict_batch(atoms_list)
    eager = DistilledCalculator(model, device="cpu").predict_batch(atoms_list)
    for a, b in zip(exported, eager, strict=True):
        assert set(a) == set(b)
        np.testing.assert_allclose(a["energy"], b["energy"], rtol=TOLERANCE)
        np.testing.assert_allclose(a["forces"], b["forces"], rtol=0, atol=TOLERANCE)
        if "stress" in b:
            np.testing.assert_allclose(a["stress"], b["stress"], rtol=0, atol=TOLERANCE)
    atoms = periodic_cells()["si_small_cell"]
    atoms.calc = DistilledCalculator(torchscript_file, device="cpu", dtype="float64")
    assert np.isfinite(atoms.get_stress()).all()
    with pytest.raises(ValueError, match="not supported by this model"):
        atoms.calc.predict_batch([Atoms("Au", cell=[5, 5, 5], pbc=True)])


def test_cli_exports_checkpoint(model, tmp_path, capsys):
    checkpoint = save_checkpoint(model, tmp_path / "student.ckpt")
    out = tmp_path / "student.pt"
    assert cli.main(["export", str(checkpoint), "--format", "torchscript",
                     "--out", str(out)]) == 0
    assert "parity vs the eager model" in capsys.readouterr().out
    assert parity(model, out, structures())["forces_rel"] < TOLERANCE


def test_int8_accuracy_cost_is_bounded(model, onnx_file, tmp_path):
    import onnxruntime

    int8_file = quantize_onnx(onnx_file, tmp_path / "student.int8.onnx")
    sessions = [onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
                for path in (onnx_file, int8_file)]
    forces = [[], []]
    for atoms in structures():
        batch = AtomsBatch.from_atoms(atoms)
        args = (batch.positions, batch.numbers, batch.cell[0], *neighbor_list(batch, 5.0))
        for k, session in enumerate(sessions):
            forces[k].append(onnx_predict(session, *args)[1])
    reference, quantized = np.concatenate(forces[0]), np.concatenate(forces[1])
    residual = quantized - reference
    r2 = 1 - np.sum(residual**2) / np.sum((reference - reference.mean()) ** 2)
    relative_mae = np.abs(residual).mean() / np.abs(reference).mean()
    assert 0 < relative_mae < INT8_MAX_RELATIVE_MAE  # > 0: the file really is quantized
    assert r2 > INT8_MIN_R2


@pytest.mark.parametrize("argv, message", [
    (["student.ckpt", "--quantize", "int8"], "INT8 is not offered for TorchScript"),
    (["student.ckpt", "--format", "onnx", "--quantize", "int8"], "narrower than 32"),
    (["--all", "--format", "onnx"], "drop --format/--quantize"),
    ([], "either a model"),
    (["--all"], "No students are shipped"),
])
def test_cli_rejects_unsupported_options(model, tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("ase_distilled.registry.available_models", lambda: [])
    save_checkpoint(model, tmp_path / "student.ckpt")
    assert cli.main(["export", *argv, "--out", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err


def test_export_rejects_unknown_format(model, tmp_path):
    with pytest.raises(ValueError, match="Unknown export format 'tflite'"):
        export(model, tmp_path / "x", "tflite")


@pytest.mark.slow
def test_export_all(model, tmp_path, monkeypatch):
    pytest.importorskip("onnxscript")
    checkpoint = save_checkpoint(model, tmp_path / "student.ckpt")
    monkeypatch.setattr("ase_distilled.registry.resolve", lambda name: checkpoint)
    report = export_all(tmp_path / "out", names=["student"])
    assert json.loads((tmp_path / "out" / "parity.json").read_text()) == report
    for file in ("student.pt", "student.onnx"):
        assert report["student"][file]["forces_rel"] < TOLERANCE
    assert "student.int8.onnx" not in report["student"]  # ultra-tiny: INT8 is no faster
