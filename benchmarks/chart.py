"""A PNG of the results: one panel per scenario, its headline metric per contender.

Bars are medians, whiskers min–max; targets are drawn as dashed lines. Needs matplotlib
(in the ``test`` and ``bench`` extras); without it the chart is skipped with a message.
"""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path

log = logging.getLogger(__name__)

#: Per scenario: (metric, axis label, target line or None); LOG: panels on a log axis.
PANELS = {
    "large": ("bars_per_s", "1-min bars/s as pandas", None),
    "small": ("req_per_s", "small requests/s (1-hour bars)", None),
    "pacing": ("of_bound", "share of the pacing bound", 0.95),
    "tiny": ("median_ms", "tiny request round trip, ms", None),
    "startup": ("per_conn_mb", "MB per connection", 70.0),
    "recovery": ("restart_after_s", "s to finish after gateway restart", None),
    "scale": ("wall_per_bound", "wall / IB's bound (lower is better)", 1.3),
    "gateways": ("rate", "small-bar req/s at the gateways", None),
    "ib_latency": ("wall_per_bound", "wall / bound on IB's answer times", None),
    "store_read": ("load_data_speed", "time / load_data's (load_data speed)", 0.8),
}
LOG = {"ib_latency"}  # the serial row is tens of times the others


def _panel_title(title: str, label: str) -> str:
    """"3. Pacing-bound ..." -> "3. <label>"; "Scale: backfill ..." -> "Scale: <label>"."""
    head = title.split(".", 1)[0]
    return f"{head}. {label}" if head.isdigit() else f"{title.split(':', 1)[0]}: {label}"


def draw(results: dict, path: Path) -> Path | None:
    """Write the chart to ``path``; None (and a log message) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no chart (pip install -e '.[bench]')")
        return None
    panels = [(name, PANELS[name]) for name, sc in results["scenarios"].items()
              if name in PANELS and sc.get("contenders")]
    if not panels:
        return None
    cols = min(3, len(panels))
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.9 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (name, (metric, label, target)) in zip(axes.flat, panels, strict=False):
        sc = results["scenarios"][name]
        names, med, low, high, colors = [], [], [], [], []
        for cname, row in sc["contenders"].items():
            s = row["summary"].get(metric)
            if s is None:
                continue
            names.append(row["label"].replace(",", ""))
            med.append(s["median"])
            low.append(s["median"] - s["min"])
            high.append(s["max"] - s["median"])
            farm = cname.startswith("farm") or "farm" in row["label"]
            colors.append("#2b6cb0" if farm else "#a0aec0")
        ax.bar(range(len(names)), med, yerr=[low, high], color=colors, capsize=3)
        if len(names) > 8:  # many rows (the scale scenario): labels on their side
            ax.set_xticks(range(len(names)), names, fontsize=6, rotation=90)
        else:
            ax.set_xticks(range(len(names)), [textwrap.fill(n, 11) for n in names], fontsize=7)
        ax.set_title(textwrap.fill(_panel_title(sc["title"], label), 60), fontsize=9)
        ax.tick_params(axis="y", labelsize=8)
        if target is not None:
            ax.axhline(target, color="#c53030", linestyle="--", linewidth=1)
        if name in LOG:
            ax.set_yscale("log")
    m = results["machine"]
    fig.suptitle(f"ibfarm benchmark, {m['cpus']} CPUs, {results['gateway']['kind']} gateway "
                 f"({results['started'][:10]}); median, min–max over "
                 f"{results['args'].get('repeats')} repeats", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
