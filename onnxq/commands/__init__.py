"""Sub-commands of the ``onnxq`` CLI, one module each (see :mod:`onnxq.cli`)."""
