"""Where a report finds its study file when given a study's name, and what it says without one.

The store records the absolute path of the study file a study was run from (tag `study_file`:
on the experiment, the latest `overfit run`'s; or on each run, the newest run's counts). A
report of a bare study name loads that file if it is still there, else falls back to
`experiments/<name>.yaml` under the current directory.
A report without a study file says so in one line (the CLI prints it as a warning, the
report shows it at the top): without the file it has no description, no reference check, and
neither the study's cell order, seeds nor `report:` settings.

Owns: finding a study's file from its name (`locate`: the store's `study_file` tag, then
`experiments/`), reading that tag (`recorded`, `tag_of_runs`), and the notice of a report
without its study file (`missing_notice`). Must not: write to the store or create one (`locate`
reads a store only when it exists), or parse the study file (`suite.spec` does).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from suite.names import STUDY_FILE_TAG
from suite.tracking import Tracker

EXPERIMENTS = Path("experiments")


@dataclass(frozen=True)
class StudyFile:
    """The study file found for a name (`path`), or why there is none (`notice`)."""

    path: Path | None
    origin: str  # "the store's study_file tag", "experiments/", or "" when not found
    notice: str | None = None


def locate(study: str, tracker: Tracker, experiments: Path = EXPERIMENTS) -> StudyFile:
    """The study file of `study` (a bare name): the one the store records (`recorded`) if that
    file exists, else `experiments/<study>.yaml` relative to the current directory.

    Reads the store only when it exists (a report never creates one).
    """
    tagged = None
    if tracker.exists():
        experiment_id = tracker.experiment_id(study, create=False)
        tagged = recorded(tracker, experiment_id) if experiment_id is not None else None
    if tagged is not None and Path(tagged).is_file():
        return StudyFile(Path(tagged), "the store's study_file tag")
    local = experiments / f"{study}.yaml"
    if local.is_file():
        return StudyFile(local, "experiments/")
    return StudyFile(None, "", missing_notice(study, tagged, experiments))


def recorded(tracker: Tracker, experiment_id: str, runs: pd.DataFrame | None = None) -> str | None:
    """The study file the store records for a study: the experiment's `study_file` tag (the
    latest `overfit run`'s), else that of its newest run that has one (`runs`: the study's
    `load.load_runs` table, when at hand; else the runs are read). None: never recorded."""
    path = tracker.study_file(experiment_id)
    if path is not None:
        return str(path)
    if runs is not None:
        return tag_of_runs(runs)
    newest: tuple[int, str] | None = None
    for run in tracker.iter_runs(experiment_id):
        tag = run.data.tags.get(STUDY_FILE_TAG)
        if tag and (newest is None or (run.info.start_time or 0) > newest[0]):
            newest = (run.info.start_time or 0, tag)
    return newest[1] if newest else None


def tag_of_runs(runs: pd.DataFrame) -> str | None:
    """The `study_file` tag of the newest run of a `load.load_runs` table that has one."""
    tagged = runs.dropna(subset=[STUDY_FILE_TAG]) if STUDY_FILE_TAG in runs else runs[:0]
    tagged = tagged[tagged[STUDY_FILE_TAG] != ""]
    if not len(tagged):
        return None
    return str(tagged.sort_values("start_time")[STUDY_FILE_TAG].iloc[-1])


def missing_notice(study: str, tagged: str | None, experiments: Path = EXPERIMENTS) -> str:
    """One line: no study file for `study`, where it was looked for, what the report lacks."""
    local = (Path.cwd() / experiments / f"{study}.yaml").resolve()
    if tagged is None:
        where = f"the store records none (tag {STUDY_FILE_TAG}) and {local} does not exist"
    elif Path(tagged).is_file():
        # the caller had the file at hand and did not pass it (a library call without spec)
        return (
            f"written without the study file {tagged} (the store's {STUDY_FILE_TAG}): no "
            "description, reference check, study cell order or report settings"
        )
    else:
        where = f"the store records {tagged}, which does not exist, nor does {local}"
    return (
        f"no study file for {study!r}: {where}; the report has no description, reference "
        f"check, study cell order or report settings (give the path: overfit report FILE.yaml)"
    )
