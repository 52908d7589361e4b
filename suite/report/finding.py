"""The study's answer in words, the report's first lines.

Which cell narrows the generalisation gap against the baseline, and at what cost in test
accuracy, judged by the 95% intervals `aggregate.versus_baseline` computed (nothing is
recomputed here): a difference counts only when its interval excludes zero. Cells that do not
learn (`CellRow.learns`) are named as such, never as cures. Without a baseline to compare with,
the answer falls back to the best cells by their means.

Owns: the finding (`Finding`, `summarise`): which comparison is named as the answer, how the
other cells are grouped (cures at no cost, cures at a cost, wider gaps, seed noise, one seed,
cells that do not learn), and the sentences that say so. Must not: compute or test a
difference (`aggregate`), read or write the tracking store, or lay out the page (`render`
shows `Finding.lines`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from suite.report.aggregate import (
    CHANCE_MARGIN,
    GAP_STAR_TEST_MARGIN,
    CellRow,
    Comparison,
    Difference,
    best,
    least_gap,
)

# comparisons by kind (`_kind`): gain, free, cost, wider, noise, one seed
Groups = dict[str, list[Comparison]]


@dataclass(frozen=True)
class Finding:
    """`answer`: the study's answer in one sentence; `details`: one sentence per group of the
    other cells (cures that cost accuracy, wider gaps, noise, cells that do not learn)."""

    answer: str
    details: list[str] = field(default_factory=list)

    @property
    def lines(self) -> list[str]:
        return [self.answer, *self.details]


# a study that ranks by this chooses by its validation set: its finding leads with that
CHOSEN_BY = "final_val_accuracy"


def summarise(
    cells: Sequence[CellRow],
    baseline: CellRow | None,
    comparisons: Sequence[Comparison],
    sort: str | None = None,
) -> Finding:
    """The finding of a study: its cells (table order), its baseline and the comparisons;
    `sort`, the table's order (`CHOSEN_BY`: without a baseline, the finding names the cell
    the validation set chooses first, as a search does, and its test accuracy)."""
    dead = [c for c in cells if c.done and not c.learns]
    if not any(c.done and c.learns for c in cells):
        return Finding(
            f"No cell learns: every final test accuracy is within {CHANCE_MARGIN:.2f} of chance, "
            "so no gap here says anything about overfitting.",
            _dead(dead),
        )
    if baseline is None or not comparisons:
        found = _by_means(cells, dead)
        chosen = best(cells, CHOSEN_BY) if sort == CHOSEN_BY else None
        if chosen is None:
            return found
        held_out = chosen.stats.get("final_test_accuracy")
        return Finding(
            f"Chosen by validation accuracy: {chosen.label} "
            f"({chosen.stats[CHOSEN_BY].mean:.3f})"
            + (f", final test accuracy {held_out.mean:.3f}" if held_out is not None else "")
            + f". By the test set, which chooses nothing here: {found.answer}",
            found.details,
        )
    if not baseline.learns:
        head = _by_means(cells, [c for c in dead if c is not baseline])
        test = baseline.stats["final_test_accuracy"].mean
        return Finding(
            f"The baseline, {baseline.label}, does not learn (final test accuracy {test:.3f}, "
            f"chance {baseline.chance:.3f}): differences from it mean nothing. {head.answer}",
            head.details,
        )
    groups = _grouped(comparisons)
    answer, details = _against(baseline, groups, cells)
    details += _beside(baseline, groups, len(comparisons))
    return Finding(answer, details + _dead(dead))


def _grouped(comparisons: Sequence[Comparison]) -> Groups:
    """The comparisons of cells that learn, by `_kind` (cells without a gap left out)."""
    groups: Groups = {k: [] for k in ("gain", "free", "cost", "wider", "noise", "one seed")}
    for comp in comparisons:
        if comp.cell.learns and comp.gap is not None:
            groups[_kind(comp)].append(comp)
    return groups


def _against(baseline: CellRow, groups: Groups, cells: Sequence[CellRow]) -> tuple[str, list[str]]:
    """The answer against a baseline that learns, with details on the other cells that narrow
    the gap: the best cure that costs no test accuracy, else the one that costs the least,
    else that none narrows it beyond seed noise (or that one seed cannot tell)."""
    gap = baseline.stats.get("final_gap")
    against = f"{baseline.label}'s {gap.mean:.3f}" if gap else baseline.label
    if groups["gain"] or groups["free"]:
        return _cures(groups, against)
    if groups["cost"]:
        costly = sorted(groups["cost"], key=_test_mean, reverse=True)
        top = costly[0]
        answer = (
            f"Every cell that narrows the gap costs test accuracy; {top.cell.label} costs the "
            f"least: it narrows the gap by {_size(top.gap)} from {against} and costs "
            f"{_size(top.test)} test accuracy."
        )
        higher = [f"At a higher cost: {_list(costly[1:], 'narrows it by')}."] if costly[1:] else []
        return answer, higher
    if groups["noise"] or groups["wider"]:
        answer = (
            f"No cell narrows the gap beyond seed noise against {baseline.label} "
            f"(gap {gap.mean:.3f})."
            if gap
            else "No cell narrows the gap beyond seed noise."
        )
        return answer, []
    answer = (
        f"With one seed per cell, no difference from {baseline.label} can be told from "
        f"seed noise. By the means alone: {_by_means(cells, []).answer}"
    )
    return answer, []


def _cures(groups: Groups, against: str) -> tuple[str, list[str]]:
    """The answer when some cell narrows the gap at no clear cost in test accuracy: the one
    with the best test accuracy, then the other cures, then those that cost accuracy."""
    ranked = sorted(groups["gain"], key=_test_mean, reverse=True) + sorted(
        groups["free"], key=_test_mean, reverse=True
    )
    top, others = ranked[0], ranked[1:]
    if top in groups["gain"]:
        answer = (
            f"{top.cell.label} narrows the gap and gains test accuracy: by "
            f"{_size(top.gap)} from {against}, and test accuracy by {_size(top.test)}."
        )
    else:
        answer = (
            f"{top.cell.label} narrows the gap at no clear cost in test accuracy: by "
            f"{_size(top.gap)} from {against}, while test accuracy changes by "
            f"{_noise(top.test)}."
        )
    details: list[str] = []
    if others:
        details.append(f"Also without a clear cost: {_list(others, 'narrows the gap by')}.")
    costly = sorted(groups["cost"], key=_test_mean, reverse=True)
    if costly:
        details.append(f"At a cost in test accuracy: {_list(costly, 'narrows it by')}.")
    return answer, details


def _beside(baseline: CellRow, groups: Groups, compared: int) -> list[str]:
    """The details on the other cells: a wider gap, a gap within seed noise (named only beside
    a cure or a costly one), and not judged for one seed (unless every cell has one)."""
    details: list[str] = []
    if groups["wider"]:
        details.append(f"Wider gap than {baseline.label}: {_list(groups['wider'], 'by')}.")
    if groups["noise"] and (groups["gain"] or groups["free"] or groups["cost"]):
        details.append(
            f"Gap within seed noise of {baseline.label}: "
            + ", ".join(c.cell.label for c in groups["noise"])
            + "."
        )
    if groups["one seed"] and len(groups["one seed"]) < compared:
        details.append(
            "Not judged (one seed: no interval): "
            + ", ".join(c.cell.label for c in groups["one seed"])
            + "."
        )
    return details


def _kind(comp: Comparison) -> str:
    gap, test = comp.gap, comp.test
    assert gap is not None
    if math.isnan(gap.low):
        return "one seed"
    if not gap.clear:
        return "noise"
    if gap.mean > 0:
        return "wider"
    if test is None or math.isnan(test.low) or not test.clear:
        return "free"
    return "gain" if test.mean > 0 else "cost"


def _test_mean(comp: Comparison) -> float:
    return comp.test.mean if comp.test is not None else -math.inf


def _size(d: Difference | None) -> str:
    """`0.06 (95% interval 0.02–0.10)`: the size of a clear difference."""
    if d is None:
        return "–"
    if math.isnan(d.low):
        return f"{abs(d.mean):.2f}"
    low, high = sorted((abs(d.low), abs(d.high)))
    return f"{abs(d.mean):.2f} (95% interval {low:.2f}–{high:.2f})"


def _noise(d: Difference | None) -> str:
    """`-0.02, within seed noise (-0.05 to +0.00)`."""
    if d is None:
        return "an unknown amount"
    if math.isnan(d.low):
        return f"{d.mean:+.2f} (one seed: no interval)"
    return f"{d.mean:+.2f}, within seed noise ({d.low:+.2f} to {d.high:+.2f})"


def _list(comps: Sequence[Comparison], verb: str) -> str:
    """`dropout narrows it by 0.10 for -0.15 test accuracy, init_xavier by 0.08 for -0.11`."""
    parts = []
    for i, comp in enumerate(comps):
        assert comp.gap is not None
        test = f" (test accuracy {comp.test.mean:+.2f})" if comp.test is not None else ""
        parts.append(f"{comp.cell.label} {verb if i == 0 else 'by'} {abs(comp.gap.mean):.2f}{test}")
    return ", ".join(parts)


def _dead(cells: Sequence[CellRow]) -> list[str]:
    """`Does not learn (final test accuracy below chance 0.100 + 0.05): init_small (0.113).`"""
    if not cells:
        return []
    chances = {round(c.chance, 6) for c in cells}
    where = f"chance {chances.pop():.3f}" if len(chances) == 1 else "chance"
    listed = ", ".join(f"{c.label} ({c.stats['final_test_accuracy'].mean:.3f})" for c in cells)
    verb = "Does" if len(cells) == 1 else "Do"
    return [
        f"{verb} not learn (final test accuracy below {where} + {CHANCE_MARGIN:.2f}): {listed}; "
        "a small gap there is no cure."
    ]


def _by_means(cells: Sequence[CellRow], dead: Sequence[CellRow]) -> Finding:
    """Without a baseline: the best cells by their means."""
    top = best(cells, "final_test_accuracy")
    least = least_gap(cells)
    parts = []
    if top is not None:
        parts.append(
            f"{top.label} has the highest final test accuracy "
            f"({top.stats['final_test_accuracy'].mean:.3f})"
        )
    if least is not None:
        test = least.stats.get("final_test_accuracy")
        at = f", test accuracy {test.mean:.3f}" if test is not None and least is not top else ""
        who = "and" if least is top else f"and {least.label}"
        what = f"the smallest gap among cells within {GAP_STAR_TEST_MARGIN:.2f} of it"
        parts.append(f"{who} {what} ({least.stats['final_gap'].mean:.3f}{at})")
    answer = " ".join(parts) + "." if parts else "No cell has a final test accuracy yet."
    return Finding(answer, _dead(dead))
