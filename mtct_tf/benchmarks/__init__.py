"""Benchmarks beside the training path, behind ``python -m mtct_tf.benchmark``.

* ``speed``: how close training, input and serving come to the machine's
  limits (``docs/BENCHMARKS.md``), in parts: ``measurement`` (the subprocess
  harness and the measurements), ``speed_summary`` (the maths) and
  ``speed_report`` (the Markdown).
* ``ablation``: the decisive benchmark of docs/PROTOCOL.md on X-Domain-synth
  (``docs/RESULTS.md``), in parts: ``ablation_arms`` (the arms, the data and
  the cached runs), ``ablation_stats`` (summaries and paired verdicts),
  ``ablation_report`` (the Markdown and ``--show``) and ``ablation_plots``.
* ``retrieval``: ScaNN vs exact street-to-shop search
  (its section of ``docs/BENCHMARKS.md``).

Each command module provides ``add_arguments(parser)``; none imports
TensorFlow at module level, so the command line's ``--help`` stays instant.
"""
