"""Model cards: a student's Markdown description, generated from its checkpoint metadata.

Nothing in a card is typed by hand: every number comes from the metadata the
training and evaluation wrote, and a missing measurement reads "not measured".
"""

NOT_MEASURED = "not measured"


def _fmt(value, spec):
    return NOT_MEASURED if value is None else format(value, spec)


def _hydrogen_wall(meta, key, amounts, heading, what) -> list:
    """Card lines for one hydrogen probe of the recipe's evaluation (none if not measured):
    the teacher's mean energy rise per amount and the student's relative error."""
    probe = meta.get("metrics", {}).get(key)
    if not probe:
        return []
    lines = ["", f"{what} ({probe['bonds']} hydrogens of the MD test molecules, one at a "
             "time, all else at rest): energy rise against the teacher's.", "",
             f"| {heading} | teacher rise (eV) | student error: mean | lowest (softest) |",
             "|---|---|---|---|"]
    return lines + [f"| {amount:g} | {rise:.2f} | {mean:+.1%} | {low:+.1%} |"
                    for amount, rise, mean, low in zip(
                        probe[amounts], probe["teacher_mean_eV"],
                        probe["mean_relative_error"], probe["lowest_relative_error"])]


def _force_row(label, m):
    return (f"| {label} | {m.get('num_atoms', '')} | {_fmt(m.get('r2'), '.4f')} | "
            f"{_fmt(m.get('rmse'), '.4f')} | {_fmt(m.get('mae'), '.4f')} | "
            f"{_fmt(m.get('angle_deg'), '.2f')} | {_fmt(m.get('p95'), '.4f')} |")


def render_model_card(name: str, model) -> str:
    """Markdown model card of ``model`` (a PaiNN with ``.metadata``) shipped as ``name``."""
    meta = getattr(model, "metadata", {}) or {}
    teacher, data, training = (meta.get(k, {}) for k in ("teacher", "data", "training"))
    test = meta.get("metrics", {}).get("test_by_level", {})
    md, speed = meta.get("md", {}), meta.get("speed", {})
    files = data.get("files", [data])
    config = model.config
    lines = [
        f"# ase-distilled student `{name}`",
        "",
        f"PaiNN, {model.num_parameters():,} parameters (hidden {config.hidden}, "
        f"{config.num_interactions} interactions, {config.num_rbf} radial functions, "
        f"cutoff {config.cutoff} Å). Conservative: forces = -dE/dr.",
        "",
        "## Teacher",
        f"{teacher.get('name', NOT_MEASURED)} via {teacher.get('package', '?')} "
        f"{teacher.get('version', '')} (weights: {teacher.get('weights') or 'none needed'}).",
        "",
        "## Data",
        f"- {data.get('structures', NOT_MEASURED)} labelled structures: "
        + ", ".join(f"{n} {part}" for part, n in data.get("sizes", {}).items() if n)
        + ("; " + ", ".join(_file_digest(f) for f in files) if files else ""),
        f"- elements: {' '.join(config.elements)}",
        f"- split: {data.get('split', NOT_MEASURED)}",
        f"- {meta.get('data_description', '')}",
        "",
        "## Held-out accuracy against the teacher",
        meta.get("test_description", ""),
        "",
        "| structures | atoms | force R² | RMSE (eV/Å) | MAE (eV/Å) | mean angle (°) | "
        "P95 error (eV/Å) |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [_force_row(level, m) for level, m in test.items()] or [
        f"| {NOT_MEASURED} | | | | | | |"]
    energy = meta.get("metrics", {}).get("test_energy_mae_per_atom")
    pairs = meta.get("metrics", {}).get("test_conformer_energy_difference")
    lines += ["", f"Energy MAE per atom (pooled test): {_fmt(energy, '.4f')} eV/atom."]
    if pairs:
        lines.append(f"Energy difference between the two conformers of each of {pairs['pairs']} "
                     f"test molecules: MAE {pairs['mae_meV']:.0f} meV against the teacher's "
                     f"(whose differences average {pairs['teacher_mean_abs_meV']:.0f} meV).")
    lines += _hydrogen_wall(meta, "test_hydrogen_pull", "pulls_A", "pulled by (Å)",
                            "Bonds to hydrogen pulled longer")
    lines += _hydrogen_wall(meta, "test_hydrogen_push", "pushes_deg", "bent by (°)",
                            "Hydrogens bent toward their nearest neighbour about their partner")
    lines.append("")
    lines += ["## MD stability", md.get("summary", NOT_MEASURED), ""]
    lines += _uncertainty(meta) + _specialisation(meta)
    lines += ["## Speed", speed.get("summary", NOT_MEASURED), ""]
    exports = meta.get("export", {})
    lines += ["## Exports (`ase-distilled export`)",
              "Largest relative difference from the eager float32 model on reference "
              "molecules and a periodic cell (INT8 is approximate by design):", "",
              "| file | energy | forces | stress |", "|---|---|---|---|"]
    lines += [f"| {file} | {_fmt(p.get('energy_rel'), '.1e')} | {_fmt(p.get('forces_rel'), '.1e')}"
              f" | {_fmt(p.get('stress_rel'), '.1e')} |" for file, p in exports.items()] or [
        f"| {NOT_MEASURED} | | | |"]
    lines.append("")
    lines += [
        "## Training",
        f"{training.get('epochs_completed', NOT_MEASURED)} epochs "
        f"(best {training.get('best_epoch')}, stop: {training.get('stop_reason')}), "
        f"batch {_batch(training)}, "
        f"lr {training.get('lr')}, loss weights energy {training.get('energy_weight')} / "
        f"forces {training.get('forces_weight')}, EMA {training.get('ema_decay')}, "
        f"force loss {training.get('force_loss', 'mse')}{_weighting(training)}, "
        f"seed {training.get('seed')}. "
        + _lineage(training) + "Recipe: `train/` in the source repository.",
        "",
        "## Limits",
        "- Isolated, neutral, closed-shell molecules only (the teacher saw no charges, radicals, "
        "surfaces or bulk); elements " + ", ".join(config.elements) + " only: others are "
        "rejected with an error.",
        "- Drug-like organic chemistry (MOSES: 250-350 Da); far from it, expect larger errors.",
        "- It reproduces its teacher, not experiment: the teacher's own errors are inherited.",
        "- Not for breaking bonds: the energy of pulling atoms apart is learnt only as far as "
        "the training data stretched them (see the hydrogen pulls above, where measured).",
        "",
    ]
    return "\n".join(lines)


def _file_digest(entry: dict) -> str:
    # The content digest reproduces when the recipe regenerates a file; the byte
    # sha256 (all that checkpoints trained before it was recorded have) does not.
    if entry.get("content_sha256"):
        return f"`{entry.get('file')}` content sha256 `{entry['content_sha256'][:16]}…`"
    return f"`{entry.get('file')}` sha256 `{str(entry.get('sha256', ''))[:16]}…`"


def _batch(training: dict) -> str:
    """Structures per step; under torchrun, per process and how many processes."""
    world = training.get("world_size") or 1
    if world == 1:
        return f"{training.get('batch_size')}"
    return f"{training.get('batch_size')} per process x {world} processes"


def _weighting(training: dict) -> str:
    """Structure weights and the group choosing the best epoch, where the run set them."""
    text = ""
    if training.get("group_weights"):
        text += f", structure weights {training['group_weights']}"
    if training.get("select_group"):
        text += (f", best epoch by the validation force MAE of {training['select_group']!r} "
                 f"structures")
    return text


def _lineage(training: dict) -> str:
    """A sentence on the rounds of fine-tuning that led to this student, oldest first."""
    rounds = [training]
    while rounds[-1].get("init_training"):
        rounds.append(rounds[-1]["init_training"])
    if len(rounds) == 1:
        return ""
    earlier = ", ".join(f"{r.get('epochs_completed')} epochs (force loss "
                        f"{r.get('force_loss', 'mse')}, {r.get('train_structures')} training "
                        f"structures)" for r in reversed(rounds[1:]))
    total = sum(r.get("epochs_completed") or 0 for r in rounds)
    return (f"Trained in {len(rounds)} rounds, each starting from the last: {earlier}, then "
            f"this one: {total} epochs in all. ")


def _uncertainty(meta: dict) -> list:
    """The uncertainty's calibration and how well it ranks errors, where measured."""
    report = meta.get("metrics", {}).get("uncertainty")
    if not report:
        return ["## Uncertainty", NOT_MEASURED, ""]
    fit = report["calibration"]
    lines = ["## Uncertainty",
             "`calc.results[\"forces_uncertainty\"]` (per atom) and `[\"energy_uncertainty\"]`: "
             "latent distance of each atom's features from the training set's, calibrated to "
             f"eV/Å as {fit['force_fit'][0]:.3f} + {fit['force_fit'][1]:.3f} x distance on "
             f"{fit['structures']} held-out structures; the calculator warns past "
             f"{fit['threshold']:.3f} eV/Å (the largest per-atom uncertainty that 99 % of "
             "in-distribution structures stay below)."]
    measured = [(name, r) for name, r in report.items() if isinstance(r, dict)
                and "spearman_molecules" in r]
    if measured:
        lines += ["", "How well it ranks true errors (Spearman correlation of predicted and true "
                  "force RMSE, over molecules and over structures; molecules at rest and "
                  "teacher 300 K frames, none used to fit or calibrate), and the share of "
                  "structures it warns on:",
                  "", "| set | molecules | force RMSE (eV/Å) | Spearman, molecules | "
                  "Spearman, structures | warned |", "|---|---|---|---|---|---|"]
        lines += [f"| {name} | {r['molecules']} | {r['force_rmse']:.3f} | "
                  f"{r['spearman_molecules']:.2f} | {r['spearman_structures']:.2f} | "
                  f"{r['warned_share']:.0%} |" for name, r in measured]
    return lines + [""]


def _specialisation(meta: dict) -> list:
    """Lineage and effect of an on-policy distillation (``ase-distilled distill``)."""
    distill = meta.get("distill")
    if not distill:
        return []
    result = meta.get("metrics", {}).get("distill", {})
    lines = ["## Specialisation (on-policy distillation)",
             f"From `{distill['init']}`, {len(distill['systems']['train'])} training and "
             f"{len(distill['systems']['held_out'])} held-out systems, "
             f"{distill['labelled']['on_policy']} on-policy frames labelled, "
             f"{distill['minutes_spent']:.1f} min; stop: {distill['stop_reason']}.", "",
             "| held-out force RMSE (eV/Å) | before | after |", "|---|---|---|"]
    for name, before in (result.get("baseline") or {}).items():
        after = (result.get("final") or {}).get(name, {}).get("force_rmse")
        lines.append(f"| {name} | {before['force_rmse']:.4f} | {_fmt(after, '.4f')} |")
    if "stability" in result:
        lines += ["", f"NVT 300 K: {result['stability']}/{result['systems']} systems stable."]
    return lines + [""]
