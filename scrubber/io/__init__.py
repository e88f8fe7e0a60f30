"""Checkpoints and text in, outputs out: loading user models safely, reading data, atomic writes."""
