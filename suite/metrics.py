"""Metric names, declared once (design.md, Metrics): the loop logs them, reports rely on them.

Owns: the names of the metrics a run logs (per epoch, per update, at the end, with a validation
split), the last-loss names the report derives, and which names a report figure
(`CURVE_METRICS`, `RUN_METRICS`) or a study's `reference:` may use. Must not import anything:
the training loop (which never imports MLflow), the study schema's checks and the report all
read these names.
"""

# per epoch, MLflow step = epoch counted from 1
EPOCH_METRICS = (
    "train_loss",
    "train_accuracy",
    "test_loss",
    "test_accuracy",
    "gap",  # train_accuracy - test_accuracy
    "reg_loss",  # the regularisation penalty; the losses above exclude it
    "weight_norm",  # L2 norm of all kernels
)
VAL_METRICS = ("val_loss", "val_accuracy")  # when the run has a validation split
# what an adaptive search maximizes (`suite.search`) and its report ranks trials by
SEARCH_OBJECTIVE = "final_val_accuracy"
# per epoch, when the run has `data.label_noise`: the accuracy on the training images whose
# labels were not corrupted, and the share of corrupted ones predicted as their corrupted label
# (each when the run has such images); train_accuracy is against the labels the run trains on
NOISE_METRICS = ("train_clean_accuracy", "memorized")
# per epoch, in cross-entropy runs (`suite.calibration`): the expected calibration error of the
# top label in 15 equal-width confidence bins, on the test set and the validation split
ECE_METRICS = ("test_ece", "val_ece")
# per update, MLflow step = update counted from 1, with `train.log_batch_loss`
STEP_METRICS = ("batch_loss",)  # the minibatch's data loss before that update

# per run, at the end
FINAL_METRICS = (
    "final_train_accuracy",
    "final_test_accuracy",
    "final_gap",
    "best_test_accuracy",
    "best_epoch",
    "train_seconds",
    "n_params",  # the network's trainable parameters (weights, biases, batch norm's scales)
    # on the test set at the end, macro-averaged over the classes (the confusion matrix
    # itself is the run's `confusion_matrix.json` artifact)
    "test_precision_macro",
    "test_recall_macro",
    "test_f1_macro",
)

# per run, at the end, when the run has a validation split
FINAL_VAL_METRICS = ("final_val_accuracy", "best_val_accuracy")
# per run, at the end, with `train.early_stopping`: the last epoch trained, when it stopped
# before its last one (its curves end there), and the epoch whose weights it ended with (the
# best one with `restore_best`, else its last); its final_* metrics are those weights' own
EARLY_STOP_METRICS = ("stopped_epoch", "restored_epoch")
# per run, at the end, when its train accuracy reached 0.99 (suite.history.FIT_ACCURACY):
# the first epoch it did, how fast it fitted its labels
FIT_METRICS = ("fit_epoch",)
# per run, at the end, in cross-entropy runs with a validation split: the temperature fitted
# on the validation split (its NLL), and the test set's ECE and NLL at logits / temperature
SCALING_METRICS = ("temperature", "test_ece_scaled", "test_loss_scaled")
# a run's last train_loss / test_loss, as the report names them
LAST_LOSSES = ("final_train_loss", "final_test_loss")
# what a report figure may draw: curves of the first, per-run values of the second
CURVE_METRICS = (*EPOCH_METRICS, *VAL_METRICS, *NOISE_METRICS, *ECE_METRICS, *STEP_METRICS)
RUN_METRICS = (
    *FINAL_METRICS,
    *FINAL_VAL_METRICS,
    *EARLY_STOP_METRICS,
    *FIT_METRICS,
    *SCALING_METRICS,
    *LAST_LOSSES,
)
# the setting a run must have to log these: a figure naming one needs a cell that sets it
LOGGED_WITH = {
    **dict.fromkeys((*VAL_METRICS, *FINAL_VAL_METRICS), "data.val_size"),
    **dict.fromkeys(EARLY_STOP_METRICS, "train.early_stopping"),
    **dict.fromkeys(NOISE_METRICS, "data.label_noise"),
    **dict.fromkeys(STEP_METRICS, "train.log_batch_loss"),
    # the temperature is fitted on the validation split (and only in cross-entropy runs, which
    # suite.study checks for every calibration metric)
    **dict.fromkeys(
        ("val_ece", "temperature", "test_ece_scaled", "test_loss_scaled"), "data.val_size"
    ),
}

# what a study's `reference:` may name: a final metric, or a per-epoch name meaning its final value
REFERENCE_METRICS = (
    "final_train_accuracy",
    "final_test_accuracy",
    "final_gap",
    "best_test_accuracy",
    "train_accuracy",
    "test_accuracy",
    "gap",
)
