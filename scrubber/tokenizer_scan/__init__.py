"""The tokenizer leak scan: the vocabulary is part of the checkpoint, and it leaks too.

* :func:`scan_tokenizer` -> :class:`~scrubber.report.schema.TokenizerSection`
  (known secrets against a random-format baseline, plus discovery of
  secret-shaped entries);
* :func:`remove_tokens`: the opt-in removal of flagged entries from a fast BPE
  tokenizer, ids kept stable, with a round-trip check.
"""

from scrubber.tokenizer_scan.remove import RemovalResult, remove_tokens
from scrubber.tokenizer_scan.scan import TokenizerScanConfig, scan_tokenizer
from scrubber.tokenizer_scan.vocab import TokenizerScanError, VocabView

__all__ = ["RemovalResult", "TokenizerScanConfig", "TokenizerScanError", "VocabView", "remove_tokens",
           "scan_tokenizer"]
