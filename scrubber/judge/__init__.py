"""Judging a scrub: the verdict, and whether the secret stays gone (relearning, ripple)."""
