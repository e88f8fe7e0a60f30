"""Evaluation: the unlearning baselines and the scrub benchmark (``python -m eval.benchmark_scrub``)."""
