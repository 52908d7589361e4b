"""overfitting-suite: declarative Keras overfitting studies, tracked in MLflow."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("overfitting-suite")  # declared once, in pyproject.toml
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
