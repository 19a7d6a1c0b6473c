"""PNG plots for the CLI (matplotlib is imported here only, never by the core)."""

from __future__ import annotations

from pathlib import Path

from mamlflow.core.evaluate import EvalResult

__all__ = ["plot_adaptation"]


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
    ax.set_ylabel(results[0].metric)
    ax.set_title(f"{results[0].metric} after adaptation ({results[0].tasks} tasks)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
