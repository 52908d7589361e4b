"""The comparison report: MLflow -> pandas -> aggregates -> seaborn figures -> HTML + Markdown.

`write_report` reads a study's runs back from the tracking store and writes, into one folder
(default `reports/<study>/`):

- `index.html`: self-contained (inline CSS, figures as data URIs), to open offline or mail;
- `report.md`: the same content for a repository or a pull request, beside its PNGs
  (`accuracy.png`, `loss.png`, `gap.png`, `weight_norm.png`, `final_gap.png`);

then logs the folder as the `report/` artifacts of the study's report run, so the MLflow UI
offers it beside the runs.

The report opens with the study's answer in words (`finding`): which cell narrows the gap
against the baseline and at what cost in test accuracy, by the 95% intervals of the versus
baseline section; a cell whose test accuracy stays near chance is flagged "does not learn"
and never named for its small gap. Then the headline table (95% intervals over seeds, best
cell first by `report.sort`), versus baseline (Welch differences and one sentence per cell),
the study's own figures (`report.figures`: curves grouped by settings, final metrics against a
setting, a search's scatter, activation histograms, confusion matrices, the cures figure of
final gap against test accuracy), learning curves (means over the seeds still training, runs
stopped early marked where they stopped), the final gap chart, the reference check, failed
runs, every run linked to the UI (`--ui-url`), provenance. A search's report adds, below the
table, its pruned trials (never ranked), the best so far against trials and epochs, and each
searched setting's importance. The stages are separate modules: `write` (the order of the
work), `source` (finding the study file), `load` (MLflow -> DataFrames), `aggregate` (every
derived number; early stopping's in `stopping`, a search's in `search`), `finding` (the
answer in words), `notes` (the notes under the table, provenance), `groups` (cells by
setting), `colours` (the one palette), `figures`, `extra`, `cures` and `search_figures` (PNG
bytes; `marks`: seed counts and stops on curves), `links` (URLs of the UI), `render` (jinja2
templates in `templates/`); the `report:` block's schema is `figure_spec`.

The package itself is callable: `suite.report(study)` is `suite.notebook.report(study)`, the
notebook's way to write a report (`import suite` binds the name `suite.report` to this
package, so the function is reached through it).

Owns: the package's public names, each loaded from its module on first use (PEP 562), so that
importing the package, or its light `figure_spec` (as `suite.spec` does), loads none of pandas,
matplotlib, seaborn or MLflow. Must not touch: any work of its own; it imports nothing eagerly.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from suite.report.links import UI_DEFAULT, check_ui_url
    from suite.report.load import ReportError
    from suite.report.source import StudyFile, locate
    from suite.report.write import ReportPaths, write_report

# public name -> the module that defines it
_EXPORTS = {
    "UI_DEFAULT": "suite.report.links",
    "ReportError": "suite.report.load",
    "ReportPaths": "suite.report.write",
    "StudyFile": "suite.report.source",
    "check_ui_url": "suite.report.links",
    "locate": "suite.report.source",
    "write_report": "suite.report.write",
}

__all__ = [
    "UI_DEFAULT",
    "ReportError",
    "ReportPaths",
    "StudyFile",
    "check_ui_url",
    "locate",
    "write_report",
]


def __getattr__(name: str) -> Any:
    """A public name, imported from its module on first use (a submodule is not one: `from
    suite.report import extra` imports the submodule as usual)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


class _CallableModule(types.ModuleType):
    """This package's module type: calling it writes a report (`suite.notebook.report`)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return importlib.import_module("suite.notebook").report(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
