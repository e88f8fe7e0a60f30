"""Measurement: exposure (Secret Sharer), greedy extraction, utility, and the non-member test."""
