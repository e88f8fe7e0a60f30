"""One grid point in a process of its own: ``python -m eval.scaling.worker '<json PointSpec>'``.

Why a process per point: peak RSS only ever grows, so a point's peak is only its own in a
process of its own; torch's allocator is invisible to tracemalloc anyway. On CPU the
benchmark forks each point from a parent that has imported torch and transformers already
(:func:`preload`); on CUDA (which does not survive a fork) it starts
``python -m eval.scaling.worker`` instead. The point runs the real public call
(:func:`scrubber.pipeline.scan` or :func:`scrubber.pipeline.scrub` with ``save=False``),
with two wrappers installed from here: one around ``load_inputs`` (to time the model load and attach the
:class:`~eval.scaling.flops.FlopCounter`) and one around the scrub method (to count
the method's own seconds and tokens apart from the measurements around it).

The last stdout line is the point's JSON; progress goes to stderr.
"""

from __future__ import annotations

import json
import os
import random
import resource
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from eval.scaling.procfs import proc_kib_field

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CARD_PREFIX = "My credit card number is "


@dataclass
class PointSpec:
    kind: str
    """``scan`` or ``scrub``."""
    model: str
    model_dir: str
    device: str = "cpu"
    n_canaries: int = 1
    """scan: canaries measured; scrub: secrets scrubbed."""
    docs_per_secret: int = 1
    method: str = "iterative"
    n_references: int = 64
    max_steps: int = 6
    seed: int = 0
    eval_data: str | None = None
    retain_data: str | None = None


def rss_mb() -> float:
    """Current resident set size (MiB) from /proc (Linux); NaN elsewhere."""
    value = proc_kib_field("/proc/self/status", "VmRSS")
    return float("nan") if value is None else value


def peak_rss_mb() -> float:
    """This process's peak RSS (MiB): ``VmHWM``, which a forked child starts afresh (Linux);
    ``ru_maxrss`` where /proc is missing."""
    value = proc_kib_field("/proc/self/status", "VmHWM")
    if value is not None:
        return value
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def preload() -> None:
    """Import what every point needs, once, in a parent that forks the points (saves ~10 s a point
    on this machine; a forked child's memory and peak RSS are still its own)."""
    import scrubber.pipeline  # noqa: F401  (torch, transformers, the scorers, the methods)
    import transformers.models.gpt2.modeling_gpt2  # noqa: F401
    import transformers.models.llama.modeling_llama  # noqa: F401


def scan_canaries(n: int, seed: int):
    """``n`` fresh credit-card canaries (the demo's prefix); seeded apart from the demo's own."""
    from canaries.inject import make_canaries

    return make_canaries(["credit_card"], list(range(1, n + 1)), prefixes={"credit_card": CARD_PREFIX},
                         seed=10_000 + seed)


def carrier_records(seed: int, n_min: int, lo: int = 60, hi: int = 140) -> list[str]:
    """Paragraphs of the demo's training documents, ``lo``..``hi`` characters: the records
    canaries are appended to. Short (a form field, a log line) so that the largest grid
    point, 16 secrets x 32 documents, fits the run's time limit on two shared cores; the
    scrub cuts every occurrence to a 400-character window before the secret anyway."""
    from scrubber.demo.build import corpus_split

    train, _ = corpus_split(0, 0.1)
    paras = [p.strip() for d in train for p in d.split("\n\n")]
    paras = list(dict.fromkeys(p for p in paras if lo <= len(p) <= hi))
    random.Random(seed).shuffle(paras)
    if len(paras) < n_min:
        raise ValueError(f"only {len(paras)} carrier paragraphs, need {n_min}")
    return paras


def scrub_canaries(n_secrets: int, docs_per_secret: int, seed: int):
    """``n_secrets`` cards, each appended to ``docs_per_secret`` distinct corpus records with
    :func:`canaries.inject.inject` (mode ``append``); each canary's ``documents`` are those records."""
    from canaries.inject import inject, make_canaries

    cans = make_canaries(["credit_card"], [docs_per_secret] * n_secrets,
                         prefixes={"credit_card": CARD_PREFIX}, seed=20_000 + seed)
    records = carrier_records(seed, docs_per_secret)
    corpus, manifest = inject(records, cans, seed=seed, mode="append", joiner=" ")
    out = []
    for c in cans:
        docs = [corpus[i] for i in manifest.canaries[c.id].indices]
        assert len(docs) == docs_per_secret and all(c.secret in d for d in docs)
        out.append(c.model_copy(update={"documents": docs}))
    return out


@dataclass
class Probe:
    """What the wrappers record."""

    load_seconds: float = 0.0
    load_cpu_seconds: float = 0.0
    counter: Any = None
    method_seconds: float | None = None
    method_cpu_seconds: float | None = None
    method_flops: dict[str, float] | None = None
    method_tokens: dict[str, int] | None = None


def _install(probe: Probe):
    """Install the two wrappers; returns the function that removes them again."""
    import scrubber.pipeline as pipeline
    from scrubber.edits import METHODS
    from eval.scaling.flops import FlopCounter

    original_load = pipeline.load_inputs

    def timed_load(*args, **kwargs):
        t0, c0 = time.perf_counter(), time.process_time()
        inputs = original_load(*args, **kwargs)
        probe.load_seconds += time.perf_counter() - t0
        probe.load_cpu_seconds += time.process_time() - c0
        probe.counter = FlopCounter(inputs.loaded.model).attach()
        return inputs

    pipeline.load_inputs = timed_load

    saved = dict(METHODS)
    for name, fn in list(METHODS.items()):
        def counted(task, settings, _fn=fn):
            c = probe.counter
            before_f, before_t = c.flops(), asdict(c.counts)
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                return _fn(task, settings)
            finally:
                probe.method_seconds = time.perf_counter() - t0
                probe.method_cpu_seconds = time.process_time() - c0
                after_f, after_t = c.flops(), asdict(c.counts)
                probe.method_flops = {k: after_f[k] - before_f[k] for k in after_f}
                probe.method_tokens = {k: after_t[k] - before_t[k] for k in after_t}
        METHODS[name] = counted

    def undo() -> None:
        pipeline.load_inputs = original_load
        METHODS.update(saved)
        if probe.counter is not None:
            probe.counter.detach()

    return undo


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_point(spec: PointSpec) -> dict[str, Any]:
    """Run one point and return its JSON-ready result (also usable in-process, e.g. by tests)."""
    import torch

    from eval.scaling.flops import matmul_flop_rate

    torch.set_num_threads(1)
    cuda = spec.device.startswith("cuda")
    matmul = matmul_flop_rate(4096 if cuda else 1024, repeats=5 if cuda else 3, device=spec.device)
    probe = Probe()
    undo = _install(probe)
    try:
        out = _run(spec, probe, matmul, cuda)
    finally:
        undo()
    # the machine is shared: time the ceiling again after the point, and rate the point by the
    # mean of the two, so that load that rose during a long point is not read as inefficiency
    after = matmul_flop_rate(4096 if cuda else 1024, repeats=5 if cuda else 3, device=spec.device)
    out.update(matmul_flops_per_s_before=matmul, matmul_flops_per_s_after=after,
               matmul_flops_per_s=(matmul * after) ** 0.5)
    if not cuda:  # CPU seconds and the CPU-time ceiling: what load on a shared machine does not move
        out["matmul_cpu_flops_per_s"] = matmul_flop_rate(1024, repeats=3, clock=time.process_time)
    return out


def _run(spec: PointSpec, probe: Probe, matmul: float, cuda: bool) -> dict[str, Any]:
    import torch

    from scrubber.config import ScanConfig, ScrubConfig
    from scrubber.pipeline import scan, scrub
    from scrubber.progress import LineProgress

    progress = LineProgress(sys.stderr, interval=10.0)
    fixed = dict(  # the work is fixed: no adaptive counts, no budgets, one method
        exposure_method="extrapolated", n_references=spec.n_references, adaptive_references=False,
        exposure_seconds=None, tokenizer_scan=False, threads=None if cuda else 1, device=spec.device,
    )
    rss0 = rss_mb()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    out: dict[str, Any] = {"spec": asdict(spec), "matmul_flops_per_s": matmul, "rss_before_mb": rss0}
    if spec.kind == "scan":
        cans = scan_canaries(spec.n_canaries, spec.seed)
        cfg = ScanConfig(**fixed)
        t0, c0 = time.perf_counter(), time.process_time()
        report = scan(Path(spec.model_dir), cfg, progress=progress, canaries=cans)
        _sync(spec.device)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        meas = [c.before for c in report.canaries]
    elif spec.kind == "scrub":
        cans = scrub_canaries(spec.n_canaries, spec.docs_per_secret, spec.seed)
        cfg = ScrubConfig(
            **fixed, method=spec.method, target_exposure=0.0, max_retain_increase=1e6, max_steps=spec.max_steps,
            n_nonmembers=39, eval_data=spec.eval_data, retain_data=spec.retain_data, max_eval_tokens=4096,
        )
        t0, c0 = time.perf_counter(), time.process_time()
        outcome = scrub(Path(spec.model_dir), cfg, progress=progress, canaries=cans, save=False)
        _sync(spec.device)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        report = outcome.report
        meas = [c.before for c in report.canaries] + [c.after for c in report.canaries if c.after]
        extra = report.scrub.extra if report.scrub else {}
        out["scrub"] = {
            "method_seconds": probe.method_seconds,
            "method_cpu_seconds": probe.method_cpu_seconds,
            "method_flops": probe.method_flops,
            "method_tokens": probe.method_tokens,
            "steps": extra.get("steps"),
            "step_search_trials": len(extra["step_search"]) if "step_search" in extra else None,
            "edit_pairs": sum(len(c.documents or []) for c in cans),
        }
    else:
        raise ValueError(f"unknown point kind {spec.kind!r}")
    counter = probe.counter
    out.update(
        wall_seconds=wall,
        load_seconds=probe.load_seconds,
        work_seconds=wall - probe.load_seconds,
        cpu_seconds=cpu,
        work_cpu_seconds=cpu - probe.load_cpu_seconds,
        n_parameters=report.model.n_parameters,
        counter=counter.summary(),
        references_scored=sorted({m.n_references for m in meas}),
        exposure_methods=sorted({m.exposure_method for m in meas}),
        peak_rss_mb=peak_rss_mb(),
    )
    if cuda:
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    spec = PointSpec(**json.loads(argv[0]))
    result = run_point(spec)
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
