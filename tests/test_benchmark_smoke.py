"""The scrub benchmark end to end on a tiny demo: roles disjoint, the twin as yardstick, rows that differ."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `eval` lives at the repo root

from canaries import load_canaries  # noqa: E402
from eval.baselines.retrain import load_or_train_twin  # noqa: E402
from eval.benchmark_scrub import BenchConfig, data_roles, markdown_table, run_benchmark, write_outputs  # noqa: E402
from scrubber.demo.build import DemoSpec  # noqa: E402
from scrubber.io.checkpoint import load_model  # noqa: E402
from scrubber.pipeline import make_substitutes  # noqa: E402
from scrubber.edits import UpdateSettings  # noqa: E402

TINY = DemoSpec(
    formats=("digits8", "password"),
    repetitions=(16, 128),
    vocab_size=512,
    n_layer=2,
    d_model=32,
    n_head=2,
    epochs=2,
    block_size=64,
    batch_size=64,
)

ROW_KEYS = {"method", "fidelity_max_abs", "fidelity_mean_abs", "nonmember_inside", "nonmember_above",
            "nonmember_below", "exposure_max", "extracted", "bits_per_byte_change_pct", "seconds", "tokens",
            "canaries"}
GRID = {
    "gradient_ascent": [{"lr": 3e-4, "epochs": 2}, {"lr": 3e-3, "epochs": 2}],
    "kfac_edit": [{"keep_mass": 0.9}],
}


def s_relearn_steps(result: dict) -> int:
    return result["settings"]["relearn"]["steps"]


def test_no_relearn_flag_turns_the_probe_off():
    from eval.benchmark_scrub import parse_args

    assert parse_args(["--no-relearn"]).no_relearn and not parse_args([]).no_relearn
    assert BenchConfig(quick=True).relearn_probe_settings.steps == 2
    assert BenchConfig().relearn_probe_settings.steps == 30  # the scrub command's default budget


def test_data_roles_are_disjoint_whole_documents():
    roles = data_roles(DemoSpec())
    ev, val, ret = map(set, (roles.evaluation, roles.validation, roles.retain))
    assert ev and val and ret
    assert not ev & val and not ret & (ev | val)
    assert roles.describe()["evaluation"]["documents"] == len(roles.evaluation)


def test_benchmark_end_to_end(tmp_path):
    start = time.perf_counter()
    cfg = BenchConfig(
        spec=TINY, cache_dir=tmp_path / "cache", out=tmp_path / "out", quick=True, n_references=50,
        n_nonmembers=49, n_boot=10, max_eval_tokens=8192, update=UpdateSettings(max_steps=10, target_exposure=0.5),
        methods=("no_op", "tokenizer_only", "first_order", "gradient_ascent", "kfac_edit"), grid=GRID,
    )  # fmt: skip
    result = run_benchmark(cfg)
    write_outputs(result, cfg.out)
    elapsed = time.perf_counter() - start

    assert not result["skipped"], result["skipped"]
    rows = {r["method"]: r for r in result["methods"]}
    assert list(rows)[0] == "twin (gold standard)"
    for r in result["methods"]:
        assert ROW_KEYS <= set(r), r["method"]
        assert r["nonmember_inside"] + r["nonmember_above"] + r["nonmember_below"] == 4
        assert math.isfinite(r["bits_per_byte_change_pct"])
    noop, first = rows["no_op"], rows["first_order"]
    assert noop["bits_per_byte_change_pct"] == 0 and noop["tokens"] == 0
    # the unscrubbed model is measurably away from the twin; a scrub moves it closer
    assert noop["fidelity_max_abs"] > 3, noop["canaries"]
    worst = max(noop["fidelity"], key=lambda cid: noop["fidelity"][cid])  # the most memorized canary
    assert first["fidelity"][worst] < noop["fidelity"][worst] - 1, (noop["fidelity"], first["fidelity"])
    assert first["fidelity_mean_abs"] < noop["fidelity_mean_abs"], (noop["fidelity"], first["fidelity"])
    assert first["tokens"] > 0 and first["token_cost"]["backward_tokens"] > 0
    ga = rows["gradient_ascent"]
    assert len(ga["tuning"]["grid"]) == 2 and ga["tuning"]["chosen"] in GRID["gradient_ascent"]
    assert ga["tuning"]["tuning_tokens"] >= ga["tokens"] > 0
    assert rows["kfac_edit"]["token_cost"]["backward_tokens"] > 0  # curvature needs backward passes

    # the quick path's 2-step relearning probe: every row, one twin yardstick shared by all rows
    twin_row = rows["twin (gold standard)"]
    assert s_relearn_steps(result) == 2
    for r in result["methods"]:
        assert all(len(curve) == 3 for curve in r["relearn_curves"].values()), r["method"]  # steps 0, 1, 2
        assert r["twin_regained_max"] == twin_row["relearn_regained_max"], r["method"]
    assert twin_row["relearn_excess_max"] == 0  # the twin against itself
    # the unscrubbed model stays far above the twin under the same probe
    assert noop["relearn_excess_max"] > 3, noop["relearn_curves"]

    s = result["settings"]
    assert s["n_references"] == 50 and s["n_nonmembers"] == 49 and s["torch_threads"] == 1
    ev_docs = set(s["data_roles"]["evaluation"]["first_lines"])
    assert not ev_docs & set(s["data_roles"]["validation"]["first_lines"])
    saved = json.loads((cfg.out / "benchmark.json").read_text())
    assert saved["methods"][0]["reference"]["what"] == "retrain on D′"
    table = (cfg.out / "benchmark.md").read_text()
    assert table == markdown_table(result) and "| no_op |" in table and "twin" in table
    assert "twin regained max" in table and "Relearning probe" in table

    # the twin is cached beside the demo, dated, with the canary model's tokenizer
    loaded = load_model(tmp_path / "cache" / f"demo-{TINY.key()}" / "model")
    demo_canaries = load_canaries(tmp_path / "cache" / f"demo-{TINY.key()}" / "canaries.jsonl")
    subs, _ = make_substitutes(demo_canaries, "random", 0, loaded)  # the benchmark's substitutes
    again = load_or_train_twin(TINY, loaded.tokenizer, subs, tmp_path / "cache")
    assert again.cached and again.meta["trained_at"] == saved["methods"][0]["reference"]["trained_at"]
    assert again.tokenizer.get_vocab() == loaded.tokenizer.get_vocab()
    assert elapsed < 90, f"benchmark smoke test took {elapsed:.0f}s"
