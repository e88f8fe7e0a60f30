"""scrubber: find memorized secrets in a Hugging Face causal LM, scrub them, and prove it.

The packages follow the pipeline: `io` (checkpoints and text in, atomic
outputs), `measure` (exposure, extraction, utility, the non-member test),
`discovery` and `tokenizer_scan` (finding secrets nobody listed), `edits`
(substitutes and the update methods with their math), `judge` (the verdict
and the robustness checks), `report` (every output format). `pipeline` runs
the stages in order; `cli` is the command line.
"""
