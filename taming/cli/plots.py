"""Figures of the demos: training curves read from TensorBoard event files, and labelled image grids."""
from pathlib import Path
from typing import Optional, Sequence

import numpy as np


def read_scalars(log_dir: Path, tags) -> dict:
    """{tag: [(step, value), ...]} of the scalars logged under `log_dir`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    events.Reload()
    found = set(events.Tags()["scalars"])
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in tags if tag in found}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(scalars: dict, path: Path, train_tags, val_tags, ylabel: str, val_ylabel: str = None,
                marks: Optional[dict] = None) -> None:
    """Training curves (raw and 5-point mean) and validation points; on a second panel when `val_ylabel` is given.
    `marks` {step: label} draws labelled vertical lines on every panel (e.g. where the GAN loss starts)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2 if val_ylabel else 1, figsize=(10 if val_ylabel else 6, 3.6), squeeze=False)
    for tag in (t for t in train_tags if t in scalars):
        steps, values = zip(*scalars[tag])
        line, = axes[0, 0].plot(steps, values, alpha=0.3)
        smooth = [sum(values[max(0, i - 4):i + 1]) / len(values[max(0, i - 4):i + 1]) for i in range(len(values))]
        axes[0, 0].plot(steps, smooth, color=line.get_color(), label=f"{tag} (5-point mean)")
    val_ax = axes[0, -1]
    for tag in (t for t in val_tags if t in scalars):
        steps, values = zip(*scalars[tag])
        val_ax.plot(steps, values, "o-", label=tag)
    for ax, label in zip(axes[0], (ylabel, val_ylabel)):
        for step, text in (marks or {}).items():
            ax.axvline(step, color="gray", linestyle="--", linewidth=1, label=text)
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def labelled_grid(rows: Sequence[np.ndarray], row_labels: Sequence[str], column_labels: Sequence[str],
                  path: Path, title: str = "") -> None:
    """A grid of uint8 H x W x 3 images: rows[r][c] under column label c, each row labelled on the left."""
    plt = _pyplot()
    n_rows, n_cols = len(rows), len(column_labels)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1.1 * n_cols + 1.2, 1.1 * n_rows + 0.6), squeeze=False)
    for r, row in enumerate(rows):
        for c in range(n_cols):
            ax = axes[r, c]
            ax.imshow(row[c], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(column_labels[c], fontsize=8)
            if c == 0:
                ax.set_ylabel(row_labels[r], fontsize=8, rotation=0, ha="right", va="center")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
