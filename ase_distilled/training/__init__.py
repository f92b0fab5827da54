"""Distill a teacher's labels into a student: losses, loop, resume, torch.distributed.

>>> from ase_distilled.training import TrainConfig, train
>>> model, history = train(train_atoms, val_atoms, TrainConfig(size="tiny"))  # doctest: +SKIP

``torchrun --nproc_per_node 2 -m ase_distilled.training --data labels.h5 --size tiny
--out tiny.pt`` trains on several processes; the options are those of
``ase-distilled train``.
"""

from ase_distilled.training.config import TrainConfig
from ase_distilled.training.hessian import label_hessian_rows, teacher_hessian_rows
from ase_distilled.training.loader import LabelledDataset, collate
from ase_distilled.training.trainer import (
    distributed_from_env,
    evaluate,
    fit_normalisation,
    output_paths,
    plot_learning_curve,
    rank_and_world,
    train,
)
from ase_distilled.training.workflow import train_from_file

__all__ = [
    "LabelledDataset",
    "TrainConfig",
    "collate",
    "distributed_from_env",
    "evaluate",
    "fit_normalisation",
    "label_hessian_rows",
    "output_paths",
    "plot_learning_curve",
    "rank_and_world",
    "teacher_hessian_rows",
    "train",
    "train_from_file",
]
