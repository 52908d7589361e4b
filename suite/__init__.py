"""overfitting-suite: declarative Keras overfitting studies, tracked in MLflow."""

__version__ = "0.1.0"
