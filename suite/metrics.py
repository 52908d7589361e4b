"""Metric names, declared once (design.md, Metrics): the loop logs them, reports rely on them."""

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

# per run, at the end
FINAL_METRICS = (
    "final_train_accuracy",
    "final_test_accuracy",
    "final_gap",
    "best_test_accuracy",
    "best_epoch",
    "train_seconds",
    # on the test set at the end, macro-averaged over the 10 digits (the confusion matrix
    # itself is the run's `confusion_matrix.json` artifact)
    "test_precision_macro",
    "test_recall_macro",
    "test_f1_macro",
)

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
