"""The report-figure schema: a study's `report:` block, validated as strictly as its runs.

Owns: the views and sort keys a report accepts, the grouping keys a figure may name, one model
per figure kind (`curves`, `versus`, `scatter`, `activations`, `confusion`, `cures`,
`reliability`, `size`), the `kind`-tagged union of them (`FigureSpec`), `ReportSpec`, and the
metrics each kind of figure names (`FIGURE_METRICS`, checked against the study's cells by
`suite.study`).
Must not touch: drawing (`suite.report.write`, `extra`, `figures`), runs or the tracking store.
It imports pydantic, `suite.schema_base` and `suite.metrics` only, so `overfit validate` loads
none of the report's heavy libraries (pandas, matplotlib, seaborn, MLflow).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field

from suite.metrics import CURVE_METRICS, RUN_METRICS
from suite.schema_base import PositiveInt, Strict

# the per-epoch views a report can draw (`report.metrics`; see suite.report.figures.VIEWS)
ReportView = Literal[
    "accuracy", "loss", "gap", "weight_norm", "reg_loss", "validation", "label_noise", "calibration"
]
# what a report may rank cells by (`report.sort`); final_gap ranks the smallest first
SortMetric = Literal[
    "final_test_accuracy",
    "final_train_accuracy",
    "final_val_accuracy",
    "best_test_accuracy",
    "best_val_accuracy",
    "final_gap",
    "test_f1_macro",
]
# a figure's grouping keys: `cell`, `variant`, `n_train` (the images a run trained on), `grid`
# (the cell's own grid value) or a dotted setting such as `model.init`
GROUP_NAMES = ("cell", "variant", "grid", "n_train")
GROUP_FIELDS = ("hue", "style", "facet", "x", "y")  # the figure fields that hold one


def _group_key(value: str) -> str:
    if value in GROUP_NAMES or re.fullmatch(r"[a-z_0-9]+(\.[a-z_0-9]+)+", value):
        return value
    raise ValueError(
        f"expected cell, variant, grid, n_train or a dotted setting like model.init, got {value!r}"
    )


GroupKey = Annotated[str, AfterValidator(_group_key)]


def _default_views() -> list[ReportView]:
    return ["accuracy", "loss", "gap", "weight_norm"]


class CurvesFigure(Strict):
    """Mean curves of one per-epoch metric (or `batch_loss`, per update) for every cell, one
    line per cell: colour by `hue`, line style by `style`, one facet per value of `facet`."""

    kind: Literal["curves"]
    metric: str
    hue: GroupKey = "cell"
    style: GroupKey | None = None
    facet: GroupKey | None = None
    smooth: PositiveInt = 1  # centred moving average over this many points
    log_x: bool = False  # epochs on a log axis: long runs (grokking) whose change comes late
    log_y: bool = False
    columns: Annotated[int, Field(ge=1, le=8)] = 4
    title: str | None = None


class VersusFigure(Strict):
    """Final metrics (one facet each) against a setting: mean and 95% interval per cell,
    cells of one `hue` joined by a line. `x: grid` is the cell's own grid value; cells
    without one (a shared reference) are drawn as a horizontal line."""

    kind: Literal["versus"]
    x: GroupKey
    y: list[str] = Field(min_length=1)
    hue: GroupKey = "variant"
    log_x: bool = False
    title: str | None = None


class ScatterFigure(Strict):
    """One point per run at two settings, coloured by a final metric (a search's map)."""

    kind: Literal["scatter"]
    x: GroupKey
    y: GroupKey
    color: str
    log_x: bool = False
    log_y: bool = False
    title: str | None = None


class ActivationsFigure(Strict):
    """Per-layer activation histograms (runs with `train.log_activations`): the textbook's
    probe, and the MNIST network at initialisation and after training."""

    kind: Literal["activations"]


class ConfusionFigure(Strict):
    """Test-set confusion matrices per cell, summed over seeds, rows normalised."""

    kind: Literal["confusion"]
    top: PositiveInt | None = None  # the best N cells by `report.sort`; None: every cell


class CuresFigure(Strict):
    """Every cell at its mean final gap (x) and mean final test accuracy (y), 95% intervals
    over seeds on both axes, each point labelled; dashed lines through the baseline
    (`report.baseline`) and the quadrant up and left of it (narrower gap, test accuracy not
    lower) shaded, so the cures stand out."""

    kind: Literal["cures"]
    top: PositiveInt | None = None  # the best N cells by `report.sort` (and the baseline)
    title: str | None = None


class ReliabilityFigure(Strict):
    """Reliability diagrams of the test set per cell (cross-entropy runs), seeds pooled by
    summing their bins: accuracy against confidence before temperature scaling and after it
    (runs with a validation split), the pooled ECE of each in the panel's title."""

    kind: Literal["reliability"]
    top: PositiveInt | None = None  # the best N cells by `report.sort`; None: every cell
    columns: Annotated[int, Field(ge=1, le=8)] = 4
    title: str | None = None


class SizeFigure(Strict):
    """Final metrics (one facet each) against the network's size, `n_params` on a log axis:
    mean and 95% interval per cell, cells of one `hue` joined in size order, and the
    interpolation threshold (training images x classes) as a labelled vertical line (double
    descent: Belkin et al. 2019, Nakkiran et al. 2019)."""

    kind: Literal["size"]
    y: list[str] = Field(min_length=1)
    hue: GroupKey = "variant"
    title: str | None = None


FIGURE_KINDS = (
    "curves",
    "versus",
    "scatter",
    "activations",
    "confusion",
    "cures",
    "reliability",
    "size",
)
FigureSpec = Annotated[
    CurvesFigure
    | VersusFigure
    | ScatterFigure
    | ActivationsFigure
    | ConfusionFigure
    | CuresFigure
    | ReliabilityFigure
    | SizeFigure,
    Field(discriminator="kind"),
]
# what a size figure may draw against n_params: any per-run metric but n_params itself
SIZE_METRICS = tuple(metric for metric in RUN_METRICS if metric != "n_params")

# the metrics a figure names, by kind: (its field, the metric, the metrics that field accepts)
NamedMetrics = list[tuple[str, str, tuple[str, ...]]]
FIGURE_METRICS: dict[str, Callable[[Any], NamedMetrics]] = {
    "curves": lambda figure: [("metric", figure.metric, CURVE_METRICS)],
    "versus": lambda figure: [("y", metric, RUN_METRICS) for metric in figure.y],
    "scatter": lambda figure: [("color", figure.color, RUN_METRICS)],
    "activations": lambda figure: [],
    "confusion": lambda figure: [],
    "cures": lambda figure: [],  # final_gap and final_test_accuracy: every run logs them
    "reliability": lambda figure: [],  # its cells' loss is checked (`suite.study`)
    "size": lambda figure: [("y", metric, SIZE_METRICS) for metric in figure.y],
}


class ReportSpec(Strict):
    """A study's `report:` block: what its report compares and shows."""

    baseline: str | None = None  # the cell (or variant) others are compared with
    versus_baseline: bool = True  # the versus-baseline section (off for a search)
    metrics: list[ReportView] = Field(default_factory=_default_views)
    columns: Annotated[int, Field(ge=1, le=8)] = 4  # facets per row in the per-cell figures
    sort: SortMetric = "final_test_accuracy"  # the table's order, best first
    top: PositiveInt | None = None  # per-cell figures show the best N cells only
    figures: list[FigureSpec] = Field(default_factory=list)
