"""The report of a prediction run (``group --predict-with``): class probabilities, the confusion
matrix when labels exist, the new cohort beside the training cohort, and with ``--analysis`` the
CPA sections of the group report.

Reads only what the prediction wrote under ``OUTPUT_DIR/group/<run-name>/``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from neurossm_app.files import write_text
from neurossm_app.reports.group import (
    METRIC_NAMES,
    confusion_svg,
    excluded_table,
    group_provenance,
    inputs_section,
)
from neurossm_app.reports.html import Section, figure_to_svg, render_page


def probabilities_svg(scans: pd.DataFrame, classes: list[str]) -> str:
    """Histogram of the ensemble's probability of each class over the scans."""
    fig, ax = plt.subplots(figsize=(6, 3))
    bins = np.linspace(0, 1, 21)
    for name in classes:
        ax.hist(pd.to_numeric(scans[f"prob_{name}"]), bins=bins, alpha=0.6, label=name)
    ax.set_xlabel("ensemble probability")
    ax.set_ylabel("scans")
    ax.legend(fontsize=7)
    return figure_to_svg(fig)


def _tr_text(cohort: dict) -> str:
    return ", ".join(f"{tr} s: {n}" for tr, n in cohort.get("repetition_time", {}).items()) or "n/a"


def _classes_text(cohort: dict) -> str:
    classes = cohort.get("classes", {})
    return ", ".join(f"{k} {v.get('subjects')}/{v.get('scans')}" for k, v in classes.items()) or "none"


def cohort_table(summary: dict) -> pd.DataFrame:
    """The training and the new cohort side by side: subjects, scans, ROIs, volumes, TRs, classes."""
    cohorts = {"training": summary.get("training_cohort", {}), "new": summary.get("dataset", {})}
    rows = [
        {"": label, **{name: c.get(key) for name, c in cohorts.items()}}
        for key, label in (("n_subjects", "subjects"), ("n_scans", "scans"), ("n_rois", "ROIs"))
    ]
    for key in ("min", "median", "max"):
        rows.append({"": f"volumes {key}", **{n: c.get("volumes", {}).get(key) for n, c in cohorts.items()}})
    rows.append({"": "repetition times (scans)", **{n: _tr_text(c) for n, c in cohorts.items()}})
    rows.append({"": "labels (subjects/scans)", **{n: _classes_text(c) for n, c in cohorts.items()}})
    return pd.DataFrame(rows).astype(str)


def _metrics_rows(summary: dict) -> pd.DataFrame | None:
    metrics = summary.get("metrics")
    if not metrics:
        return None
    rows = []
    for level in ("scan", "subject"):
        values = metrics.get(level) or {}
        row = {"level": f"ensemble, per {level}", "n": str(values.get("n"))}
        row |= {label: values.get(key) for key, label in METRIC_NAMES.items()}
        rows.append(row)
    per_model = metrics.get("checkpoints_scan", {})
    row = {"level": "single checkpoints, per scan (mean)", "n": "n/a"}
    row |= {label: (per_model.get(key) or {}).get("mean") for key, label in METRIC_NAMES.items()}
    rows.append(row)
    return pd.DataFrame(rows)


def _model_section(summary: dict) -> Section:
    model = summary.get("model", {})
    section = Section("Model", "model")
    section.text(
        f"{model.get('kind')} {model.get('source')} (run {model.get('run_name')}, preset "
        f"{model.get('preset')}, atlas {model.get('atlas')}): {len(model.get('checkpoints', []))} "
        f"checkpoints; {summary.get('ensemble')}."
    )
    cv = model.get("cross_validation") or {}
    rows = [
        {"model": name, **{label: (values.get(key) or {}).get("mean") for key, label in METRIC_NAMES.items()}}
        for name, values in (cv.get("models") or {}).items()
    ]
    if rows:
        section.table(
            pd.DataFrame(rows), caption=f"In training: {cv.get('protocol')} (mean over folds and seeds)"
        )
    return section


def _predictions_section(scans: pd.DataFrame, subjects: pd.DataFrame, summary: dict) -> Section:
    classes = [str(c) for c in summary.get("classes", [])]
    section = Section("Predictions", "predictions")
    section.figure(probabilities_svg(scans, classes), "Ensemble class probabilities over the new scans.")
    predicted = summary.get("predicted", {})
    section.table(
        pd.DataFrame({"class": classes, **{k: [v.get(c, 0) for c in classes] for k, v in predicted.items()}}),
        caption="Predicted class: scans and subjects",
    )
    metrics = _metrics_rows(summary)
    if metrics is not None:
        section.table(metrics, caption="Where the data give true labels")
    else:
        section.text("The data give no true labels: no metrics.")
    shown = subjects[["subject", "true_label", "n_scans", "predicted_label", *[f"prob_{c}" for c in classes]]]
    section.heading("Per subject").table(shown.head(200), caption="Mean of the subject's scans (first 200)")
    return section


def build_prediction_report(run_dir: str | os.PathLike) -> Path:
    """Write ``RUN_DIR/report.html`` from the prediction's files."""
    run_dir = Path(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    table = pd.read_csv(run_dir / "predictions.tsv", sep="\t", dtype=str, keep_default_na=False)
    table["true_label"] = table["true_label"].replace("n/a", np.nan)
    scans, subjects = table[table["level"] == "scan"], table[table["level"] == "subject"]
    classes = [str(c) for c in summary.get("classes", [])]
    cohorts = Section("New cohort and training cohort", "cohorts")
    cohorts.table(cohort_table(summary), caption="Counts, lengths and repetition times of both cohorts")
    excluded_table(cohorts, summary.get("dataset", {}).get("excluded"))
    sections = [_model_section(summary), _predictions_section(scans, subjects, summary), cohorts]
    labelled = scans[scans["true_label"].notna()]
    if not labelled.empty:
        svg, counts = confusion_svg(labelled.assign(model="ensemble"), classes, "ensemble")
        confusion = Section("Confusion matrix", "confusion")
        confusion.figure(svg, f"Ensemble, the {len(labelled)} scans with a true label.")
        confusion.table(counts, caption="Counts (rows true, columns predicted)")
        sections.append(confusion)
    sections += [s for s in (inputs_section(summary),) if s is not None]
    from neurossm_app.reports.cpa import cpa_sections

    sections.extend(cpa_sections(run_dir))
    sections += [s for s in (group_provenance(summary, {}),) if s is not None]
    title = f"neurossm-app prediction: {summary.get('run_name')}"
    dataset = summary.get("dataset", {})
    intro = (
        f"The NeuroSSM ensemble of {summary.get('model', {}).get('run_name')} applied to "
        f"{dataset.get('n_scans')} scans of {dataset.get('n_subjects')} subjects "
        f"({len(classes)} classes: {', '.join(classes)})."
    )
    return write_text(run_dir / "report.html", render_page(title, intro, sections))
