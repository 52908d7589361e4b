"""Tag and status names, declared once, as `suite.metrics` declares metric names.

Owns: the names of the MLflow tags the suite writes on runs and experiments, MLflow's run
statuses as the store holds them (`Stored`), and how a run ended in one invocation (`Ended`).
Must not import MLflow or any other module of the suite: every layer reads these names, from
the runner down to the report.
"""

from __future__ import annotations

from enum import StrEnum


class Stored(StrEnum):
    """A run's status in the tracking store (MLflow's names)."""

    RUNNING = "RUNNING"
    FINISHED = "FINISHED"
    FAILED = "FAILED"
    KILLED = "KILLED"
    SCHEDULED = "SCHEDULED"


class Ended(StrEnum):
    """How one (cell, seed) ended in this invocation (`suite.lifecycle.RunResult.status`)."""

    FINISHED = "finished"  # trained and logged here
    SKIPPED = "skipped"  # FINISHED in the store already, or by another invocation meanwhile
    FAILED = "failed"  # diverged, bad data, any error: its reason is kept
    KILLED = "killed"  # stopped by Ctrl-C or SIGTERM (a later invocation resumes it)
    LOST = "lost"  # another invocation took it as abandoned while it trained: look again
    PRUNED = "pruned"  # a search's trial its pruner ended early: FINISHED in the store, tagged


FINISHED, SKIPPED, FAILED, KILLED, LOST, PRUNED = (
    Ended.FINISHED,
    Ended.SKIPPED,
    Ended.FAILED,
    Ended.KILLED,
    Ended.LOST,
    Ended.PRUNED,
)

# --- run tags: what a run is ---------------------------------------------------------------
STUDY_TAG = "study"
CELL_TAG = "cell"
CELL_HASH_TAG = "cell_hash"  # a run of the suite's has one; a report run has none
VARIANT_TAG = "variant"
SEED_TAG = "seed"
DATA_SOURCE_TAG = "data_source"
SUITE_VERSION_TAG = "suite_version"
GIT_COMMIT_TAG = "git_commit"
DATASET_TAG = "dataset"  # data.dataset: mnist, fashion_mnist, cifar10, npz
SIZE_TAGS = ("n_train", "n_val", "n_test", "n_classes")  # a run's data, once cut
FAILURE_TAG = "failure_reason"
RUN_KIND_TAG = "run_kind"  # `report` on the study's report run
TOKEN_TAG = "invocation"  # the token of the `overfit run` that claimed (and trained) it
# an adaptive search's trial (`suite.search`): which search, which of its slots, what was asked
SEARCH_ID_TAG = "search_id"  # the search: its frame's settings, data, space, sampler, pruner, seed
SEARCH_FRAME_TAG = "search_frame"  # the variant and grid point it searches ("" for none)
TRIAL_TAG = "trial"  # the slot's number, from 0
SEARCH_POINT_TAG = "search_point"  # JSON of the asked settings, {dotted key: value}
SAMPLER_TAG = "sampler"  # random or tpe
PRUNER_TAG = "pruner"  # none, median or hyperband
PRUNED_TAG = "pruned"  # on a pruned trial: the epoch its pruner ended it at
EPOCHS_TRAINED_TAG = "epochs_trained"  # on a trial: the epochs it trained

# --- lease tags: how a RUNNING run is held (deleted when it ends) --------------------------
OWNER_TAG = "owner"  # host:pid of the process that logs the run
HEARTBEAT_TAG = "heartbeat"  # unix time of its owner's latest sign of life
MACHINE_TAG = "owner_machine"  # boot id and pid namespace: where the owner's pid means something
TIMEOUT_TAG = "claim_timeout"  # the owner's claim timeout, which paces its heartbeat
# what only a RUNNING run needs: deleted when it ends, so a finished run's tags, the UI's
# columns and its Group-by menu show what the run is, not how it was held
LEASE_TAGS = (OWNER_TAG, MACHINE_TAG, HEARTBEAT_TAG, TIMEOUT_TAG)

# --- experiment tags -------------------------------------------------------------------------
STUDY_FILE_TAG = "study_file"  # the absolute path of the study's YAML, as `overfit run` saw it

# --- artifacts -------------------------------------------------------------------------------
REPORT_ARTIFACT_PATH = "report"
CONFUSION_ARTIFACT = "confusion_matrix"
ACTIVATIONS_ARTIFACT = "activations.json"  # with train.log_activations
LABEL_NOISE_ARTIFACT = "label_noise.json"  # with data.label_noise: what was corrupted
# cross-entropy runs: the test set's reliability bins, before and after temperature scaling
RELIABILITY_ARTIFACT = "reliability.json"
MODEL_ARTIFACT = "model"  # the run's network, an MLflow Keras model, with the study's log_model
