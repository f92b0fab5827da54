"""The training loop: AdamW, warm-up + cosine schedule, EMA, early stopping, resume.

Files written next to the student checkpoint ``OUT.pt`` (by rank 0 only):

- ``OUT.pt``: the best EMA student so far, in the standard checkpoint format;
- ``OUT.state.pt``: everything needed to resume exactly (weights, optimizer,
  scheduler, EMA, best model, early-stopping counter, history, RNG state);
- ``OUT.metrics.jsonl``: one JSON line per epoch;
- ``OUT.curve.png``: the learning curve, at the end.

Both checkpoints are rewritten atomically after every epoch, so a job killed at
any point loses at most the epoch in progress.

Under ``torch.distributed`` (see :func:`distributed_from_env`), each process
trains on its shard of every epoch and gradients are averaged with one
all-reduce per step, so all ranks hold identical weights.
"""

import contextlib
import copy
import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from ase.data import atomic_numbers
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, DistributedSampler, Subset

from ase_distilled.checkpoint import save_checkpoint
from ase_distilled.models.painn import STUDENT_SIZES, build_student
from ase_distilled.training.config import TrainConfig
from ase_distilled.training.loader import LabelledDataset, collate, to_device
from ase_distilled.training.loss import loss_terms
from ase_distilled.training.metrics import energy_force_metrics

logger = logging.getLogger(__name__)
_LOSS_TERMS = ("total", "energy", "forces", "stress", "hessian")


def rank_and_world():
    """``(rank, world_size)`` of this process; ``(0, 1)`` outside torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@contextlib.contextmanager
def distributed_from_env():
    """Join the process group that ``torchrun`` describes in the environment.

    NCCL when CUDA is available (one GPU per local rank), else gloo. Does nothing
    outside torchrun or when a process group already exists.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) < 2 or dist.is_initialized():
        yield
        return
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    try:
        yield
        # Leave together: rank 0 still writes the checkpoint and the learning curve after
        # the last collective, and a peer that closed its connections meanwhile can abort
        # it from inside gloo (SIGABRT, seen once in CI).
        dist.barrier()
    finally:
        dist.destroy_process_group()


def fit_normalisation(model, dataset: LabelledDataset):
    """Set the model's buffers from the training data, in place.

    - ``atom_ref``: per-element energies minimising ``sum_s (E_s - sum_Z n_sZ e_Z)^2``
      (least squares; elements that the compositions cannot separate, e.g. when
      every structure has the same formula, get the minimum-norm solution);
    - ``shift``: mean per-atom energy left after the references;
    - ``scale``: RMS of the force components, the natural size of the network's output.
    """
    column = {atomic_numbers[s]: i for i, s in enumerate(model.elements)}
    counts = np.zeros((len(dataset), len(column)))
    for k, item in enumerate(dataset.items):
        z, n = np.unique(item["numbers"], return_counts=True)
        counts[k, [column[int(v)] for v in z]] = n
    energies = np.array([item["energy"] for item in dataset.items])
    atom_ref = np.linalg.lstsq(counts, energies, rcond=None)[0]
    residual = (energies - counts @ atom_ref) / counts.sum(axis=1)
    forces = np.concatenate([item["forces"] for item in dataset.items])
    rms = float(np.sqrt(np.mean(forces ** 2)))
    with torch.no_grad():
        model.atom_ref.copy_(torch.as_tensor(atom_ref))
        model.shift.fill_(float(residual.mean()))
        model.scale.fill_(rms if rms > 0 else 1.0)


def starting_student(config: TrainConfig):
    """The student that ``config.init_from`` names, and ``config`` with its architecture.

    The starting student fixes size, elements and cutoff; settings that disagree
    are replaced (with a log message), not trained into a model that could not
    load the weights. Without ``init_from``: ``(None, config)``.
    """
    if not config.init_from:
        return None, config
    from ase_distilled.registry import load_model

    source = config.init_from
    trained = load_model(source)
    if not hasattr(trained, "config"):
        raise ValueError(f"Cannot fine-tune from {str(source)!r}: it is an export; use the "
                         f"student checkpoint (.pt) it was exported from.")
    size = next((name for name, widths in STUDENT_SIZES.items()
                 if all(getattr(trained.config, k) == v for k, v in widths.items())), None)
    if size is None:
        raise ValueError(f"Cannot fine-tune from {str(source)!r}: its widths match none of "
                         f"the named sizes {list(STUDENT_SIZES)}.")
    adopted = dataclasses.replace(config, size=size, elements=list(trained.elements),
                                  cutoff=float(trained.cutoff))
    if adopted != config:
        logger.info("Fine-tuning %s: size %s, cutoff %g Å, elements %s.", source, size,
                    adopted.cutoff, adopted.elements)
    return trained, adopted


def evaluate(model, data, batch_size: int = 32, groups=None) -> dict:
    """Energy and force metrics of ``model`` on labelled structures.

    Under ``torch.distributed`` each rank evaluates a shard and all ranks get
    the metrics of the whole set.

    Parameters
    ----------
    model : PaiNN
    data : LabelledDataset or list of ase.Atoms
    batch_size : int
    groups : sequence of str, optional
        One label per structure (e.g. how it was sampled): the metrics of each
        group are added under ``"by_group"``.

    Returns
    -------
    dict
        See :func:`ase_distilled.training.metrics.energy_force_metrics`.
    """
    if not isinstance(data, LabelledDataset):
        data = LabelledDataset(data, model.cutoff, model.elements)
    if len(data) == 0:
        raise ValueError("No structures to evaluate on.")
    rank, world = rank_and_world()
    parameter = next(model.parameters())
    was_training = model.training
    model.eval()
    parts = {key: [] for key in ("energy", "energy_ref", "num_atoms", "forces", "forces_ref")}
    shard = Subset(data, range(rank, len(data), world))
    parts["group"] = [] if groups is None else [np.asarray(groups, dtype=str)[shard.indices]]
    for sample in DataLoader(shard, batch_size=batch_size, collate_fn=collate):
        batch, edge_index, shifts, targets = to_device(sample, parameter.device, parameter.dtype)
        out = model.predict(batch, edge_index, shifts)
        for key, value in (("energy", out["energy"]), ("energy_ref", targets["energy"]),
                           ("num_atoms", batch.num_atoms), ("forces", out["forces"]),
                           ("forces_ref", targets["forces"])):
            parts[key].append(value.detach().cpu().double().numpy())
    model.train(was_training)
    if world > 1:
        gathered = [None] * world
        dist.all_gather_object(gathered, parts)
        parts = {key: [a for p in gathered for a in p[key]] for key in parts}
    energy, energy_ref, num_atoms, forces, forces_ref = (
        np.concatenate(parts[key]) for key in ("energy", "energy_ref", "num_atoms", "forces",
                                               "forces_ref"))
    metrics = energy_force_metrics(energy, energy_ref, num_atoms, forces, forces_ref)
    if groups is not None:
        group = np.concatenate(parts["group"])
        atom_group = np.repeat(group, num_atoms.astype(int))
        metrics["by_group"] = {
            label: energy_force_metrics(energy[group == label], energy_ref[group == label],
                                        num_atoms[group == label], forces[atom_group == label],
                                        forces_ref[atom_group == label])
            for label in np.unique(group).tolist()}
    return metrics


def _groups(atoms_list, key, part="validation"):
    """``atoms.info[key]`` of every structure, or None without a key."""
    if key is None:
        return None
    missing = [k for k, atoms in enumerate(atoms_list) if key not in atoms.info]
    if missing:
        raise ValueError(f"val_group_key is {key!r}, but {len(missing)} {part} structures "
                         f"(the first: #{missing[0]}) have no atoms.info[{key!r}]; label them or "
                         f"leave val_group_key unset.")
    return [str(atoms.info[key]) for atoms in atoms_list]


def _loss_weights(atoms_list, config: TrainConfig):
    """Each training structure's loss weight from ``config.group_weights`` (None: all 1)."""
    if not config.group_weights:
        return None
    groups = _groups(atoms_list, config.val_group_key, "training")
    unknown = sorted(set(config.group_weights) - set(groups))
    if unknown:
        raise ValueError(f"group_weights names {unknown}, which no training structure has as "
                         f"atoms.info[{config.val_group_key!r}] (present: {sorted(set(groups))}).")
    return [config.group_weights.get(group, 1.0) for group in groups]


def _selection_mae(record: dict, config: TrainConfig) -> float:
    """The validation force MAE that chooses the best epoch (see ``select_group``)."""
    if config.select_group is None:
        return record["val_force_mae"]
    groups = record["val_by_group"]
    if config.select_group not in groups:
        raise ValueError(f"select_group is {config.select_group!r}, but no validation structure "
                         f"has it as atoms.info[{config.val_group_key!r}] (present: "
                         f"{sorted(groups)}).")
    return groups[config.select_group]["force_mae"]


def _warmup_cosine(step: int, warmup: int, total: int, floor: float) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _average_gradients(parameters, world: int):
    # One all-reduce for all gradients: the student is small, latency dominates.
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    for p, chunk in zip(parameters, flat.split([p.numel() for p in parameters])):
        p.grad = chunk.view_as(p)


def _fingerprint(*datasets) -> str:
    digest = hashlib.sha256()
    for dataset in datasets:
        for item in dataset.items:
            digest.update(item["numbers"].tobytes())
            digest.update(item["positions"].tobytes())
            digest.update(np.float64(item["energy"]).tobytes())
    return digest.hexdigest()[:16]


def output_paths(out) -> dict:
    """Files a run with student checkpoint ``out`` writes: student, state, log, curve."""
    out = Path(out)
    stem = out.with_suffix("") if out.suffix == ".pt" else out
    return {"student": out, "state": Path(f"{stem}.state.pt"),
            "log": Path(f"{stem}.metrics.jsonl"), "curve": Path(f"{stem}.curve.png")}


def _atomic_save(obj, path: Path):
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def plot_learning_curve(history, path):
    """Training loss and validation force MAE against epoch, saved as a PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError("The learning-curve plot needs matplotlib: "
                          "pip install 'ase-distilled[plot]'.") from error
    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 4))
    trained = [h for h in history if "train_total" in h]
    ax.semilogy([h["epoch"] for h in trained], [h["train_total"] for h in trained],
                label="training loss (scaled)")
    ax.semilogy(epochs, [h["val_force_mae"] for h in history], label="validation force MAE (eV/Å)")
    ax.set_xlabel("epoch")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


class _Run:
    """State of one training run, saved and restored as a whole."""

    def __init__(self, train_set, val_set, config: TrainConfig, device, dtype, start=None,
                 val_groups=None):
        self.config, self.train_set, self.val_set = config, train_set, val_set
        self.val_groups = val_groups
        self.rank, self.world = rank_and_world()
        torch.manual_seed(config.seed)
        elements = config.elements or train_set.elements
        self.model = build_student(config.size, elements=elements, cutoff=config.cutoff)
        self.start_metadata = getattr(start, "metadata", {})
        if start is not None:  # fine-tuning: see starting_student
            self.model.load_state_dict(start.weights_only_state())
        else:
            fit_normalisation(self.model, train_set)
        self.model.to(device=device, dtype=dtype).train()
        if self.world > 1:  # identical start on every rank, whatever their RNG did
            for tensor in self.model.state_dict().values():
                dist.broadcast(tensor, 0)
        self.parameters = list(self.model.parameters())
        self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay))
        self.ema.module.eval()
        self.optimizer = torch.optim.AdamW(self.parameters, lr=config.lr,
                                           weight_decay=config.weight_decay)
        self.sampler = DistributedSampler(train_set, num_replicas=self.world, rank=self.rank,
                                          shuffle=True, seed=config.seed)
        self.loader = DataLoader(train_set, batch_size=config.batch_size, sampler=self.sampler,
                                 collate_fn=collate, num_workers=config.num_workers)
        total = config.epochs * len(self.loader)
        warmup = max(1, round(config.warmup_epochs * len(self.loader)))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, functools.partial(
            _warmup_cosine, warmup=warmup, total=total, floor=config.min_lr_ratio))
        self.weights = {"energy": config.energy_weight, "forces": config.forces_weight,
                        "stress": config.stress_weight, "hessian": config.hessian_weight}
        self.epoch, self.history = 0, []
        self.best_model, self.best_epoch, self.best_metrics = copy.deepcopy(self.ema.module), 0, {}
        self.fingerprint = _fingerprint(train_set, val_set)

    def state_dict(self) -> dict:
        return {"config": self.config.to_dict(), "fingerprint": self.fingerprint,
                "epoch": self.epoch, "model": self.model.state_dict(),
                "ema": self.ema.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "history": self.history,
                "best_epoch": self.best_epoch, "best_metrics": self.best_metrics,
                "best_model": self.best_model.state_dict(), "rng": torch.get_rng_state()}

    def load_state_dict(self, state: dict, path):
        changed = {key: (value, getattr(self.config, key)) for key, value in state["config"].items()
                   if key not in TrainConfig.RESUMABLE_CHANGES
                   and value != getattr(self.config, key, None)}
        if changed:
            details = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())
            raise ValueError(f"Cannot resume from {str(path)!r}: settings differ from the "
                             f"interrupted run ({details}). Resume with the same settings, or "
                             f"start afresh without --resume.")
        if state["fingerprint"] != self.fingerprint:
            raise ValueError(f"Cannot resume from {str(path)!r}: the training/validation "
                             f"structures differ from the interrupted run's. Use the same data "
                             f"and split, or start afresh without --resume.")
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.best_model.load_state_dict(state["best_model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.history = state["epoch"], state["history"]
        self.best_epoch, self.best_metrics = state["best_epoch"], state["best_metrics"]
        torch.set_rng_state(state["rng"].cpu())

    def train_epoch(self, progress) -> dict:
        self.sampler.set_epoch(self.epoch)
        self.model.train()
        parameter = self.parameters[0]
        sums = torch.zeros(len(_LOSS_TERMS) + 1, dtype=torch.float64, device=parameter.device)
        for sample in progress(self.loader):
            batch, edge_index, shifts, targets = to_device(sample, parameter.device,
                                                           parameter.dtype)
            self.optimizer.zero_grad(set_to_none=True)
            terms = loss_terms(self.model, batch, edge_index, shifts, targets, self.weights,
                               self.config.hessian_delta, self.config.force_loss)
            terms["total"].backward()
            if self.world > 1:
                _average_gradients(self.parameters, self.world)
            if self.config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.parameters, self.config.grad_clip)
            self.optimizer.step()
            self.scheduler.step()
            self.ema.update_parameters(self.model)
            zero = terms["total"].new_zeros(())
            sums[:-1] += torch.stack([terms.get(name, zero).detach() for name in _LOSS_TERMS])
            sums[-1] += 1
        if self.world > 1:
            dist.all_reduce(sums)
        return {f"train_{name}": float(sums[k] / sums[-1]) for k, name in enumerate(_LOSS_TERMS)
                if name == "total" or self.weights[name] > 0}

    def validate(self) -> dict:
        return {f"val_{k}": v for k, v in evaluate(self.ema.module, self.val_set,
                                                   self.config.batch_size, self.val_groups).items()}


def train(train_atoms, val_atoms, config: TrainConfig | None = None, out=None,
          resume: bool = False, metadata: dict | None = None):
    """Distill teacher labels into a new student.

    Parameters
    ----------
    train_atoms, val_atoms : list of ase.Atoms
        Labelled structures (energy and forces in ``atoms.calc``; see
        :class:`~ase_distilled.training.loader.LabelledDataset`). The validation
        set chooses the saved model (lowest force MAE of the EMA weights, on
        the structures of ``config.select_group`` where set) and drives early stopping.
    config : TrainConfig, optional
    out : str or Path, optional
        Student checkpoint to write; a training state, a metrics log and a
        learning curve go next to it (see :func:`output_paths`). Without it,
        nothing is written.
    resume : bool
        Continue from ``out``'s training state if there is one.
    metadata : dict, optional
        Extra checkpoint metadata (teacher, data); training settings and
        validation metrics are added.

    Returns
    -------
    model : PaiNN
        The best EMA student, in eval mode, with ``model.metadata``.
    history : list of dict
        One entry per epoch (epoch 0: before training).
    """
    start, config = starting_student(config or TrainConfig())
    if config.device is None:
        device = torch.device(f"cuda:{torch.cuda.current_device()}"
                              if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(config.device)
    train_set = LabelledDataset(train_atoms, config.cutoff, config.elements,
                                _loss_weights(train_atoms, config))
    if len(train_set) == 0 or len(val_atoms) == 0:
        raise ValueError(f"Training needs structures in both the training and the validation "
                         f"set (got {len(train_set)} and {len(val_atoms)}); use more data or "
                         f"other split fractions.")
    val_set = LabelledDataset(val_atoms, config.cutoff, config.elements or train_set.elements)
    run = _Run(train_set, val_set, config, device, getattr(torch, config.dtype), start,
               _groups(val_atoms, config.val_group_key))
    paths = output_paths(out) if out is not None else None
    writer = run.rank == 0 and paths is not None
    if resume and paths is not None and paths["state"].is_file():
        state = torch.load(paths["state"], map_location=device, weights_only=True)
        run.load_state_dict(state, paths["state"])
        logger.info("Resuming %s after epoch %d.", paths["state"], run.epoch)
    elif resume:
        logger.info("No training state to resume from; starting afresh.")
    if not run.history:
        run.history.append({"epoch": 0, **run.validate()})
        run.best_metrics = run.history[0]
        _selection_mae(run.best_metrics, config)  # an unknown select_group fails before training
    if writer:
        paths["log"].parent.mkdir(parents=True, exist_ok=True)
        paths["log"].write_text("".join(json.dumps(h) + "\n" for h in run.history))

    progress = _progress_bar(config.progress and run.rank == 0)
    start, stop_reason = time.monotonic(), "completed"
    while run.epoch < config.epochs:
        # No early stop while the starting weights (epoch 0) are still the best: a
        # fine-tune restarts at the peak learning rate, which makes validation worse
        # than its start for several epochs by design (ultra-tiny's round 5 was
        # stopped there). From random weights, epoch 1 beats the start at once.
        if (config.patience and run.best_epoch > 0
                and run.epoch - run.best_epoch >= config.patience):
            stop_reason = "early_stopping"
            break
        began = time.monotonic()
        losses = run.train_epoch(functools.partial(
            progress, desc=f"epoch {run.epoch + 1}/{config.epochs}"))
        _check_finite(losses, run.epoch + 1, config, paths)
        record = {"epoch": run.epoch + 1, "lr": run.scheduler.get_last_lr()[0], **losses,
                  **run.validate()}  # lr: at the end of the epoch
        run.epoch += 1
        record["seconds"] = time.monotonic() - began
        run.history.append(record)
        if _selection_mae(record, config) < _selection_mae(run.best_metrics, config):
            run.best_model.load_state_dict(run.ema.module.state_dict())
            run.best_epoch, run.best_metrics = run.epoch, record
        if writer:
            _atomic_save(run.state_dict(), paths["state"])
            save_checkpoint(run.best_model, paths["student"],
                            _metadata(run, metadata, stop_reason="in progress"))
            with paths["log"].open("a") as log:
                log.write(json.dumps(record) + "\n")
        if run.rank == 0:
            logger.info("epoch %d: train loss %.4g, val force MAE %.4g eV/Å", run.epoch,
                        record["train_total"], record["val_force_mae"])
        if (config.max_time is not None and run.epoch < config.epochs
                and _out_of_time(start, record["seconds"], config)):
            stop_reason = "max_time"
            break

    model = run.best_model.eval()
    model.metadata = _metadata(run, metadata, stop_reason)
    if writer:
        save_checkpoint(model, paths["student"], model.metadata)
        try:
            plot_learning_curve(run.history, paths["curve"])
        except ImportError as error:
            logger.warning("%s Skipping the learning curve.", error)
    return model, run.history


def _check_finite(losses, epoch, config, paths):
    """Stop with a clear error once the loss is NaN or infinite: every weight now is."""
    bad = {name: value for name, value in losses.items() if not math.isfinite(value)}
    if not bad:
        return
    kept = (f" {paths['student']} and {paths['state']} hold the last epoch before it."
            if paths is not None and paths["state"].is_file() else "")
    raise ValueError(
        f"Training diverged in epoch {epoch}: the loss became non-finite ({bad}) although "
        f"the data are finite (checked when loaded), so the weights are NaN and nothing of "
        f"this epoch was saved.{kept} Train again with a lower lr (now {config.lr:g}) or "
        f"tighter gradient clipping (grad_clip, now {config.grad_clip:g}; 0 is off), or look "
        f"for structures with extreme forces.")


def _out_of_time(start, epoch_seconds, config) -> bool:
    # Stop before an epoch that would overrun the budget; rank 0's clock decides for all.
    flag = torch.tensor([time.monotonic() - start + epoch_seconds > 60 * config.max_time])
    if dist.is_available() and dist.is_initialized():
        flag = flag.to(torch.device("cuda") if dist.get_backend() == "nccl" else "cpu")
        dist.broadcast(flag, 0)
    return bool(flag.item())


def _progress_bar(enabled: bool):
    if not enabled:
        return lambda iterable, desc=None: iterable
    try:
        from tqdm.auto import tqdm
    except ImportError as error:
        raise ImportError("The progress bar needs tqdm: pip install 'ase-distilled[data]', "
                          "or set progress = false.") from error
    return functools.partial(tqdm, leave=False)


def _metadata(run: _Run, metadata, stop_reason) -> dict:
    settings = {k: v for k, v in run.config.to_dict().items()
                if k not in TrainConfig.RESUMABLE_CHANGES}
    base = copy.deepcopy(metadata or {})
    base["training"] = {**settings, "epochs_completed": run.epoch, "best_epoch": run.best_epoch,
                        "stop_reason": stop_reason, "world_size": run.world,
                        "num_parameters": run.model.num_parameters(),
                        "train_structures": len(run.train_set),
                        "val_structures": len(run.val_set)}
    if run.start_metadata:  # fine-tuned: keep the starting student's record
        base["training"]["init_training"] = run.start_metadata.get("training")
        base["training"]["init_data"] = run.start_metadata.get("data")
    base.setdefault("metrics", {})["val"] = {
        k[len("val_"):]: v for k, v in run.best_metrics.items() if k.startswith("val_")}
    return base
