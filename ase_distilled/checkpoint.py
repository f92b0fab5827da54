"""One checkpoint format for students: config + weights + metadata.

A checkpoint is a plain dict, loadable with ``torch.load(path, weights_only=True)``::

    {
        "format_version": 1,
        "model_config": {...},        # PaiNNConfig fields
        "state_dict": {...},          # tensors only
        "metadata": {...},            # teacher, data, training, metrics (JSON-like)
    }

State dicts saved by training wrappers (keys prefixed ``model.``, as Lightning
and DistributedDataParallel's ``module.`` do) load without hand editing.
"""

from pathlib import Path

import torch

from ase_distilled.models.painn import PaiNN, PaiNNConfig
from ase_distilled.models.uncertainty import LatentDistance

FORMAT_VERSION = 1
_WRAPPER_PREFIXES = ("model.", "module.", "_orig_mod.")


class CheckpointError(ValueError):
    """A file is missing, corrupt, or not an ase-distilled checkpoint."""


def save_checkpoint(model: PaiNN, path, metadata: dict | None = None) -> Path:
    """Write ``model`` and its metadata to ``path`` (float32 weights, on CPU).

    Parameters
    ----------
    model : PaiNN
    path : str or Path
    metadata : dict, optional
        JSON-like information: teacher, data, training settings, metrics.
        Defaults to ``model.metadata`` when the model carries one.
    """
    if metadata is None:
        metadata = getattr(model, "metadata", {})
    state = {k: (v.detach().cpu().float() if v.is_floating_point() else v.detach().cpu())
             for k, v in model.state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format_version": FORMAT_VERSION, "model_config": model.config.to_dict(),
                "state_dict": state, "metadata": dict(metadata)}, tmp)
    tmp.replace(path)  # atomic: an interrupted save never leaves a half-written checkpoint
    return path


def read_checkpoint(path) -> dict:
    """Load and validate the raw checkpoint dict (no model is built)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint file {str(path)!r} does not exist.")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for truncated or foreign files
        raise CheckpointError(
            f"{str(path)!r} is not a readable ase-distilled checkpoint (corrupt, truncated, "
            f"or not a torch file: {error}). Re-download or re-export it, or pass a "
            f"shipped model name (see ase_distilled.available_models())."
        ) from None
    missing = [key for key in ("model_config", "state_dict") if not isinstance(data, dict)
               or key not in data]
    if missing:
        raise CheckpointError(
            f"{str(path)!r} is a torch file but not an ase-distilled checkpoint "
            f"(missing {missing}). Save students with ase_distilled.save_checkpoint."
        )
    version = data.get("format_version", 1)
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{str(path)!r} has checkpoint format {version}, newer than this ase-distilled "
            f"understands ({FORMAT_VERSION}). Upgrade ase-distilled."
        )
    return data


def strip_wrapper_prefix(state_dict: dict) -> dict:
    """Remove a training wrapper's key prefix (``model.``, ``module.``) if every key has it."""
    for prefix in _WRAPPER_PREFIXES:
        while state_dict and all(k.startswith(prefix) for k in state_dict):
            state_dict = {k[len(prefix):]: v for k, v in state_dict.items()}
    return state_dict


def load_checkpoint(path) -> PaiNN:
    """Rebuild the student stored at ``path``; its metadata is in ``model.metadata``."""
    data = read_checkpoint(path)
    model = PaiNN(PaiNNConfig(**data["model_config"]))
    state = strip_wrapper_prefix(data["state_dict"])
    if any(key.startswith("uncertainty.") for key in state):
        model.uncertainty = LatentDistance(len(model.elements), model.hidden)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise CheckpointError(
            f"The weights in {str(path)!r} do not match its model_config: {error}"
        ) from None
    model.metadata = dict(data.get("metadata") or {})
    return model.eval()
