"""Benchmarks beside the training path, behind ``python -m mtct_tf.benchmark``.

* ``speed``: how close training, input and serving come to the machine's
  limits (``docs/BENCHMARKS.md``), in parts: ``measurement`` (the subprocess
  harness and the measurements), ``summary`` (the maths) and ``report``
  (the Markdown).
* ``ablation``: MTCT vs its baselines and loss variants on X-Domain-synth
  (``docs/RESULTS.md``).
* ``retrieval``: ScaNN vs exact street-to-shop search
  (``docs/BENCHMARKS_RETRIEVAL.md``).

Each command module provides ``add_arguments(parser)``; none imports
TensorFlow at module level, so the command line's ``--help`` stays instant.
"""
