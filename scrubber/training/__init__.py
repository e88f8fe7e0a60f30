"""Building small tokenizers and models from text: the demo, tests and the retrain baseline."""
