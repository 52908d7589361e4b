"""Import TensorFlow and Keras once, quietly.

TensorFlow's C++ start-up lines (oneDNN notes, CUDA probing on a machine without a GPU) are
written to file descriptor 2 before `TF_CPP_MIN_LOG_LEVEL` takes effect; they are noise for a
user of this suite, so the import runs with descriptor 2 pointed at /dev/null. Errors raised by
the import itself still surface as Python exceptions.

Owns: TensorFlow's C++ log level (`TF_CPP_MIN_LOG_LEVEL`, unless already set), the one quiet
import of TensorFlow and Keras, and TensorFlow's Python logger level. Every module that uses
TensorFlow imports this one (`suite.models` and `suite.train` before Keras, `suite.data` in its
download step). Must not: import any module of the suite, configure threads or seeds
(`suite.train.pin_threads`; seeds are passed to each initializer and layer), or hide an
exception the import raises.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _quiet_import() -> None:
    if "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import keras  # noqa: F401
        import tensorflow as tf

        # every run builds a new model and so traces a new epoch function, by design
        tf.get_logger().setLevel("ERROR")
        # device discovery probes CUDA and logs its failure on a CPU-only machine: do it here
        tf.config.list_physical_devices()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


_quiet_import()
