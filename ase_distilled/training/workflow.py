"""From a labelled HDF5 dataset to a shipped-quality student checkpoint."""

from pathlib import Path

from ase_distilled.checkpoint import save_checkpoint
from ase_distilled.registry import file_sha256
from ase_distilled.training.config import TrainConfig
from ase_distilled.training.trainer import evaluate, output_paths, rank_and_world, train


def train_from_file(data, out, config: TrainConfig | None = None, resume: bool = False,
                    overwrite: bool = False):
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
        ``split_key``, ``split_fractions`` and ``seed`` decide the split; where the
        key gives too few groups, a file is split by structure id instead (see
        :func:`~ase_distilled.data.split_by_group`; recorded as ``grouped_by``).
    resume : bool
        Continue an interrupted run with the same data and settings.
    overwrite : bool
        Train afresh even if ``out`` (or its training state) exists, replacing it.

    Raises
    ------
    FileExistsError
        If ``out`` or its training state exists and neither ``resume`` nor
        ``overwrite`` is set: a trained student is never replaced silently.

    Returns
    -------
    model : PaiNN
        The saved student; ``model.metadata`` holds teacher, data (each file's name,
        sha256 and sampling), training settings and validation/test metrics.
    history : list of dict
    """
    from ase_distilled.data import (
        content_sha256,
        load,
        read_metadata,
        split_by_group,
        split_grouping,
    )

    config = config or TrainConfig()
    if resume and overwrite:
        raise ValueError("resume and overwrite contradict each other: --resume continues "
                         "the run in OUT, --overwrite replaces it; choose one.")
    existing = [str(path) for path in (output_paths(out)[key] for key in ("student", "state"))
                if path.exists()]
    if existing and not (resume or overwrite):
        raise FileExistsError(
            f"{' and '.join(existing)} {'exists' if len(existing) == 1 else 'exist'}: training "
            f"afresh would replace that student. "
            f"Pass --resume (resume=True) to continue its run, --overwrite (overwrite=True) to "
            f"train afresh and replace it, or choose another --out.")
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
    groupings = [split_grouping(structures, config.split_fractions, config.split_key)
                 for structures in datasets]
    grouped_by = [grouping for grouping, _, _ in groupings]
    train_atoms, val_atoms, test_atoms = ([atoms for split in parts for atoms in split[k]]
                                          for k in range(3))
    if train_atoms and not val_atoms and config.split_fractions[1] > 0:
        counts = "; ".join(f"{path.name}: " + ", ".join(f"{name!r} gives {n}" for name, n
                                                         in found.items())
                           for path, (_, _, found) in zip(paths, groupings))
        raise ValueError(
            f"The validation set is empty: a group never goes to two parts, and there are too "
            f"few groups to fill them (split_key {config.split_key!r}, then grouping by id: "
            f"{counts} group(s)). Label more structures, set split_key to an atoms.info key "
            f"with more values, or change split_fractions {list(config.split_fractions)}.")
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
    if any(grouping != config.split_key for grouping in grouped_by):
        metadata["data"]["split"]["grouped_by"] = grouped_by  # one per file
    model, history = train(train_atoms, val_atoms, config, out=out, resume=resume,
                           metadata=metadata)
    if test_atoms:
        model.metadata["metrics"]["test"] = evaluate(model, test_atoms, config.batch_size)
    if rank_and_world()[0] == 0:
        save_checkpoint(model, out, model.metadata)
    return model, history
