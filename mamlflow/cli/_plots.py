"""PNG plots for the CLI (matplotlib is imported here only, never by the core)."""

from __future__ import annotations

import io
from pathlib import Path

import torch
from torch import Tensor

from mamlflow.core import rundir
from mamlflow.engine import EvalResult

__all__ = ["MARKED_UP_TO", "plot_adaptation", "plot_adapted_curve", "plot_learning_curve"]

MARKED_UP_TO = 50
"""Series of at most this many points get a marker on each: a line through one point draws
nothing, and a few points read better as points; longer curves stay plain lines."""


def plot_adaptation(results: list[EvalResult], path: Path) -> None:
    """Metric vs adaptation steps, one line per K, with the 95% interval shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for r in results:
        lo = [m - c for m, c in zip(r.mean, r.ci95, strict=True)]
        hi = [m + c for m, c in zip(r.mean, r.ci95, strict=True)]
        ax.plot(r.steps, r.mean, marker="o", label=f"K={r.shots}")
        ax.fill_between(r.steps, lo, hi, alpha=0.2)
    ax.set_xlabel("adaptation steps")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel(results[0].metric)
    ax.set_title(f"{results[0].metric} after adaptation ({results[0].tasks} tasks)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_learning_curve(metrics: Path, path: Path) -> bool:
    """Meta-loss (RL: returns) vs iteration, and the validation metric vs iteration and time.

    Returns False (and writes nothing) when ``metrics`` holds no record yet.
    """
    records = rundir.read_records(metrics)
    if not records:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    val_key = next(
        (k for r in records for k in r if k.startswith("val_") and not k.endswith("_ci95")), None
    )
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
    iterations = [r["iteration"] for r in records]
    marker = "o" if len(records) <= MARKED_UP_TO else None
    if "return_after" in records[-1]:
        # RL: the surrogate loss is ~0 at the collecting policy; the returns say what happened.
        for key, label in (("return_before", "before adaptation"), ("return_after", "after")):
            axes[0].plot(iterations, [r.get(key) for r in records], marker=marker, label=label)
        axes[0].set_ylabel("mean return (train)")
        axes[0].legend()
    else:
        axes[0].plot(iterations, [r["meta_loss"] for r in records], marker=marker)
        axes[0].set_ylabel("meta-loss (train)")
    axes[0].set_xlabel("iteration")
    validated = [r for r in records if val_key is not None and val_key in r]
    for ax, x_key, label in (
        (axes[1], "iteration", "iteration"),
        (axes[2], "elapsed", "wall-clock (min)"),
    ):
        if validated:
            scale = 1 / 60 if x_key == "elapsed" else 1
            xs = [r[x_key] * scale for r in validated]
            ys = [r[val_key] for r in validated]
            # A ci95 written as null (non-finite) draws no error bar rather than failing.
            ci = [_or_nan(r.get(f"{val_key}_ci95", 0.0)) for r in validated]
            ax.errorbar(xs, ys, yerr=ci, marker="o", capsize=2)
            ax.set_ylabel(val_key.replace("_", " "))
        else:
            ax.text(
                0.5,
                0.5,
                "no validation (train.val_every unset)",
                ha="center",
                transform=ax.transAxes,
            )
        ax.set_xlabel(label)
    for ax in axes[:2]:  # a run of a few iterations would get ticks like 0.96, 0.98, …
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _or_nan(value: float | None) -> float:
    return float("nan") if value is None else value


def plot_adapted_curve(
    before: torch.nn.Module, after: torch.nn.Module, x: Tensor, y: Tensor
) -> bytes:
    """PNG bytes: a 1-d regression's prediction with θ and after adaptation, and the support."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lo, hi = float(x.min()), float(x.max())
    pad = 0.25 * (hi - lo) if hi > lo else 1.0
    grid = torch.linspace(lo - pad, hi + pad, 400)[:, None]
    with torch.no_grad():
        curves = [
            (m(grid.to(_dtype(m))).double().cpu()[:, 0], name)
            for m, name in (
                (before, "meta-learned θ (0 steps)"),
                (after, "adapted"),
            )
        ]
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for values, name in curves:
        ax.plot(grid[:, 0], values, label=name)
    ax.scatter(x.cpu(), y.cpu(), color="black", zorder=3, label=f"support ({len(x)} points)")
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def _dtype(module: torch.nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype
