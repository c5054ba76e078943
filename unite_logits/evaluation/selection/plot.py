"""The top-k agreement heatmap (``<task>.select.png``), optional: needs matplotlib.

Drawn on a `matplotlib.figure.Figure` of its own, so the caller's pyplot state and
backend are left alone.
"""

from __future__ import annotations

import logging
from pathlib import Path

from unite_logits.evaluation.selection.render import SelectReport

__all__ = ["save_heatmap"]

logger = logging.getLogger(__name__)


def save_heatmap(report: SelectReport, out_dir: Path) -> Path | None:
    """Write the heatmap and return its path; None (with a warning) without matplotlib."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        logger.warning("heatmap skipped: matplotlib is not installed (pip install matplotlib)")
        return None
    names = [c.name for c in report.candidates]
    grid = [[1.0 if a == b else 0.0 for b in names] for a in names]
    for p in report.pairs:
        i, j = names.index(p.a), names.index(p.b)
        grid[i][j], grid[j][i] = p.top_k_agreement_a_in_b or 0.0, p.top_k_agreement_b_in_a or 0.0
    fig = Figure(figsize=(1.2 * len(names) + 2, 1.2 * len(names) + 1))
    ax = fig.subplots()
    image = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_title("top-1 of row in top-k of column")
    fig.colorbar(image)
    fig.tight_layout()
    path = Path(out_dir) / f"{report.task}.select.png"
    fig.savefig(path)
    return path
