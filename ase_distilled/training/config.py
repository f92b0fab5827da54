"""Training settings: one dataclass, loadable from TOML, overridable from the CLI."""

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

FORCE_LOSSES = ("mse", "relative")


@dataclass
class TrainConfig:
    """Everything that decides a training run (stored in the checkpoint's metadata).

    Parameters
    ----------
    size : {"small", "tiny", "ultra-tiny"}
        Student size (see :func:`ase_distilled.build_student`).
    elements : list of str, optional
        Elements the student accepts; default: those in the training data.
        Structures with other elements are rejected.
    cutoff : float
        Model cutoff in Å.
    epochs : int
        Maximum number of passes over the training set.
    batch_size : int
        Structures per optimizer step (per process under torch.distributed).
    lr, weight_decay : float
        AdamW learning rate and decoupled weight decay.
    warmup_epochs : float
        Linear learning-rate warm-up, then cosine decay to ``lr * min_lr_ratio``.
    min_lr_ratio : float
    ema_decay : float
        Per-step decay of the exponential moving average of the weights; the
        averaged weights are the ones evaluated and saved.
    grad_clip : float
        Maximum gradient norm; 0 disables clipping.
    patience : int
        Stop after this many epochs without a better validation force MAE (see
        ``select_group``), once an epoch has beaten the starting weights (so a
        fine-tune is not stopped while it recovers from its restart at the peak
        learning rate); 0 never stops early.
    energy_weight, forces_weight, stress_weight, hessian_weight : float
        Loss weights: per-atom energy, force components, stress (3-D periodic
        structures that carry one), and Hessian rows (structures that carry
        ``hessian_rows``, see :mod:`ase_distilled.training.hessian`).
    hessian_delta : float
        Finite-difference step in Å for the student's Hessian rows.
    force_loss : {"mse", "relative"}
        ``relative`` weighs each structure's force errors by its own force size,
        so that structures near rest count as much as strongly distorted ones
        (see :mod:`ase_distilled.training.loss`).
    init_from : str, optional
        Fine-tune: start from this student (a shipped name or a checkpoint path),
        its weights and its energy references, instead of random weights. Its
        size, cutoff and elements replace the ones set here.
    seed : int
        Seeds initial weights and the shuffling of every epoch.
    split_key : str
        ``atoms.info`` key grouping structures for the train/val/test split:
        ``"scaffold"`` (Bemis-Murcko, for molecules from SMILES), ``"molecule"``, or
        ``"id:unit"`` / ``"id:base"`` (the start of ``info["id"]``: one input
        molecule, frame or crystal / one conformer or strained cell with its
        distorted copies). A dataset where the key gives fewer groups than the split
        has parts (periodic cells of one crystal all share ``molecule``) is grouped
        by ``"id:unit"``, else ``"id:base"``, with a warning (see
        :func:`ase_distilled.data.split_by_group`).
    split_fractions : list of float
        Train, validation and test fractions.
    val_group_key : str, optional
        ``atoms.info`` key (e.g. ``"source"``: at rest, rattled, MD): the metrics
        log also gives the validation metrics of each of its values
        (``val_by_group``).
    select_group : str, optional
        A ``val_group_key`` value (e.g. ``"conformer"``): the best epoch and early
        stopping follow the validation force MAE of its structures alone, instead
        of all validation structures (whose pooled MAE the most distorted ones rule).
    group_weights : dict, optional
        Loss weight of the training structures of each ``val_group_key`` value,
        e.g. ``{"conformer": 3.0}`` to weigh structures at rest three times;
        values not named weigh 1.
    max_time : float, optional
        Wall-clock budget in minutes; training stops after the epoch that would
        overrun it, with a resumable state on disk.
    dtype : {"float32", "float64"}
    device : str, optional
        Default: CUDA when available, else CPU.
    num_workers : int
        DataLoader worker processes.
    progress : bool
        Show a tqdm progress bar per epoch.
    """

    size: str = "tiny"
    elements: list | None = None
    cutoff: float = 5.0
    epochs: int = 100
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.01
    ema_decay: float = 0.99
    grad_clip: float = 10.0
    patience: int = 20
    energy_weight: float = 1.0
    forces_weight: float = 10.0
    stress_weight: float = 1.0
    hessian_weight: float = 0.0
    hessian_delta: float = 0.005
    force_loss: str = "mse"
    init_from: str | None = None
    seed: int = 0
    split_key: str = "molecule"
    split_fractions: list = field(default_factory=lambda: [0.8, 0.1, 0.1])
    val_group_key: str | None = None
    group_weights: dict | None = None
    select_group: str | None = None
    max_time: float | None = None
    dtype: str = "float32"
    device: str | None = None
    num_workers: int = 0
    progress: bool = True

    # Settings that may change between an interrupted run and its resumption
    # without changing the numbers it produces (patience and max_time only decide
    # when to stop, val_group_key adds figures to the log; group_weights and
    # select_group, which name its groups, must stay as they were).
    RESUMABLE_CHANGES = ("max_time", "patience", "device", "num_workers", "progress",
                         "val_group_key")

    def __post_init__(self):
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}.")
        if len(self.split_fractions) != 3 or abs(sum(self.split_fractions) - 1) > 1e-6:
            raise ValueError(f"split_fractions must be three numbers summing to 1 "
                             f"(train, val, test), got {self.split_fractions}.")
        if self.force_loss not in FORCE_LOSSES:
            raise ValueError(f"force_loss must be one of {FORCE_LOSSES}, got "
                             f"{self.force_loss!r}.")
        for name in ("group_weights", "select_group"):
            if getattr(self, name) and self.val_group_key is None:
                raise ValueError(f"{name} names groups of val_group_key, which is unset; "
                                 f"set val_group_key (e.g. \"source\") or drop {name}.")
        if self.group_weights and min(self.group_weights.values()) < 0:
            raise ValueError(f"group_weights must be >= 0, got {self.group_weights}.")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")

    @classmethod
    def from_toml(cls, path=None, **overrides) -> "TrainConfig":
        """Settings from a TOML file (flat ``key = value`` pairs), then ``overrides``.

        ``None`` overrides are ignored, so CLI options left unset keep the file's values.
        """
        values = {}
        if path is not None:
            path = Path(path)
            if not path.is_file():
                raise FileNotFoundError(f"Training config {str(path)!r} does not exist.")
            with path.open("rb") as handle:
                values = tomllib.load(handle)
        values.update({k: v for k, v in overrides.items() if v is not None})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"Unknown training setting(s) {unknown}"
                             f"{f' in {str(path)!r}' if path else ''}; valid: {sorted(known)}.")
        return cls(**values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
