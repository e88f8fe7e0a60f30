"""Why the scrub's cost grows faster than its work at many edit pairs: a measurement.

    python -m eval.scaling.batching [--pairs 32,128,512] [--chunk 64]

The update methods build ``Σℓ(z̃) − Σℓ(z)`` over *all* edit pairs in one padded batch
(:meth:`scrubber.edits.task.UpdateTask.forget_loss`: one ``substitute_nll`` and one
``original_nll`` graph, both alive until the backward). This times that exact gradient
(:meth:`ParameterSelection.gradient` of ``forget_loss``) on the demo model for growing pair
counts, and the same gradient accumulated over chunks of ``--chunk`` pairs, in the given
order or sorted by length (the loss is a sum over pairs, so every variant's gradient is the
same vector up to float rounding: compare ``grad_norm``), with the
peak RSS, kernel (system) CPU seconds and minor page faults of each, and the padded and
real token counts. Each measurement runs in a forked child so its peak RSS is its own.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from typing import Any

from eval.scaling.worker import peak_rss_mb, scrub_canaries


def _pairs(n_pairs: int, docs_per_secret: int = 32):
    from scrubber.edits.objective import make_edit_pairs

    n_secrets = max(1, n_pairs // docs_per_secret)
    cans = scrub_canaries(n_secrets, min(docs_per_secret, n_pairs), seed=0)
    subs = {c.id: "4000 0000 0000 0002" for c in cans}  # any same-format value: timing only
    return [p for c in cans for p in make_edit_pairs(c.id, c.documents, c.secret, subs[c.id])]


def measure(n_pairs: int, chunk: int | None, repeats: int = 2, by_length: bool = False) -> dict[str, Any]:
    import torch

    from scrubber.demo.build import build_demo
    from scrubber.edits.params import select_parameters
    from scrubber.edits.task import UpdateTask
    from scrubber.io.checkpoint import load_model
    from eval.scaling.flops import FlopCounter

    torch.set_num_threads(1)
    loaded = load_model(build_demo().model_dir)
    model, tok = loaded.model, loaded.tokenizer
    pairs = _pairs(n_pairs)
    if by_length:  # chunks of similar length pad little
        pairs = sorted(pairs, key=lambda p: len(p.original))
    sel = select_parameters(model, "all")
    task = UpdateTask(model=model, tokenizer=tok, canaries=[], pairs=pairs, selection=sel)
    groups = [pairs] if chunk is None else [pairs[i:i + chunk] for i in range(0, len(pairs), chunk)]
    times, grad = [], None
    fc = FlopCounter(model).attach()
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(repeats):
        t0 = time.perf_counter()
        g = None
        for grp in groups:
            with sel.requires_grad_only():
                gi = sel.gradient(task.forget_loss(grp))
            g = gi if g is None else g + gi
        times.append(time.perf_counter() - t0)
        grad = g
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    fc.detach()
    c = fc.counts
    return {
        "pairs": len(pairs), "chunk": chunk, "by_length": by_length, "seconds_best": min(times), "seconds": times,
        "sys_seconds": (r1.ru_stime - r0.ru_stime) / repeats, "user_seconds": (r1.ru_utime - r0.ru_utime) / repeats,
        "minor_faults": (r1.ru_minflt - r0.ru_minflt) // repeats, "peak_rss_mb": peak_rss_mb(),
        "body_tokens_per_gradient": c.body_forward // repeats,
        "real_body_tokens_per_gradient": c.body_forward_real // repeats,
        "grad_norm": float(grad.norm()), "grad_head": [float(x) for x in grad[:4]],
    }


def forked(fn, *args) -> dict[str, Any]:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        with os.fdopen(w, "w") as f:
            f.write(json.dumps(fn(*args)))
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        data = f.read()
    os.waitpid(pid, 0)
    return json.loads(data)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m eval.scaling.batching")
    ap.add_argument("--pairs", default="32,128,512")
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--variants", default="batch,chunk,sorted",
                    help="batch: all pairs at once (the library today); chunk: --chunk pairs at a time; "
                         "sorted: chunks of pairs sorted by length")
    args = ap.parse_args(argv)
    import scrubber.pipeline  # noqa: F401  (imports once, before forking)

    rows = []
    for n in (int(x) for x in args.pairs.split(",")):
        for variant in args.variants.split(","):
            chunk = None if variant == "batch" else args.chunk
            if chunk is not None and chunk >= n:
                continue
            row = forked(measure, n, chunk, args.repeats, variant == "sorted")
            print(f"[batching] {json.dumps(row)}", file=sys.stderr, flush=True)
            rows.append(row)
    json.dump({"load": os.getloadavg(), "rows": rows}, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
