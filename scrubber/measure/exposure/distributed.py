"""Candidate scoring sharded across processes with ``accelerate`` (CPU or GPU).

Every process holds the model and the full candidate list (references are drawn
deterministically from the seed, so all processes build the same list).  The
candidates are cut into exactly the batches one process would run
(:func:`plan_batches`), process ``p`` scores batches ``p, p+N, ...``, and
``gather_object`` brings every shard to every process.  Since each batch has
the same shapes and inputs as in one process, the scores, and so the
exposures, are bit-identical on CPU (a contiguous split, as
``split_between_processes`` gives, would regroup batches and differ by float32
noise, ~1e-6 bits, which the skew-normal's far tail amplifies to ~1e-4 bits).  Exact enumeration shards the same way; the search (sequential by
nature) runs on every process identically.

Run it as::

    accelerate launch --multi_gpu --num_processes 2 -m scrubber.measure.exposure.distributed \\
        MODEL_DIR --canaries canaries.jsonl --out exposures.json

``--multi_gpu`` is what makes ``accelerate launch`` start several processes
(through torchrun); on a machine without CUDA, or with ``--cpu`` passed to this
module, the processes join a gloo group on CPU.  ``accelerate launch --cpu
--num_processes N`` does *not* work for this: in accelerate 1.15 it starts a
single process unless an MPI hostfile is given.  ``torchrun --nproc_per_node N
-m scrubber.measure.exposure.distributed ...`` works too.  Without a launcher it runs
as one process.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from scrubber.measure.exposure.scoring import DType, Progress, score_candidates, score_token_spans
from scrubber.measure.exposure.tokens import SecretTokens, secret_tokens


def plan_batches(spans: Sequence[SecretTokens], batch_size: int) -> list[list[int]]:
    """Span indices in the batches :func:`score_token_spans` would form, in its order.

    Mirrors its grouping (context, then scored length, then all-but-last token
    path, ``batch_size`` paths per forward).  Handing each process whole
    batches, in order, makes it form exactly these batches again, so every
    score is computed with the same shapes and inputs as in one process:
    bit-identical on CPU, whatever the number of processes.
    """
    groups: dict = defaultdict(lambda: defaultdict(list))
    for i, span in enumerate(spans):
        groups[span.context][len(span.scored)].append(i)
    out: list[list[int]] = []
    for by_len in groups.values():
        for length, idx in sorted(by_len.items()):
            if length == 1:
                out.extend(idx[b : b + batch_size] for b in range(0, len(idx), batch_size))
                continue
            by_parent: dict = defaultdict(list)
            for i in idx:
                by_parent[spans[i].scored[:-1]].append(i)
            keys = list(by_parent)
            for b in range(0, len(keys), batch_size):
                out.append([i for k in keys[b : b + batch_size] for i in by_parent[k]])
    return out


def _state(cpu: bool | None = None):
    """The process group, on CPU (gloo) when asked, when ``ACCELERATE_USE_CPU`` is set, or without CUDA.

    ``PartialState`` alone joins a launched group only on accelerators; on a
    CPU-only machine it needs ``cpu=True`` to pick gloo.
    """
    from accelerate import PartialState

    if cpu is None:
        flag = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
        cpu = flag or not torch.cuda.is_available()
    return PartialState(cpu=cpu)


def score_candidates_sharded(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prefix: str,
    candidates: Sequence[str],
    *,
    batch_size: int = 256,
    dtype: DType = None,
    progress: Progress | None = None,
    state=None,
) -> np.ndarray:
    """:func:`score_candidates` with the candidates split over the processes of ``state``.

    Every process must call it with the same arguments; every process gets the
    full score array back.  With one process it is ``score_candidates``.
    """
    from accelerate.utils import gather_object

    state = state or _state()
    n = len(candidates)
    if state.num_processes == 1:
        return score_candidates(
            model, tokenizer, prefix, candidates, batch_size=batch_size, dtype=dtype, progress=progress
        )
    spans = secret_tokens(tokenizer, prefix, candidates)
    batches = plan_batches(spans, batch_size)
    local = [i for b in batches[state.process_index :: state.num_processes] for i in b]
    shard = (
        score_token_spans(
            model, [spans[i] for i in local], batch_size=batch_size, dtype=dtype, progress=progress
        ).tolist()
        if local
        else []
    )
    # one object per process, concatenated in process order
    pairs = gather_object([(local, shard)])
    out = np.full(n, np.nan, dtype=np.float64)
    for idx, vals in pairs:
        out[idx] = vals
    if np.isnan(out).any():
        raise RuntimeError("sharded scoring lost candidates: processes disagree on the candidate list")
    return out


def sharded_scorer(state=None) -> Callable[..., np.ndarray]:
    """A ``scorer`` for :func:`measure_exposure` / :func:`exact_exposure` that shards over ``state``."""
    state = state or _state()

    def scorer(model, tokenizer, prefix, candidates, **kwargs) -> np.ndarray:
        return score_candidates_sharded(model, tokenizer, prefix, candidates, state=state, **kwargs)

    return scorer


def measure_distributed(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    canaries: Sequence,
    *,
    state=None,
    **kwargs,
) -> dict:
    """:func:`~scrubber.measure.exposure.engine.measure_many` with reference/enumeration scoring sharded."""
    from scrubber.measure.exposure.engine import measure_many

    return measure_many(model, tokenizer, canaries, scorer=sharded_scorer(state), **kwargs)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m scrubber.measure.exposure.distributed",
        description="Measure canary exposures with candidate scoring sharded over accelerate processes.",
    )
    p.add_argument("model_dir", help="directory with save_pretrained model and tokenizer")
    p.add_argument("--canaries", required=True, help="canary file (JSON Lines)")
    p.add_argument("--out", required=True, help="JSON file to write (by the main process)")
    p.add_argument("--method", default="auto", help="auto | exact | search | interpolated | extrapolated")
    p.add_argument("--n-references", type=int, default=1000)
    p.add_argument("--exact-limit", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--dtype", default=None, help="None (model precision), auto, bf16 or fp16")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process on CPU")
    p.add_argument("--cpu", action="store_true", help="score on CPU even when CUDA is available")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(max(1, args.threads))
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from canaries.canary import load_canaries

    state = _state(cpu=True if args.cpu else None)
    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    model = AutoModelForCausalLM.from_pretrained(args.model_dir).to(state.device).eval()
    canaries = load_canaries(args.canaries)
    results = measure_distributed(
        model, tokenizer, canaries, state=state, method=args.method,
        n_references=args.n_references, exact_limit=args.exact_limit, seed=args.seed,
        batch_size=args.batch_size, dtype=args.dtype,
    )  # fmt: skip
    if state.is_main_process:
        out = {
            "num_processes": state.num_processes,
            "device": str(state.device),
            "seconds": time.perf_counter() - t0,
            "exposures": {cid: r.to_dict() for cid, r in results.items()},
        }
        Path(args.out).write_text(json.dumps(out, indent=2, allow_nan=False) + "\n")
    state.wait_for_everyone()
    return 0


if __name__ == "__main__":
    sys.exit(main())
