"""Teachers: the large force fields whose labels the students learn from.

A teacher is an ASE calculator. :func:`get_teacher` builds one by name:

- every name in orb-models' pretrained registry (extra ``orb``), e.g.
  ``orb-v3-conservative-inf-omat``; the omol variants read
  ``atoms.info["charge"]`` and ``["spin"]`` (multiplicity), default 0 and 1;
- ``gfn2-xtb`` (extra ``xtb``, tblite), charge and multiplicity from ``atoms.info`` too;
- ``emt`` and ``lj`` from ASE, fast teachers for tests.

Anywhere a teacher is taken, an ASE calculator instance is used as it is.
orb-models and tblite are imported only when such a teacher is built.
"""

from ase.calculators.calculator import Calculator

from ase_distilled.teachers.ase_calc import ASE_TEACHERS, ase_teacher, describe, label_each

XTB_NAMES = ("gfn2-xtb",)


def _orb():
    from ase_distilled.teachers import orb

    return orb


def available_teachers() -> list:
    """Names :func:`get_teacher` accepts (Orb names only when orb-models is installed)."""
    try:
        orb_names = list(_orb().ORB_NAMES)
    except ImportError:
        orb_names = []
    return [*orb_names, *XTB_NAMES, *ASE_TEACHERS]


def get_teacher(name, *, weights=None, device=None, **options):
    """An ASE calculator for a teacher name, or ``name`` itself if it is a calculator.

    Parameters
    ----------
    name : str or ase.calculators.calculator.Calculator
        See :func:`available_teachers`.
    weights : None, "random" or path, optional
        Orb only: ``None`` downloads the published weights (needs network),
        a path loads a local checkpoint, ``"random"`` builds the architecture
        with seeded random weights.
    device : str, optional
        Orb only; defaults to CUDA when available.
    **options
        Orb: ``precision``, ``compile``, ``seed``; gfn2-xtb: tblite calculator
        parameters such as ``accuracy``.

    Raises
    ------
    ValueError
        For an unknown name, listing the valid ones.
    ImportError
        When the teacher's optional package is missing, naming the extra to install.
    """
    if isinstance(name, Calculator):
        return name
    if name in XTB_NAMES or name in ASE_TEACHERS:
        if weights is not None:
            raise ValueError(f"Teacher {name!r} has no weights to choose; drop weights=.")
        if name in ASE_TEACHERS:
            return ase_teacher(name)
        from ase_distilled.teachers.xtb import load_xtb

        return load_xtb(**options)
    try:
        orb = _orb()
    except ImportError:
        if name.startswith("orb"):
            raise  # an Orb name: the error names the extra to install
        orb = None
    if orb is not None and name in orb.ORB_NAMES:
        return orb.load_orb(name, weights, device, **options)
    raise ValueError(f"Unknown teacher {name!r}. Valid names: {', '.join(available_teachers())}; "
                     "or pass an ASE calculator.")


def teacher_info(teacher) -> dict:
    """``name``, ``package``, ``version`` and ``weights`` of a teacher.

    ``teacher`` is a calculator or a name (which is built first). Stored in
    dataset attributes and checkpoint metadata.
    """
    if isinstance(teacher, str):
        teacher = get_teacher(teacher)
    return dict(getattr(teacher, "teacher_info", None) or describe(teacher))


def label_batch(teacher, atoms_list) -> list:
    """Energy, forces (and stress for 3-D periodic cells) of many structures.

    Teachers with a ``predict_batch`` method (Orb, the students) label the list
    in one forward pass; other calculators are called once per structure. The
    results equal per-structure calls.

    Returns
    -------
    list of dict
        ``energy`` (eV), ``forces`` (N, 3) eV/Å, optionally ``stress`` (6,) eV/Å^3 Voigt.
    """
    teacher = get_teacher(teacher)
    atoms_list = list(atoms_list)
    if hasattr(teacher, "predict_batch"):
        return [{key: label[key] for key in ("energy", "forces", "stress") if key in label}
                for label in teacher.predict_batch(atoms_list)]
    return label_each(teacher, atoms_list)


__all__ = ["available_teachers", "get_teacher", "label_batch", "teacher_info"]
