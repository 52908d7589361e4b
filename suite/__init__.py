"""overfitting-suite: declarative Keras overfitting studies, tracked in MLflow.

From Python (a notebook, a script): `suite.load`, `suite.run` and `suite.report`
(`suite.notebook`), and the results as pandas frames, `suite.results`:

    import suite
    study = suite.load("experiments/overfitting.yaml", set={"train.epochs": 20})
    suite.run(study, seeds=[0, 1])
    suite.results.summary(study.name)

Owns: the package's version (`__version__`, read from the installed distribution's metadata;
declared once, in pyproject.toml) and its public names. Must not import any module of the
suite or any library outside the standard library when it is imported: every `import
suite.x`, in a worker process too, runs this first; the public names are imported on first
use (PEP 562).
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("overfitting-suite")  # declared once, in pyproject.toml
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

if TYPE_CHECKING:
    from suite import report, results
    from suite.notebook import load, run

__all__ = ["__version__", "load", "report", "results", "run"]


def __getattr__(name: str) -> Any:
    """`suite.load`, `suite.run`, `suite.results` and `suite.report` on first use; the last
    is the report package, which can be called as `suite.notebook.report` (a subpackage's
    name is bound to the subpackage whenever it is imported, so the function could not keep
    the name)."""
    if name in ("load", "run"):
        value = getattr(import_module("suite.notebook"), name)
    elif name in ("results", "report"):
        value = import_module(f"suite.{name}")
    else:
        raise AttributeError(f"module 'suite' has no attribute {name!r}")
    globals()[name] = value
    return value
