"""From a labelled HDF5 dataset to a shipped-quality student checkpoint."""

from pathlib import Path

from ase_distilled.checkpoint import save_checkpoint
from ase_distilled.registry import file_sha256
from ase_distilled.training.config import TrainConfig
from ase_distilled.training.trainer import evaluate, rank_and_world, train


def train_from_file(data, out, config: TrainConfig | None = None, resume: bool = False):
    """Load labelled datasets, split them by group, train, test, and save the student.

    Parameters
    ----------
    data : str, Path or list of them
        HDF5 dataset(s) written by ``ase-distilled label`` with the same teacher
        (e.g. a main set and one sampled differently), trained on together. Each
        is split by group on its own; keep a group (scaffold) in one file only.
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
        The saved student; ``model.metadata`` holds teacher, data (each file's name,
        sha256 and sampling), training settings and validation/test metrics.
    history : list of dict
    """
    from ase_distilled.data import content_sha256, load, read_metadata, split_by_group

    config = config or TrainConfig()
    paths = [Path(path) for path in ([data] if isinstance(data, (str, Path)) else data)]
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"Dataset {str(path)!r} does not exist; label structures "
                                    f"first with `ase-distilled label`.")
    attributes = [read_metadata(path) for path in paths]
    for path, attrs in zip(paths[1:], attributes[1:]):
        if attrs["teacher"] != attributes[0]["teacher"]:
            raise ValueError(f"{path} was labelled by {attrs['teacher']}, {paths[0]} by "
                             f"{attributes[0]['teacher']}: a student learns from one teacher "
                             "(name, version and weights); label both with the same one.")
    # Each file is split on its own, so adding a dataset never moves a structure of
    # another between training and validation (a fine-tune keeps its validation set).
    datasets = [load(path) for path in paths]
    parts = [split_by_group(structures, fractions=tuple(config.split_fractions),
                            key=config.split_key, seed=config.seed) for structures in datasets]
    train_atoms, val_atoms, test_atoms = ([atoms for split in parts for atoms in split[k]]
                                          for k in range(3))
    structures = [atoms for structures in datasets for atoms in structures]
    elements = sorted({s for atoms in structures for s in atoms.get_chemical_symbols()})
    metadata = {
        "teacher": attributes[0]["teacher"],
        "data": {"files": [{"file": path.name, "sha256": file_sha256(path),
                            "content_sha256": content_sha256(path),
                            "created": attrs.get("created"), "sampling": attrs.get("sampling")}
                           for path, attrs in zip(paths, attributes)],
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
