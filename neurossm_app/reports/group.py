"""The group report: dataset, metrics per model (NeuroSSM vs baselines), confusion matrices, ROC
curves, learning curves, and with ``--analysis`` the CPA pathway weights, brain maps and scores.

Reads only what the group level wrote under ``OUTPUT_DIR/group/<run-name>/``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from neurossm_app.files import read_tsv, write_text
from neurossm_app.reports.html import Section, figure_to_svg, provenance_section, render_page

METRIC_NAMES = {
    "accuracy": "accuracy",
    "balanced_accuracy": "balanced accuracy",
    "f1_macro": "macro F1",
    "roc_auc": "ROC-AUC",
}


def _read_str_tsv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)


def metrics_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """Mean ± SD of each metric per model, over folds and seeds."""
    rows = []
    for model, group in metrics.groupby("model", sort=False):
        row = {"model": model, "units": len(group)}
        for key, label in METRIC_NAMES.items():
            values = pd.to_numeric(group[key], errors="coerce").dropna()
            sd = values.std(ddof=1) if len(values) > 1 else float("nan")
            row[label] = f"{values.mean():.3f} ± {sd:.3f}" if len(values) else "n/a"
        rows.append(row)
    return pd.DataFrame(rows)


def metrics_svg(metrics: pd.DataFrame) -> str:
    """Bar chart of mean metric per model with SD error bars."""
    models = list(dict.fromkeys(metrics["model"]))
    fig, ax = plt.subplots(figsize=(8, 3.2))
    width = 0.8 / max(len(models), 1)
    x = np.arange(len(METRIC_NAMES))
    for i, model in enumerate(models):
        rows = metrics[metrics["model"] == model]
        values = [pd.to_numeric(rows[k], errors="coerce") for k in METRIC_NAMES]
        means = [v.mean() for v in values]
        sds = [v.std(ddof=1) if v.count() > 1 else 0 for v in values]
        ax.bar(x + i * width, means, width, yerr=sds, capsize=3, label=model)
    ax.set_xticks(x + width * (len(models) - 1) / 2)
    ax.set_xticklabels(list(METRIC_NAMES.values()))
    ax.set_ylim(0, 1.05)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_ylabel("score (mean ± SD over folds and seeds)")
    return figure_to_svg(fig)


def confusion_svg(predictions: pd.DataFrame, classes: list[str], model: str) -> tuple[str, pd.DataFrame]:
    """Confusion matrix of one model, pooled over folds and seeds (rows: true, columns: predicted)."""
    rows = predictions[predictions["model"] == model]
    counts = pd.crosstab(rows["true_label"], rows["predicted_label"]).reindex(
        index=classes, columns=classes, fill_value=0
    )
    fig, ax = plt.subplots(figsize=(1.2 + 0.6 * len(classes), 1 + 0.6 * len(classes)))
    ax.imshow(counts.to_numpy(), cmap="Blues")
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, int(counts.iat[i, j]), ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(classes)))
    ax.set_xticklabels(classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)))
    ax.set_yticklabels(classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(model, fontsize=10)
    table = counts.reset_index().rename(columns={"true_label": "true \\ predicted"})
    return figure_to_svg(fig), table


def roc_svg(predictions: pd.DataFrame, classes: list[str]) -> str:
    """ROC curves per model (binary) or per class for each model (one-vs-rest), pooled scans."""
    from sklearn.metrics import auc, roc_curve

    fig, ax = plt.subplots(figsize=(5, 4.5))
    for model, rows in predictions.groupby("model", sort=False):
        truth = rows["true_label"].to_numpy()
        targets = classes[1:] if len(classes) == 2 else classes
        for positive in targets:
            scores = pd.to_numeric(rows[f"prob_{positive}"], errors="coerce").to_numpy()
            if len(np.unique(truth == positive)) < 2:
                continue
            fpr, tpr, _ = roc_curve(truth == positive, scores)
            label = model if len(classes) == 2 else f"{model}: {positive}"
            ax.plot(fpr, tpr, lw=1.2, label=f"{label} (AUC {auc(fpr, tpr):.2f})")
    ax.plot([0, 1], [0, 1], color="#999", ls="--", lw=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.legend(fontsize=6, loc="lower right")
    return figure_to_svg(fig)


def learning_svg(histories: dict[str, pd.DataFrame]) -> str:
    """Per epoch and unit (the kept --tune candidate): training loss; training, inner-validation
    and test accuracy (solid, dashed, dotted); a dot on the kept epoch."""
    from neurossm_app.group.learning import kept_candidate, kept_epoch

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    for index, (name, history) in enumerate(histories.items()):
        rows, color = kept_candidate(history), f"C{index % 10}"
        epochs = pd.to_numeric(rows["epoch"])
        axes[0].plot(epochs, pd.to_numeric(rows["loss"]), lw=1, color=color, label=name)
        for column, style in (("train_accuracy", "-"), ("val_accuracy", "--"), ("test_accuracy", ":")):
            if column in rows.columns:
                values = pd.to_numeric(rows[column], errors="coerce")
                axes[1].plot(epochs, values, ls=style, lw=1, color=color)
        kept = kept_epoch(history)
        axes[1].plot([float(kept["epoch"])], [float(kept["train_accuracy"])], "o", ms=3, color=color)
    axes[0].set_ylabel("training loss")
    axes[1].set_ylabel("accuracy: training -, inner validation --, test :")
    for ax in axes:
        ax.set_xlabel("epoch")
    axes[0].legend(fontsize=6, ncol=2)
    return figure_to_svg(fig)


def _dataset_section(summary: dict) -> Section:
    section = Section("Dataset", "dataset")
    dataset = summary.get("dataset", {})
    classes = dataset.get("classes", {})
    rows = [
        {"class": name, **{k: v for k, v in info.items() if not isinstance(v, (dict, list))}}
        for name, info in classes.items()
    ]
    section.text(
        f"Target: {summary.get('target')}; preset: {summary.get('preset')}; "
        f"protocol: {summary.get('protocol')}."
    )
    if rows:
        section.table(pd.DataFrame(rows), caption="Subjects and scans per class")
    facts = {k: v for k, v in dataset.items() if not isinstance(v, (dict, list))}
    if facts:
        section.table(pd.DataFrame({"item": list(facts), "value": [str(v) for v in facts.values()]}))
    chance = summary.get("chance", {})
    if chance:
        section.text(
            "Chance level: majority-class accuracy "
            f"{chance.get('majority_class_accuracy', float('nan')):.3f}, balanced accuracy "
            f"{chance.get('balanced_accuracy', float('nan')):.3f}."
        )
    times = dataset.get("repetition_time", {})
    if times:
        section.table(
            pd.DataFrame({"repetition time (s)": list(times), "scans": list(times.values())}),
            caption="Repetition times (windows are counted in volumes, as in the original study)",
        )
    excluded_table(section, dataset.get("excluded"))
    return section


def excluded_table(section: Section, excluded: list | None) -> None:
    """The subjects and scans left out of the run, with the reason for each."""
    if excluded is None:
        return
    if not excluded:
        section.text("No selected subject or scan was left out.")
        return
    rows = [
        {
            "subject": e.get("subject"),
            "scans left out": f"{len(e.get('scans', []))}: {', '.join(e.get('scans', [])[:5])}"
            + (" ..." if len(e.get("scans", [])) > 5 else ""),
            "reason": e.get("reason"),
        }
        for e in excluded
    ]
    section.table(
        pd.DataFrame(rows), caption="Left out of the run (missing label, atlas or sidecar; short runs)"
    )


def inputs_section(summary: dict) -> Section | None:
    """How the inputs were made (the participant-level settings they share) and the fMRIPrep version."""
    inputs = summary.get("inputs")
    if not inputs:
        return None
    section = Section("Inputs", "inputs")
    fmriprep = inputs.get("fmriprep", {})
    versions = inputs.get("participant_neurossm_app", {})
    section.text(
        f"fMRIPrep version: {fmriprep.get('version', 'unknown')}"
        + (
            f" (from {', '.join(fmriprep['dataset_description'])})"
            if fmriprep.get("dataset_description")
            else ""
        )
        + "; participant level: neurossm-app "
        + ", ".join(f"{v} ({n} scans)" for v, n in versions.items())
        + ". Every scan was made with the settings below (the group level refuses a mixture)."
    )
    settings = inputs.get("participant_settings", {})
    if settings:
        shown = [", ".join(map(str, v)) if isinstance(v, list) else str(v) for v in settings.values()]
        section.table(pd.DataFrame({"setting": list(settings), "value": shown}))
    return section


def group_provenance(summary: dict, config: dict) -> Section | None:
    """The neurossm-app version, the exact command line, the date, the run's resolved settings
    (``config.json``), where the units ran and the software versions."""
    provenance = summary.get("provenance")
    if not provenance:
        return None
    section = provenance_section(provenance)
    settings = config.get("settings") or {}
    if settings:
        shown = [", ".join(map(str, v)) if isinstance(v, list) else str(v) for v in settings.values()]
        section.table(
            pd.DataFrame({"setting": list(settings), "value": shown}), caption="Settings of the run"
        )
    backends = summary.get("backends")
    if backends:
        section.text("Where NeuroSSM ran (per unit: device, selective-scan and convolution back end):")
        section.table(pd.DataFrame(backends))
    software = provenance.get("software", {})
    if software:
        section.table(pd.DataFrame({"software": list(software), "version": list(software.values())}))
    return section


def _subject_level(section: Section, summary: dict) -> None:
    """Subject-level results (``summary.json``'s ``subject_level``) beside the scan-level ones."""
    subject_level = summary.get("subject_level")
    if not subject_level:
        return
    rows = []
    for model, values in subject_level.get("models", {}).items():
        row = {"model": model}
        for key in ("accuracy", "balanced_accuracy", "roc_auc"):
            value = values.get(key, {})
            mean, sd = value.get("mean"), value.get("sd")
            row[METRIC_NAMES[key]] = (
                "n/a" if mean is None else f"{mean:.3f}" + (f" ± {sd:.3f}" if sd is not None else "")
            )
        rows.append(row)
    section.heading("Per subject").text(
        f"{subject_level.get('n_subjects')} subject(s); {subject_level.get('prediction')}; "
        f"{subject_level.get('metrics')} (subject_predictions.tsv)."
    )
    section.table(pd.DataFrame(rows), caption="Subject level: mean ± SD over seeds")


def build_group_report(run_dir: str | os.PathLike) -> Path:
    """Write ``RUN_DIR/report.html`` from the run's tables (and CPA outputs when present)."""
    run_dir = Path(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    classes = [str(c) for c in summary.get("classes", [])]
    sections = [_dataset_section(summary)]
    sections += [s for s in (inputs_section(summary),) if s is not None]

    performance = Section("Performance", "performance")
    metrics_file = run_dir / "metrics.tsv"
    if metrics_file.is_file():
        metrics = _read_str_tsv(metrics_file)
        performance.table(metrics_table(metrics), caption="Mean ± SD over folds and seeds")
        performance.figure(
            metrics_svg(metrics), "Mean metric per model; error bars: SD over folds and seeds."
        )
        per_unit = metrics.copy()
        for key in METRIC_NAMES:
            per_unit[key] = pd.to_numeric(per_unit[key], errors="coerce")
        performance.heading("Per fold and seed").table(per_unit)
        _subject_level(performance, summary)
    else:
        performance.text("No unit has finished yet; re-run the group level to train and aggregate.")
    sections.append(performance)

    predictions_file = run_dir / "predictions.tsv"
    if predictions_file.is_file():
        predictions = _read_str_tsv(predictions_file)
        confusion = Section("Confusion matrices", "confusion")
        for model in dict.fromkeys(predictions["model"]):
            svg, table = confusion_svg(predictions, classes, model)
            confusion.heading(model).figure(svg, f"{model}: held-out scans pooled over folds and seeds.")
            confusion.table(table, caption=f"{model}: counts (rows true, columns predicted)")
        sections.append(confusion)
        sections.append(
            Section("ROC curves", "roc").figure(
                roc_svg(predictions, classes),
                "Held-out scans pooled over folds and seeds; one-vs-rest per class when there are "
                "more than two.",
            )
        )

    histories = {
        folder.name: read_tsv(folder / "history.tsv")
        for folder in sorted((run_dir / "units").glob("fold-*_seed-*"))
        if (folder / "history.tsv").is_file()
    }
    if histories:
        learning = Section("Learning curves", "learning")
        from neurossm_app.group.learning import learning_table

        if (summary.get("overfitting") or {}).get("warning"):
            learning.text(f"Warning: {summary['overfitting']['warning']}")
        learning.figure(
            learning_svg(histories),
            "NeuroSSM per epoch, per fold and seed: training loss; accuracy on the training windows, "
            "the inner validation split (chooses the kept epoch, dot) and the test fold (shown only, "
            "never used to choose).",
        )
        learning.table(learning_table(histories), caption="The kept epoch of every unit")
        sections.append(learning)

    from neurossm_app.reports.cpa import cpa_sections

    sections.extend(cpa_sections(run_dir))
    config_file = run_dir / "config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    sections += [s for s in (group_provenance(summary, config),) if s is not None]
    title = f"neurossm-app group report: {summary.get('run_name', run_dir.name)}"
    intro = (
        f"NeuroSSM classification of {summary.get('target')} "
        f"({len(classes)} classes: {', '.join(classes)}) with {summary.get('protocol')}."
    )
    return write_text(run_dir / "report.html", render_page(title, intro, sections))


def safe_anchor(text: str) -> str:
    """An HTML id from free text."""
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()
