"""Training-curve pictures for ``GET /v1/models/{id}`` pages and the CLI.

The input is the metrics history the trainer records: one dict per measurement with ``step``,
``split`` (``"train"`` or ``"val"``; any other split is drawn too) and ``loss``. Train loss is
noisy, so it is drawn faint with an exponential moving average on top; validation loss is drawn
with markers and its best point is labelled, since that is the checkpoint people want.

matplotlib's object API on the Agg canvas: no pyplot state, safe in threads, no display.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

_DPI: Final[int] = 100
_COLOURS: Final[dict[str, str]] = {"train": "#1f77b4", "val": "#d62728", "test": "#2ca02c"}
_OTHER: Final[tuple[str, ...]] = ("#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


def loss_curve_png(
    history: Sequence[Mapping[str, Any]],
    *,
    log_y: bool | None = None,
    width_px: int = 1200,
    height_px: int = 600,
    title: str | None = None,
) -> bytes:
    """Loss against step for each split, as a PNG of exactly ``width_px`` × ``height_px``.

    ``log_y=None`` chooses a log axis when the positive losses span more than a factor of 20
    (early steps would otherwise flatten the rest). Records whose loss is NaN or infinite are
    left out and counted in the legend, so a diverged run is visible rather than hidden.
    """
    if not (200 <= width_px <= 8000 and 150 <= height_px <= 8000):
        raise ValueError(f"picture size {width_px}×{height_px} px is outside 200..8000×150..8000")
    series, dropped = _series(history)

    fig = Figure(figsize=(width_px / _DPI, height_px / _DPI), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(True, which="major", color="#dddddd", linewidth=0.6)
    ax.set_title(title if title is not None else "training loss")

    if not series:
        ax.text(0.5, 0.5, "no losses recorded yet", transform=ax.transAxes, ha="center")
    spare = iter(_OTHER * 4)
    for split, (steps, losses) in series.items():
        colour = _COLOURS.get(split) or next(spare)
        note = f" ({dropped[split]} non-finite left out)" if dropped.get(split) else ""
        if split == "train" and len(steps) >= 20:
            ax.plot(steps, losses, color=colour, alpha=0.3, linewidth=0.8)
            ax.plot(
                steps, _ema(losses), color=colour, linewidth=1.8, label=f"train (smoothed){note}"
            )
        else:
            marker = "o" if len(steps) <= 200 else None
            ax.plot(steps, losses, color=colour, linewidth=1.5, marker=marker, markersize=3.5,
                    label=f"{split}{note}")  # fmt: skip
        if split == "val" and len(losses):
            best = int(np.argmin(losses))
            ax.plot([steps[best]], [losses[best]], marker="*", markersize=11, color=colour)
            ax.annotate(
                f"best {losses[best]:.4g} @ {int(steps[best])}",
                (steps[best], losses[best]),
                textcoords="offset points",
                xytext=(0, 9),
                ha="center",
                fontsize=8,
                color=colour,
            )
    for split, count in dropped.items():
        if split not in series and count:
            ax.plot([], [], " ", label=f"{split}: {count} non-finite left out")

    values = np.concatenate([v for _, v in series.values()]) if series else np.zeros(0)
    if log_y is None:
        positive = values[values > 0]
        log_y = len(positive) == len(values) > 1 and positive.max() / positive.min() > 20
    if log_y:
        if np.any(values <= 0):
            raise ValueError("log_y needs every loss to be positive")
        ax.set_yscale("log")
        plain = FuncFormatter(lambda y, _pos: f"{y:g}")  # 2, 3, 4 rather than 2×10⁰
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper right", fontsize=9)

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI)  # no bbox_inches: the size must stay exact
    return buffer.getvalue()


def _series(
    history: Sequence[Mapping[str, Any]],
) -> tuple[dict[str, tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]], dict[str, int]]:
    """Split records by split, sorted by step; count the non-finite losses left out."""
    points: dict[str, list[tuple[float, float]]] = {}
    dropped: dict[str, int] = {}
    for i, record in enumerate(history):
        try:
            step, split, loss = float(record["step"]), str(record["split"]), float(record["loss"])
        except KeyError as exc:
            raise ValueError(f"history record {i} has no {exc.args[0]!r}") from exc
        except (TypeError, ValueError) as exc:
            raise ValueError(f"history record {i} has a non-numeric step or loss: {exc}") from exc
        if not math.isfinite(step):
            raise ValueError(f"history record {i} has step {record['step']!r}")
        if math.isfinite(loss):
            points.setdefault(split, []).append((step, loss))
        else:
            dropped[split] = dropped.get(split, 0) + 1
    series = {}
    known = list(_COLOURS)  # train, val, test first, in that order; other splits after them
    for split in sorted(points, key=lambda s: (known.index(s) if s in known else len(known), s)):
        ordered = sorted(points[split])
        series[split] = (
            np.array([s for s, _ in ordered], dtype=np.float64),
            np.array([v for _, v in ordered], dtype=np.float64),
        )
    return series, dropped


def _ema(values: npt.NDArray[np.float64], span: int | None = None) -> npt.NDArray[np.float64]:
    """Exponential moving average with a bias correction, so the first points are not dragged
    towards zero; the span grows with the run (about 1/20 of its points)."""
    span = span or max(5, len(values) // 20)
    alpha = 2.0 / (span + 1)
    out = np.empty_like(values)
    avg, weight = 0.0, 0.0
    for i, value in enumerate(values):
        avg = (1 - alpha) * avg + alpha * value
        weight = (1 - alpha) * weight + alpha
        out[i] = avg / weight
    return out
