"""Figures for force reports and MD runs (PNG, matplotlib's Agg backend).

matplotlib is imported inside the functions: it is an optional dependency
(``pip install 'ase-distilled[plot]'``).
"""

from pathlib import Path

import numpy as np
from ase.data import chemical_symbols

from ase_distilled.analysis.md import BOND_BREAK_A


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ImportError("Figures need matplotlib: pip install 'ase-distilled[plot]'.") from None
    matplotlib.use("Agg")  # files only: never needs a display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def plot_force_report(report, path) -> Path:
    """The 6-panel force comparison figure of one :class:`ForceReport`.

    Panels: parity of force components (hexbin density), component error
    histogram, angular error histogram, per-element errors, per-atom error vs
    reference force magnitude, cumulative distribution of per-atom errors.
    """
    plt = _pyplot()
    from matplotlib.colors import LogNorm

    m = report.metrics
    ref, pred = report.reference_forces.ravel(), report.forces.ravel()
    fig, axes = plt.subplots(2, 3, figsize=(15, 9.5))
    fig.suptitle(f"{report.model} vs {report.reference}: {m['num_structures']} structures, "
                 f"{m['forces']['num_atoms']} atoms", fontsize=13)

    ax = axes[0, 0]
    lim = float(np.max(np.abs(np.concatenate([ref, pred])))) * 1.05 or 1.0
    hb = ax.hexbin(ref, pred, gridsize=60, norm=LogNorm(), cmap="viridis", mincnt=1,
                   extent=(-lim, lim, -lim, lim))
    fig.colorbar(hb, ax=ax, label="force components per bin")
    ax.plot([-lim, lim], [-lim, lim], "k--", lw=0.8)
    ax.set(xlim=(-lim, lim), ylim=(-lim, lim), xlabel="reference force component (eV/Å)",
           ylabel="predicted force component (eV/Å)", title="Parity", aspect="equal")
    f = m["forces"]
    ax.text(0.04, 0.96, f"R² = {_fmt(f['r2'])}\nRMSE = {f['rmse']:.3f} eV/Å\n"
            f"MAE = {f['mae']:.3f} eV/Å", transform=ax.transAxes, va="top",
            bbox=dict(facecolor="white", alpha=0.8, edgecolor="none"))

    ax = axes[0, 1]
    ax.hist(pred - ref, bins=80, color="tab:blue")
    ax.set(xlabel="predicted − reference force component (eV/Å)", ylabel="count",
           title="Component errors")

    ax = axes[0, 2]
    angles = report.angles[np.isfinite(report.angles)]
    ax.hist(angles, bins=np.linspace(0, 180, 61), color="tab:orange")
    ax.axvline(f["angle_deg"] or 0, color="k", ls="--", lw=1,
               label=f"mean {_fmt(f['angle_deg'], '.1f')}°")
    ax.set(xlabel="angle between predicted and reference force (°)", ylabel="atoms",
           title="Angular errors", xlim=(0, 180))
    ax.legend()

    ax = axes[1, 0]
    elements = list(m["per_element"])
    x = np.arange(len(elements))
    maes = [m["per_element"][e]["mae"] for e in elements]
    rmses = [m["per_element"][e]["rmse"] for e in elements]
    ax.bar(x - 0.2, maes, 0.4, label="MAE")
    ax.bar(x + 0.2, rmses, 0.4, label="RMSE")
    ax.set_xticks(x, [f"{e}\n({m['per_element'][e]['num_atoms']})" for e in elements])
    ax.set(xlabel="element (atoms)", ylabel="force error (eV/Å)", title="Per element")
    ax.legend()

    ax = axes[1, 1]
    magnitude = np.linalg.norm(report.reference_forces, axis=1)
    for z in np.unique(report.numbers):
        mask = report.numbers == z
        ax.scatter(magnitude[mask], report.errors[mask], s=4, alpha=0.4,
                   label=chemical_symbols[z])
    ax.set(xlabel="reference force magnitude |F_ref| (eV/Å)",
           ylabel="per-atom error |F − F_ref| (eV/Å)", title="Error vs force magnitude")
    ax.legend(markerscale=3, fontsize=8)

    ax = axes[1, 2]
    errors = np.sort(report.errors)
    ax.plot(errors, np.arange(1, len(errors) + 1) / len(errors), color="tab:green")
    for key, style in (("p90", ":"), ("p95", "--")):
        ax.axvline(f[key], color="k", ls=style, lw=1,
                   label=f"{key.upper()} = {f[key]:.3f} eV/Å")
    ax.set(xlabel="per-atom error |F − F_ref| (eV/Å)", ylabel="fraction of atoms",
           title="Cumulative distribution", ylim=(0, 1.01))
    ax.legend(loc="lower right")

    fig.tight_layout()
    return _save(fig, path)


def plot_model_comparison(reports, path) -> Path:
    """Accuracy vs size: force errors and R² of several models against the same reference.

    Parameters
    ----------
    reports : list of ForceReport
        One per model, all with a parameter count (students carry one).
    path : str or Path
    """
    missing = [r.model for r in reports if r.parameters is None]
    if missing:
        raise ValueError(f"No parameter count for {missing}; the comparison figure needs "
                         f"students (DistilledCalculator), which report theirs.")
    plt = _pyplot()
    reports = sorted(reports, key=lambda r: r.parameters)
    params = np.array([r.parameters for r in reports])
    metrics = [r.metrics["forces"] for r in reports]
    fig, (ax_err, ax_r2) = plt.subplots(1, 2, figsize=(12, 4.8))
    fig.suptitle(f"Accuracy vs size against {reports[0].reference}", fontsize=13)
    for key, label in (("mae", "MAE"), ("rmse", "RMSE"), ("p95", "P95 per-atom error")):
        ax_err.plot(params, [mm[key] for mm in metrics], "o-", label=label)
    ax_err.set(xscale="log", xlabel="parameters", ylabel="force error (eV/Å)",
               title="Force errors")
    ax_err.legend()
    ax_r2.plot(params, [mm["r2"] for mm in metrics], "o-", color="tab:purple", label="R²")
    ax_r2.set(xscale="log", xlabel="parameters", ylabel="force R²", title="Force R² and angle")
    ax_angle = ax_r2.twinx()
    ax_angle.plot(params, [mm["angle_deg"] for mm in metrics], "s--", color="tab:orange",
                  label="mean angle")
    ax_angle.set_ylabel("mean angular error (°)")
    ax_r2.legend(handles=ax_r2.lines + ax_angle.lines, loc="center right")
    for ax in (ax_err, ax_r2):
        for report, mm in zip(reports, metrics, strict=True):
            ax.annotate(f"{report.model}\n{report.parameters / 1000:.0f}K",
                        (report.parameters, mm["mae"] if ax is ax_err else mm["r2"]),
                        textcoords="offset points", xytext=(4, 6), fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_md(run, path, reference=None) -> Path:
    """MD figure: energies and temperature vs time, h(r), bond-length deviation vs time.

    Parameters
    ----------
    run : MDRun
    path : str or Path
    reference : MDRun, optional
        Drawn alongside in temperature, h(r) and bond-deviation panels.
    """
    plt = _pyplot()
    runs = [("model", run)] + ([("reference", reference)] if reference is not None else [])
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    fig.suptitle(f"{run.ensemble.upper()} MD, {len(run.frames[0])} atoms, "
                 f"{run.time_ps[-1]:.3f} ps", fontsize=13)

    ax = axes[0, 0]
    e0 = run.total_energy[0]
    ax.plot(run.time_ps, run.potential_energy - e0, label="potential − E_tot(0)")
    ax.plot(run.time_ps, run.kinetic_energy, label="kinetic")
    ax.plot(run.time_ps, run.total_energy - e0, label="total − E_tot(0)", color="k")
    ax.set(xlabel="time (ps)", ylabel="energy (eV)",
           title="Energy (model)")
    ax.legend()

    ax = axes[0, 1]
    for label, r in runs:
        ax.plot(r.time_ps, r.temperature, label=label)
    if run.ensemble == "nvt" and run.temperature_K:
        ax.axhline(run.temperature_K, color="k", ls="--", lw=1, label="thermostat")
    ax.set(xlabel="time (ps)", ylabel="temperature (K)", title="Temperature")
    ax.legend()

    ax = axes[1, 0]
    for label, r in runs:
        ax.plot(*r.distance_distribution, label=label)
    ax.set(xlabel="interatomic distance r (Å)", ylabel="h(r) (1/Å)",
           title="Distance distribution h(r)")
    ax.legend()

    ax = axes[1, 1]
    for label, r in runs:
        ax.plot(r.time_ps, r.bond_deviation, label=label)
    ax.axhline(BOND_BREAK_A, color="r", ls="--", lw=1, label=f"{BOND_BREAK_A} Å: broken")
    ax.set(xlabel="time (ps)", ylabel="largest bond-length change (Å)",
           title="Bond-length deviation")
    ax.legend()

    fig.tight_layout()
    return _save(fig, path)


def plot_distill_report(report: dict, errors, path) -> Path:
    """The figure of an on-policy distillation run (:func:`ase_distilled.distill.distill`).

    Panels: force RMSE per segment (0: the starting student) on the held-out
    systems and the reference set, with the target; the student's predicted force
    error against its true error per structure (``errors``, from
    :func:`ase_distilled.models.uncertainty.structure_errors`, or None); the share
    of the student's MD runs per segment that broke no bond, and the final stability.
    """
    plt = _pyplot()
    fig, (ax_err, ax_unc, ax_md) = plt.subplots(1, 3, figsize=(15, 4.5))
    history = [report["baseline"]] + report["segments"]
    for name in ("held-out at rest", "held-out teacher 300 K", "reference held-out"):
        values = [h["metrics"].get(name, {}).get("force_rmse") for h in history]
        if any(v is not None for v in values):
            ax_err.plot(range(len(history)), values, "o-", label=name)
    ax_err.axhline(report["config"]["target_rmse"], color="k", ls=":", label="target")
    ax_err.set(xlabel="segment (0: start)", ylabel="force RMSE (eV/Å)", yscale="log",
               title=f"Errors against the teacher ({report['stop_reason']})")
    ax_err.legend(fontsize=8)
    if errors is not None:
        predicted, true = errors["predicted_rmse"], errors["true_rmse"]
        ax_unc.loglog(predicted, true, ".", alpha=0.6)
        low = min(predicted.min(), true.min())
        high = max(predicted.max(), true.max())
        ax_unc.plot([low, high], [low, high], "k:", label="predicted = true")
        rho = (report.get("uncertainty") or {}).get("spearman_structures")
        ax_unc.set_title(f"Uncertainty vs error (Spearman {_fmt(rho, '.2f')})")
        ax_unc.legend(fontsize=8)
    ax_unc.set(xlabel="predicted force RMSE (eV/Å)", ylabel="true force RMSE (eV/Å)")
    segments = report["segments"]
    runs = [sum(run["systems"] for run in s["md"]) for s in segments]
    ax_md.bar([s["segment"] for s in segments],
              [1 - s["broken_runs"] / max(n, 1) for s, n in zip(segments, runs)],
              color="tab:green")
    stability = report["stability"]
    ax_md.set(xlabel="segment", ylabel="share of student MD runs with no broken bond",
              ylim=(0, 1.05), title=f"Stability; final NVT 300 K, {stability['ps']:g} ps: "
                                    f"{stability['stable']}/{stability['systems']} stable")
    fig.tight_layout()
    return _save(fig, path)


def _fmt(value, spec=".3f"):
    return "n/a" if value is None else format(value, spec)
