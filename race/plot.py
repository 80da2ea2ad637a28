"""A bootchart-like milestone timeline: one bar per job, one segment per step of the ladder
(median over seeds, simulated time), a cross where a job stopped (DNF or broken). Written
as SVG or PNG (by the file's suffix) with matplotlib, the optional `plot` extra:
`pip install 'pae-race[plot]'`.
"""
from __future__ import annotations

from pathlib import Path

from .board import Board
from .results import Results


class PlotUnavailable(RuntimeError):
    """matplotlib is not installed."""


def write_timeline(results: Results, path: str | Path) -> Path:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotUnavailable("the timeline needs matplotlib: pip install 'pae-race[plot]'") \
            from None
    b = Board(results)
    jobs = list(b.jobs.values())
    scale, unit = (1e3, "ms") if b.has_mhz() else (1e6, "Mcycles")
    colours = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(11, 0.45 * len(jobs) + 1.6))
    for row, job in enumerate(reversed(jobs)):
        start = 0.0
        for i, m in enumerate(b.ladder):
            end = b.stat(job, m).median
            if end is None or b.stat(job, m).values.__len__() < len(job.records):
                if job.records:
                    ax.plot([start / scale], [row], marker="x", color="red", markersize=9)
                break
            ax.barh(row, (end - start) / scale, left=start / scale, height=0.6,
                    color=colours(i % 10), edgecolor="white",
                    label=m if row == 0 else None)
            start = end
    ax.set_yticks(range(len(jobs)), [j.name for j in reversed(jobs)], fontsize=8)
    ax.set_xlabel(f"simulated time ({unit}), median over seeds")
    ax.set_title(f"race {b.manifest.get('race_id')}: milestones per job", fontsize=10)
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles, labels, fontsize=7, loc="lower right", ncol=2)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, format=path.suffix.lstrip(".") or "svg",
                metadata={"Date": None} if path.suffix == ".svg" else None)
    plt.close(fig)
    return path
