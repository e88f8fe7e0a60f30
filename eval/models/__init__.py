"""Real pretrained models as users have them, made available offline for slow tests and benchmarks."""
