"""The scrub benchmark end to end on a tiny demo: every method runs, retrain is the yardstick."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `eval` lives at the repo root

from eval.baselines.retrain import load_or_retrain  # noqa: E402
from eval.benchmark_scrub import BenchConfig, markdown_table, run_benchmark, write_outputs  # noqa: E402
from scrubber.demo import DemoSpec  # noqa: E402
from scrubber.models import load_model  # noqa: E402
from scrubber.updates import UpdateSettings  # noqa: E402

TINY = DemoSpec(
    formats=("digits8", "password"),
    repetitions=(4, 16),
    vocab_size=512,
    n_layer=2,
    d_model=32,
    n_head=2,
    epochs=1,
    block_size=64,
    batch_size=64,
)

ROW_KEYS = {"method", "exposure_median", "exposure_max", "extracted", "perplexity_change_pct",
            "seconds", "fraction_of_retrain", "canaries", "within_2_bits_of_retrain"}


def test_benchmark_end_to_end(tmp_path):
    start = time.perf_counter()
    cfg = BenchConfig(
        spec=TINY, cache_dir=tmp_path / "cache", out=tmp_path / "out", quick=True,
        n_references=50, n_boot=10, max_eval_tokens=8192, update=UpdateSettings(max_steps=10),
    )
    result = run_benchmark(cfg)
    write_outputs(result, cfg.out)
    elapsed = time.perf_counter() - start

    rows = {r["method"]: r for r in result["methods"]}
    assert "retrain" in rows
    assert rows["retrain"]["fraction_of_retrain"] == 1
    assert rows["retrain"]["within_2_bits_of_retrain"] == 4
    canary_ids = {c["id"] for c in result["settings"]["canaries"]}
    assert len(canary_ids) == 4
    for name in ("finetune", "gradient_ascent", "graddiff", "npo", "first_order", "iterative",
                 "first_order_lora", "iterative_lora"):
        assert name in rows, result["skipped"]
    for r in result["methods"]:
        assert ROW_KEYS <= set(r), r["method"]
        assert set(r["canaries"]) == canary_ids
        assert 0 <= r["exposure_median"] <= r["exposure_max"]
        assert 0 <= r["extracted"] <= 4
        assert r["seconds"] > 0 and r["fraction_of_retrain"] > 0
    assert rows["first_order_lora"]["params"] == "lora"
    assert rows["first_order_lora"]["n_parameters_updated"] < rows["first_order"]["n_parameters_updated"]
    for sk in result["skipped"]:  # only methods the lead has not registered yet may be missing
        assert sk["method"] in ("iau", "second_order") and "not registered" in sk["reason"], sk
    settings = result["settings"]
    assert settings["n_references"] == 50 and settings["exposure_method"] == "extrapolated"
    assert settings["torch_threads"] == 1 and len(settings["load_avg_start"]) == 3

    saved = json.loads((cfg.out / "benchmark.json").read_text())
    assert saved["methods"][0]["method"] == "retrain"
    table = (cfg.out / "benchmark.md").read_text()
    assert table == markdown_table(result)
    assert "within 2 bits of retrain" in table and "| retrain |" in table

    # the retrained twin is cached beside the demo, with the tokenizer of the canary model
    loaded = load_model(tmp_path / "cache" / f"demo-{TINY.key()}" / "model")
    again = load_or_retrain(TINY, loaded.tokenizer, tmp_path / "cache")
    assert again.cached and again.seconds == pytest.approx(rows["retrain"]["seconds"])
    assert again.tokenizer.get_vocab() == loaded.tokenizer.get_vocab()
    assert elapsed < 60, f"benchmark smoke test took {elapsed:.0f}s"
