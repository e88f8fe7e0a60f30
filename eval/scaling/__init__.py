"""The scaling benchmark's parts (``python -m eval.bench_scaling`` runs them).

* :mod:`.flops` counts the tokens a model actually processes (forward and backward) with
  hooks, without touching the library, and times a matmul as the machine's FLOP/s ceiling;
* :mod:`.fit` fits growth exponents on log-log axes;
* :mod:`.worker` runs one grid point (a real ``scan`` or ``scrub`` call) in a fresh process,
  so each point's peak memory is its own;
* :mod:`.models` prepares the three model sizes, :mod:`.report` writes the table and plots.
"""
