"""overfitting-suite: declarative Keras overfitting studies, tracked in MLflow.

Owns: the package's version (`__version__`, read from the installed distribution's metadata;
declared once, in pyproject.toml). Must not import any module of the suite or any library
outside the standard library: every `import suite.x`, in a worker process too, runs this first.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("overfitting-suite")  # declared once, in pyproject.toml
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
