"""Training curves as PNG: a person reads a curve faster than a column of losses."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import EngFormatter

from training.progress import TrainingHistory


def plot_training_curve(history: TrainingHistory, path: Path, title: str) -> Path:
    fig, (ax_loss, ax_speed) = plt.subplots(1, 2, figsize=(11, 4))
    ax_loss.plot(history.curve_events, history.curve_loss, lw=1, label="loss (window mean)")
    epoch_ends = [sum(e.events for e in history.epochs[: i + 1]) for i in range(len(history.epochs))]
    ax_loss.plot(epoch_ends, [e.loss for e in history.epochs], "o-", label="epoch mean")
    ax_loss.set_xlabel("training events")
    ax_loss.xaxis.set_major_formatter(EngFormatter())
    ax_loss.set_ylabel("loss per event")
    ax_loss.legend()
    ax_loss.grid(alpha=0.3)
    ax_speed.bar([e.epoch for e in history.epochs], [e.events_per_second for e in history.epochs])
    ax_speed.set_xlabel("epoch")
    ax_speed.set_xticks([e.epoch for e in history.epochs])
    ax_speed.set_ylabel("events / s")
    ax_speed.grid(alpha=0.3, axis="y")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
