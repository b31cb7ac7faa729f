"""Result tables (CSV + Markdown), bar charts, and the per-class / per-group report of a semantic evaluation."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .semantic import ConfusionAccumulator, summary_scores

def _fmt(v) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4f}"
    return str(v)


def write_table(rows: Sequence[Mapping], columns: Sequence[str], csv_path: Path, md_path: Path,
                headers: Sequence[str] | None = None, title: str = "") -> str:
    """Write rows as CSV and as a Markdown table; returns the Markdown."""
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for r in rows:
            writer.writerow([_fmt(r.get(c, "")) for c in columns])
    headers = list(headers or columns)
    lines = ([f"### {title}", ""] if title else []) + [
        "| " + " | ".join(headers) + " |", "|" + "|".join(["---"] * len(headers)) + "|"]
    lines += ["| " + " | ".join(_fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    md = "\n".join(lines) + "\n"
    md_path.write_text(md)
    return md


def bar_chart(rows: Sequence[Mapping], key: str, label_key: str, path: Path, title: str, ylabel: str) -> Path:
    """A bar chart PNG of ``row[key]`` per ``row[label_key]`` (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [str(r[label_key]) for r in rows]
    values = [0.0 if (r[key] is None or math.isnan(r[key])) else float(r[key]) for r in rows]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.55 * len(rows) + 1.5), 3.6))
    ax.bar(range(len(rows)), values, color="#4C72B0")
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(labels, rotation=45, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    for i, v in enumerate(values):
        ax.text(i, v + 0.01, f"{v:.2f}", ha="center", va="bottom", fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_reports(acc: ConfusionAccumulator, class_names: Sequence[str], output_dir: str | Path,
                  group_name: str = "organ") -> dict:
    """Per-class and per-group tables (CSV + Markdown), the group F1 bar chart and ``summary.json``."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    overall = summary_scores(acc.total)
    class_rows = acc.per_class_rows(class_names)
    class_rows.append({"class": "mean (cells)", "iou": overall["iou"], "precision": overall["precision"],
                       "f1": overall["f1"], "pixels": int(acc.total[1:].sum())})
    md = write_table(class_rows, ["class", "iou", "precision", "f1", "pixels"], out / "per_class.csv",
                     out / "per_class.md", ["Class", "IoU", "Precision", "F1", "GT pixels"], "Per cell class")
    md += f"\nPixel accuracy {_fmt(overall['pa'])}, frequency-weighted IoU {_fmt(overall['fwiou'])}\n"
    (out / "per_class.md").write_text(md)
    group_rows = acc.per_group_rows()
    stats = list(group_rows)
    if group_rows:
        for label, fn in (("Average", np.nanmean), ("STD", np.nanstd)):
            row = {"group": label, "n": sum(r["n"] for r in group_rows) if label == "Average" else ""}
            for k in ("iou", "fwiou", "f1", "pa"):
                vals = np.array([r[k] for r in group_rows], np.float64)
                row[k] = float(fn(vals)) if np.any(~np.isnan(vals)) else float("nan")
            stats.append(row)
    group_md = write_table(stats, ["group", "n", "iou", "fwiou", "f1", "pa"], out / f"per_{group_name}.csv",
                           out / f"per_{group_name}.md",
                           [group_name.capitalize(), "Images", "IoU", "FWIoU", "F1", "PA"], f"Per {group_name}")
    chart = bar_chart(group_rows, "f1", "group", out / f"{group_name}_f1.png", f"F1 per {group_name} (mean over cell classes)",
                      "F1") if group_rows else None
    summary = {"overall": overall, "per_class": class_rows, f"per_{group_name}": group_rows,
               "confusion_matrix": acc.total.tolist(), "class_names": list(class_names)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float, allow_nan=True))
    return {"overall": overall, "markdown": md + "\n" + group_md, "chart": str(chart) if chart else None}

