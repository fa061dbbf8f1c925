"""The report's figures: objective against the swept value, curves over epochs and steps, the contact sheet.

Each is drawn with matplotlib from the comparison table and the runs' metric histories, into a PNG file.
"""

from __future__ import annotations

import math
import numbers
from pathlib import Path
from typing import Any

import pandas as pd

from gansweep.export import short_value

__all__ = ["LOG_AXES", "Palette", "colors", "label", "sensitivity", "curves", "contact_sheet"]

LOG_AXES = ("lr", "lr_g", "lr_d")  # swept names drawn on a log axis
_MAX_GRID_VALUES = 12  # more distinct values than this on the swept axis: drawn as points
_FAILED = ("diverged", "mode collapse", "pruned", "failed", "interrupted", "lost")  # as the tables name them
_STYLE = {"figure.dpi": 100, "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False,
          "axes.spines.right": False, "font.size": 9}


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(_STYLE)
    return plt


def colors(variants: list[str]) -> dict[str, Any]:
    plt = _plt()
    cycle = plt.get_cmap("tab10")
    return {v: cycle(i % 10) for i, v in enumerate(variants)}


class Palette:
    """How a trial's line looks in the curves: coloured by its swept value (viridis, on a log scale for learning
    rates), with a line style per variant; by variant alone when nothing numeric was swept."""

    _STYLES = ("-", "--", ":", "-.")

    def __init__(self, table: pd.DataFrame, axis: str | None, variant_colors: dict[str, Any]):
        plt = _plt()
        self.axis, self.variant_colors = axis, variant_colors
        self.styles = {v: self._STYLES[i % len(self._STYLES)] for i, v in enumerate(variant_colors)}
        values = table[axis].dropna() if axis else pd.Series(dtype=float)
        self.numeric = len(values) > 0 and all(isinstance(v, numbers.Number) for v in values)
        if self.numeric:
            import matplotlib.colors as mcolors

            low, high = float(values.min()), float(values.max())
            log = axis in LOG_AXES and low > 0
            self.norm = (mcolors.LogNorm if log else mcolors.Normalize)(low, high if high > low else low * 1.01 + 1e-12)
            self.cmap = plt.get_cmap("viridis")
            self.values = sorted(set(values))

    def line(self, row: pd.Series) -> dict[str, Any]:
        if not self.numeric:
            return {"color": self.variant_colors[row["variant"]], "linestyle": "-"}
        return {"color": self.cmap(self.norm(row[self.axis])), "linestyle": self.styles[row["variant"]]}

    def handles(self) -> list[Any]:
        plt = _plt()
        if not self.numeric:
            return [plt.Line2D([], [], color=c, label=v) for v, c in self.variant_colors.items()]
        shown = self.values if len(self.values) <= _MAX_GRID_VALUES else [self.values[0], self.values[-1]]
        handles = [plt.Line2D([], [], color=self.cmap(self.norm(v)), label=f"{self.axis}={short_value(v)}")
                   for v in shown]
        if len(self.styles) > 1:
            handles += [plt.Line2D([], [], color="grey", linestyle=st, label=v) for v, st in self.styles.items()]
        return handles


def _smoothed(values: list[float]) -> list[float]:
    """An exponential moving average over about a fiftieth of the curve: the trend of a noisy loss."""
    alpha = min(1.0, 50 / max(len(values), 1))
    out, level = [], values[0]
    for value in values:
        level += alpha * (value - level)
        out.append(level)
    return out


def sensitivity(table: pd.DataFrame, axis: str | None, metric: str, colors: dict[str, Any], path: Path,
                floor: float = math.nan) -> None:
    """Objective against the swept value, a line per variant with the seed spread as a band, and the real-data
    floor dashed; failed trials are marked with an x at the top of the axes."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.2), constrained_layout=True)
    failed = table[table["status"].isin(_FAILED)]
    if axis is None:  # no swept value (a variant shootout): one box per variant
        groups = [(v, table[(table["variant"] == v)][metric].dropna()) for v in colors]
        ax.boxplot([g.values if len(g) else [math.nan] for _, g in groups], tick_labels=[v for v, _ in groups])
        ax.set_xlabel("variant")
    else:
        sampled = table[axis].nunique() > _MAX_GRID_VALUES  # a random or TPE search: points, not a curve
        for variant, color in colors.items():
            rows = table[table["variant"] == variant]
            if sampled:
                ax.scatter(rows[axis], rows[metric], color=color, label=variant, s=18)
                continue
            stats = rows.groupby(axis)[metric].agg(["mean", "std", "count"]).reset_index().sort_values(axis)
            ax.plot(stats[axis], stats["mean"], marker="o", color=color, label=variant)
            band = stats["std"].fillna(0)
            ax.fill_between(stats[axis], stats["mean"] - band, stats["mean"] + band, color=color, alpha=0.2)
        for _, row in failed.iterrows():
            ax.plot(row[axis], 1.0, marker="x", color=colors.get(row["variant"], "k"), markersize=9,
                    transform=ax.get_xaxis_transform(), clip_on=False, linestyle="none")
        if axis in LOG_AXES:
            ax.set_xscale("log")
        ax.set_xlabel(axis)
    values = table[metric].dropna()
    if len(values) and (values > 0).all() and values.max() > 30 * values.min():
        ax.set_yscale("log")  # distances spanning orders of magnitude
    if math.isfinite(floor):
        ax.axhline(floor, color="black", linestyle="--", linewidth=0.8, label="real-data floor")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(title="variant (x: diverged/collapsed/pruned)", fontsize=8)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} (test slice) after training: mean, band ± 1 s.d. over seeds")
    fig.savefig(path)
    plt.close(fig)


def curves(histories: dict[str, dict[str, list[tuple[int, float]]]], table: pd.DataFrame, names: list[str],
           palette: Palette, xlabel: str, path: Path, smooth: bool = False,
           floor: tuple[float, float] | None = None, groups: dict[str, list[str]] | None = None,
           x_per_step: dict[str, float] | None = None, better: str | None = None) -> None:
    """One panel per metric, every trial a line styled by `palette`; with `smooth`, the raw values faint behind
    their moving average; with `floor`, the real-data floor as a dashed line and its spread as a grey band.
    `groups` (a title -> run ids) gives each group a row of panels of its own, so that losses on different
    scales (a critic's against a probability's) do not share an axis; `x_per_step` turns a run's steps into
    the x unit (G steps into images seen); `better` ("lower", "higher") is said in each title."""
    plt = _plt()
    groups = groups or {"": list(table["run_id"])}
    fig, axes = plt.subplots(len(groups), len(names), figsize=(4.5 * len(names), 3.4 * len(groups)),
                             constrained_layout=True, squeeze=False)
    for row_axes, (group, members) in zip(axes, groups.items()):
        for ax, name in zip(row_axes, names):
            for _, row in table[table["run_id"].isin(members)].iterrows():
                points = histories.get(row["run_id"], {}).get(name)
                if points:
                    steps, values = zip(*points)
                    scale = (x_per_step or {}).get(row["run_id"], 1.0)
                    steps = [step * scale for step in steps]
                    style = palette.line(row)
                    if smooth:
                        ax.plot(steps, values, color=style["color"], linewidth=0.5, alpha=0.15)
                        values = _smoothed(list(values))
                    ax.plot(steps, values, linewidth=0.9, alpha=0.8, marker="o" if len(steps) == 1 else None,
                            markersize=3, **style)  # a lone point (one window in all) shows as a dot
            if floor is not None and math.isfinite(floor[0]):
                ax.axhline(floor[0], color="black", linestyle="--", linewidth=0.8)
                if math.isfinite(floor[1]):
                    ax.axhspan(floor[0] - floor[1], floor[0] + floor[1], color="grey", alpha=0.2)
            title = f"{name}, {group}" if group else name
            ax.set_title(f"{title} ({better} is better)" if better else title)
            ax.set_xlabel(xlabel)
            ax.xaxis.get_major_locator().set_params(integer=True)  # epochs, steps and images are whole numbers
    handles = palette.handles()
    if floor is not None:
        handles.append(plt.Line2D([], [], color="black", linestyle="--", label="real-data floor ± s.d."))
    axes[0][-1].legend(handles=handles, fontsize=7)
    fig.savefig(path)
    plt.close(fig)


def label(row: pd.Series, axis: str | None, metric: str) -> str:
    swept = f"{axis}={short_value(row[axis])}" if axis and isinstance(row[axis], numbers.Number) else ""
    score = f"{metric} {row[metric]:.3g}" if isinstance(row.get(metric), float) and math.isfinite(row[metric]) \
        else row["status"]
    return f"#{row['trial']} {row['variant']} {swept} s{row['seed']}\n{score}"


def contact_sheet(table: pd.DataFrame, finals: dict[str, Path], axis: str | None, metric: str, path: Path) -> None:
    """The final sample grid of every trial side by side, each labelled with what it ran and how it scored."""
    from PIL import Image

    plt = _plt()
    rows_with_grid = [row for _, row in table.iterrows() if row["run_id"] in finals]
    n = max(len(rows_with_grid), 1)
    columns = min(n, max(3, math.ceil(math.sqrt(n * 1.3))))
    lines = math.ceil(n / columns)
    fig, axes = plt.subplots(lines, columns, figsize=(2.4 * columns, 2.75 * lines), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, row in zip(axes.flat, rows_with_grid):
        ax.imshow(Image.open(finals[row["run_id"]]))
        ax.set_title(label(row, axis, metric), fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


