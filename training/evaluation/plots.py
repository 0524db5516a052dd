"""Training curves and hyper-parameter searches as PNG: a person reads a curve faster than a column of numbers."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import EngFormatter, MaxNLocator

from training.progress import TrainingHistory

if TYPE_CHECKING:
    import optuna


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


def plot_search(study: optuna.Study, path: Path, title: str, metric: str,
                final_round: optuna.Study | None = None) -> Path:
    """A hyper-parameter search (`training.tuning.search`): each trial's value (a pruned one at its last reported epoch)
    with the best so far, and the chosen trial's settings (its user attribute "settings"): the best one, or the
    best of the `final_round` (the finalists trained again at the full budget, listed with their values)."""
    from optuna.trial import TrialState

    fig, (ax, ax_text) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [3, 2]})
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED and t.intermediate_values]
    ax.plot([t.number for t in complete], [t.value for t in complete], "o", label="complete")
    if pruned:
        ax.plot([t.number for t in pruned], [t.intermediate_values[max(t.intermediate_values)] for t in pruned],
                "x", color="grey", label="pruned (last epoch reported)")
    best, best_so_far = -float("inf"), []
    for t in complete:
        best = max(best, t.value)
        best_so_far.append(best)
    ax.step([t.number for t in complete], best_so_far, where="post", color="C3", label="best so far")
    ax.set_xlabel("trial")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(f"validation {metric}")
    ax.legend()
    ax.grid(alpha=0.3)
    chosen = (final_round or study).best_trial
    if final_round:
        lines = ["at the full budget:"] + [f"  trial {t.user_attrs['search_trial']}: {metric} {t.value:.4f}"
                                           for t in final_round.trials if t.value is not None]
        lines += [f"chosen: trial {chosen.user_attrs['search_trial']}", ""]
    else:
        lines = [f"best: trial {chosen.number}, {metric} {chosen.value:.4f}", ""]
    lines += [f"{name} = {value:.4g}" if isinstance(value, float) else f"{name} = {value}"
              for name, value in chosen.user_attrs["settings"].items()]
    ax_text.axis("off")
    ax_text.text(0.0, 1.0, "\n".join(lines), va="top", family="monospace", fontsize=9, transform=ax_text.transAxes)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_prequential(result: dict, path: Path, title: str) -> Path:
    """A prequential replay (`training.prequential`'s result): per slice, each policy's hit-rate@20 and its share
    of clicks on items the serving version did not know."""
    slices = [entry["slice"] for entry in result["slices"]]
    x = range(len(slices))
    fig, (ax_hits, ax_unknown) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, policy in result["policies"].items():
        hit_rate = [entry[f"hit_rate@{result['cutoff']}"] for entry in policy["slices"]]
        overall = policy["overall"][f"hit_rate@{result['cutoff']}"]
        ax_hits.plot(x[: len(hit_rate)], hit_rate, "o-", lw=1.2, ms=3, label=f"{name} ({overall:.4f} overall)")
        ax_unknown.plot(x[: len(hit_rate)], [entry["unknown_share"] for entry in policy["slices"]], "o-", lw=1.2,
                        ms=3, label=name)
    for ax, label in ((ax_hits, f"hit-rate@{result['cutoff']}"), (ax_unknown, "clicks on items it does not know")):
        tilted = len(slices) > 6
        ax.set_xticks(list(x), slices, rotation=45 if tilted else 0, ha="right" if tilted else "center", fontsize=8)
        if len(slices) > 20:
            ax.xaxis.set_major_locator(MaxNLocator(12, integer=True))
        ax.set_xlabel(f"slice ({result['stream']['slicing']})")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax_unknown.set_ylim(bottom=0)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
