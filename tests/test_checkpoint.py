"""Checkpoint format: round trip, weights_only loading, wrapper prefixes, clear errors."""

import numpy as np
import pytest
import torch
from ase.build import molecule
from conftest import make_calc, make_student

from ase_distilled import DistilledCalculator, load_checkpoint, save_checkpoint
from ase_distilled.checkpoint import CheckpointError


def test_round_trip_keeps_predictions_and_metadata(tmp_path):
    model = make_student("tiny", seed=3)
    path = save_checkpoint(model, tmp_path / "student.pt", metadata={"teacher": {"name": "emt"}})
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"format_version", "model_config", "state_dict", "metadata"}
    loaded = load_checkpoint(path)
    assert loaded.metadata == {"teacher": {"name": "emt"}}
    atoms = molecule("CH3CH2OH")
    expected = make_calc(model, dtype="float32").predict_batch([atoms])[0]
    got = DistilledCalculator(path, dtype="float32", device="cpu").predict_batch([atoms])[0]
    assert got["energy"] == pytest.approx(expected["energy"], abs=1e-6)
    np.testing.assert_allclose(got["forces"], expected["forces"], atol=1e-6)


@pytest.mark.parametrize("prefix", ["model.", "module.", "model.module."])
def test_wrapper_prefixed_state_dict_loads(tmp_path, prefix):
    model = make_student(seed=4)
    path = save_checkpoint(model, tmp_path / "wrapped.pt")
    raw = torch.load(path, weights_only=True)
    raw["state_dict"] = {prefix + k: v for k, v in raw["state_dict"].items()}
    torch.save(raw, path)
    loaded = load_checkpoint(path)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)


def test_corrupt_file_gives_clear_error(tmp_path):
    path = save_checkpoint(make_student(), tmp_path / "student.pt")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable ase-distilled checkpoint"):
        load_checkpoint(path)
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match="corrupt"):
        DistilledCalculator(str(text))


def test_foreign_torch_file_gives_clear_error(tmp_path):
    path = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(CheckpointError, match="not an ase-distilled checkpoint"):
        load_checkpoint(path)


def test_mismatched_weights_give_clear_error(tmp_path):
    path = save_checkpoint(make_student("tiny"), tmp_path / "student.pt")
    raw = torch.load(path, weights_only=True)
    raw["model_config"]["hidden"] = 8
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match="do not match its model_config"):
        load_checkpoint(path)
