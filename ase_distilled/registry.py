"""Shipped students: names -> checkpoint files in ``ase_distilled/weights``.

``weights/models.json`` lists each shipped name with its file, sha256 and a
one-line summary. :func:`load_model` accepts a shipped name, a checkpoint path
or an ``nn.Module``.
"""

import hashlib
import json
from pathlib import Path

from torch import nn

WEIGHTS_DIR = Path(__file__).parent / "weights"
_INDEX = WEIGHTS_DIR / "models.json"


def file_sha256(path) -> str:
    """SHA-256 hex digest of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _index() -> dict:
    return json.loads(_INDEX.read_text()) if _INDEX.is_file() else {}


def available_models() -> list:
    """Names of the students shipped inside the package."""
    return sorted(_index())


def model_info(name: str) -> dict:
    """Index entry (``file``, ``sha256``, ``summary``) of a shipped student."""
    index = _index()
    if name not in index:
        valid = ", ".join(sorted(index)) or "none are shipped in this installation"
        raise KeyError(f"Unknown model name {name!r}. Valid names: {valid}; "
                       f"or pass a checkpoint path.")
    return index[name]


def resolve(model) -> Path:
    """Path of a shipped name's checkpoint, or ``model`` itself if it is an existing file."""
    path = Path(model)
    if path.suffix and path.is_file():
        return path
    if str(model) not in _index() and (path.suffix or "/" in str(model)):
        raise FileNotFoundError(f"Checkpoint file {str(model)!r} does not exist.")
    entry = model_info(str(model))
    path = WEIGHTS_DIR / entry["file"]
    digest = file_sha256(path)
    if digest != entry["sha256"]:
        raise ValueError(f"Shipped weights {path} are corrupt (sha256 {digest[:12]}... "
                         f"!= {entry['sha256'][:12]}...). Reinstall ase-distilled.")
    return path


def load_model(model) -> nn.Module:
    """A student from a shipped name, a checkpoint or TorchScript export path, or an
    ``nn.Module`` (returned as is)."""
    if isinstance(model, nn.Module):
        return model
    from ase_distilled.checkpoint import load_checkpoint
    from ase_distilled.export import TorchScriptStudent, is_torchscript

    path = resolve(model)
    return TorchScriptStudent(path) if is_torchscript(path) else load_checkpoint(path)
