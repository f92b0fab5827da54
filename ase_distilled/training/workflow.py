"""From a labelled HDF5 dataset to a shipped-quality student checkpoint."""

from pathlib import Path

from ase_distilled.checkpoint import save_checkpoint
from ase_distilled.registry import file_sha256
from ase_distilled.training.config import TrainConfig
from ase_distilled.training.trainer import evaluate, rank_and_world, train


def train_from_file(data, out, config: TrainConfig | None = None, resume: bool = False):
    """Load a labelled dataset, split it by group, train, test, and save the student.

    Parameters
    ----------
    data : str or Path
        HDF5 dataset written by ``ase-distilled label``.
    out : str or Path
        Student checkpoint to write (see :func:`~ase_distilled.training.trainer.train`
        for the files written next to it).
    config : TrainConfig, optional
        ``split_key``, ``split_fractions`` and ``seed`` decide the split.
    resume : bool
        Continue an interrupted run with the same data and settings.

    Returns
    -------
    model : PaiNN
        The saved student; ``model.metadata`` holds teacher, data, training
        settings and validation/test metrics.
    history : list of dict
    """
    from ase_distilled.data import load, read_metadata, split_by_group

    config = config or TrainConfig()
    if not Path(data).is_file():
        raise FileNotFoundError(f"Dataset {str(data)!r} does not exist; label structures "
                                f"first with `ase-distilled label`.")
    structures = load(data)
    train_atoms, val_atoms, test_atoms = split_by_group(
        structures, fractions=tuple(config.split_fractions), key=config.split_key,
        seed=config.seed)
    elements = sorted({s for atoms in structures for s in atoms.get_chemical_symbols()})
    attributes = read_metadata(data)
    metadata = {
        "teacher": attributes["teacher"],
        "data": {"file": Path(data).name, "sha256": file_sha256(data),
                 "created": attributes.get("created"), "sampling": attributes.get("sampling"),
                 "structures": len(structures),
                 "molecules": len({atoms.info.get("molecule") for atoms in structures}),
                 "atoms": sum(len(atoms) for atoms in structures),
                 "sizes": {"train": len(train_atoms), "val": len(val_atoms),
                           "test": len(test_atoms)},
                 "elements": elements,
                 "split": {"key": config.split_key, "fractions": list(config.split_fractions),
                           "seed": config.seed}},
    }
    model, history = train(train_atoms, val_atoms, config, out=out, resume=resume,
                           metadata=metadata)
    if test_atoms:
        model.metadata["metrics"]["test"] = evaluate(model, test_atoms, config.batch_size)
    if rank_and_world()[0] == 0:
        save_checkpoint(model, out, model.metadata)
    return model, history
