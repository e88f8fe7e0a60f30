"""Smoke test of the scaling benchmark (eval.bench_scaling): the pieces its numbers rest on.

* the exponent fit recovers a known power law;
* the FLOP counter counts exactly the tokens of forwards and backwards whose sizes we know
  (plain, padded, with a key/value cache, and with a backward pass);
* the skip rule skips a point predicted to exceed the limit and says why;
* a real (tiny) run writes the JSON contract, the Markdown table and the plots.

No timing is asserted: the machine is shared, so only ratios within a run mean anything.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from eval.bench_scaling import PointFailed, main, run_grid
from eval.scaling.fit import fit_power
from eval.scaling.flops import FlopCounter, param_split
from eval.scaling.grid import GridPoint
from eval.scaling.worker import PointSpec, scrub_canaries


def test_fit_recovers_known_exponent():
    ns = [1, 4, 16, 64]
    fit = fit_power(ns, [3 * n**1.5 for n in ns])
    assert fit is not None
    assert abs(fit.exponent - 1.5) < 0.01
    assert abs(fit.coefficient - 3.0) < 0.01
    assert fit.r2 > 0.9999
    # multiplicative noise of +-10% at alternate points moves the exponent by little, not by 1
    noisy = fit_power(ns, [3 * n**1.5 * (1.1 if i % 2 else 0.9) for i, n in enumerate(ns)])
    assert abs(noisy.exponent - 1.5) < 0.1
    assert fit_power([4, 4], [1.0, 2.0]) is None  # one distinct x: nothing to fit


def test_param_split_excludes_embedding_tables(tiny_gpt2):
    split = param_split(tiny_gpt2)
    total = sum(p.numel() for p in tiny_gpt2.parameters())
    wte, wpe = tiny_gpt2.transformer.wte.weight, tiny_gpt2.transformer.wpe.weight
    assert split.embeddings == wte.numel() + wpe.numel()
    assert split.body == total - wte.numel() - wpe.numel()  # head tied to wte: not in total twice
    assert split.head == tiny_gpt2.lm_head.weight.numel()


def test_flop_counter_counts_known_forwards_exactly(tiny_gpt2):
    model = tiny_gpt2
    split = param_split(model)
    ids = torch.randint(0, 300, (3, 7))
    with FlopCounter(model) as fc, torch.no_grad():
        model(input_ids=ids)
        c = fc.counts
        assert (c.body_forward, c.head_forward, c.body_backward, c.head_backward) == (21, 21, 0, 0)
        assert fc.flops()["forward"] == 2 * (split.body * 21 + split.head * 21)
        # padded batch: 21 positions computed, 17 of them real
        mask = torch.ones(3, 7, dtype=torch.long)
        mask[0, :4] = 0
        model(input_ids=ids, attention_mask=mask)
        assert (c.body_forward, c.body_forward_real) == (42, 38)
        # key/value cache: 5 then 2 new tokens are 7 through the body, not 5 + 7
        out = model(input_ids=ids[:1, :5], use_cache=True)
        model(input_ids=ids[:1, 5:], past_key_values=out.past_key_values, use_cache=True)
        assert c.body_forward == 42 + 7
    # detached: further forwards are not counted
    with torch.no_grad():
        model(input_ids=ids)
    assert fc.counts.body_forward == 49


def test_flop_counter_counts_backward_tokens(tiny_gpt2):
    model = tiny_gpt2
    split = param_split(model)
    ids = torch.randint(0, 300, (2, 5))
    with FlopCounter(model) as fc:
        model(input_ids=ids, labels=ids).loss.backward()
        with torch.no_grad():  # a forward without a backward adds no backward tokens
            model(input_ids=ids)
    c = fc.counts
    assert (c.body_forward, c.head_forward, c.body_backward, c.head_backward) == (20, 20, 10, 10)
    f = fc.flops()
    assert f["backward"] == 4 * (split.body + split.head) * 10
    assert f["total"] == 2 * (split.body + split.head) * 20 + f["backward"]
    model.zero_grad(set_to_none=True)


def test_scrub_documents_hold_their_secret():
    cans = scrub_canaries(3, 4, seed=0)
    assert len(cans) == 3 and len({c.secret for c in cans}) == 3
    for c in cans:
        assert len(c.documents) == 4 and len(set(c.documents)) == 4
        assert all(d.count(c.secret) == 1 for d in c.documents)


def _fake_point(i: int, units: float) -> GridPoint:
    spec = PointSpec(kind="scan", model="m", model_dir="unused", n_canaries=int(units))
    return GridPoint(f"scan/m/n={int(units)}", "scan/m", spec, units, i, ["scan/m"])


def test_run_grid_skips_a_point_predicted_over_the_limit(monkeypatch):
    import eval.bench_scaling as bench

    clock = [0.0]
    monkeypatch.setattr(bench.time, "monotonic", lambda: clock[0])

    def runner(point, timeout):
        clock[0] += 10.0 * point.units  # 10 s per canary
        if point.units == 4:
            raise PointFailed("boom")
        return {"peak_rss_mb": 100.0, "rss_before_mb": 90.0}

    monkeypatch.setattr(bench, "point_summary",
                        lambda r: {"seconds": 1.0, "wall_seconds": 1.0, "efficiency": None, "peak_rss_mb": 1.0})
    pts = [_fake_point(0, 1), _fake_point(1, 2), _fake_point(2, 4), _fake_point(3, 64)]
    out = run_grid(pts, runner, budget_s=10_000, point_limit_s=300, device="cpu")
    status = {p["id"]: p["status"] for p in out}
    assert status == {"scan/m/n=1": "ok", "scan/m/n=2": "ok", "scan/m/n=4": "failed", "scan/m/n=64": "skipped"}
    note = out[-1]["note"]
    assert "predicted 640 s" in note and "--device cuda" in note  # 64 x the 2-canary point's 20 s / 2
    # on CUDA there is no per-point limit: the same point runs
    clock[0] = 0.0
    out = run_grid(pts, runner, budget_s=10_000, point_limit_s=None, device="cuda")
    assert out[-1]["status"] == "ok"


@pytest.fixture
def scrub_data(tmp_path):
    from tests.conftest import corpus_texts

    docs = corpus_texts()
    ev, re_ = tmp_path / "eval.jsonl", tmp_path / "retain.jsonl"
    ev.write_text("".join(json.dumps({"text": t[:1500]}) + "\n" for t in docs[60:64]))
    re_.write_text("".join(json.dumps({"text": t[:1500]}) + "\n" for t in docs[64:79]))
    return ev, re_


def test_tiny_run_writes_the_json_contract(saved_tiny_model, scrub_data, tmp_path, capsys):
    ev, re_ = scrub_data
    out = tmp_path / "out"
    rc = main(["--quick", "--in-process", "--out", str(out), "--models", "tiny", "--scrub-model", "tiny",
               "--model-dir", f"tiny={saved_tiny_model}", "--eval-data", str(ev), "--retain-data", str(re_),
               "--scan-canaries", "1,2", "--scrub-methods", "iterative", "--scrub-secrets", "1",
               "--scrub-docs", "1,2", "--scrub-steps", "1"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    data = json.loads((out / "scaling.json").read_text())
    assert printed["points"] == data["points"]
    for key in ("command", "settings", "machine", "points", "curves", "seconds", "plots"):
        assert key in data
    assert len(data["machine"]["load_start"]) == 3 and data["machine"]["matmul_gflops_start"] > 0
    assert data["settings"]["fixed_work"]["adaptive_references"] is False
    assert [p["status"] for p in data["points"]] == ["ok"] * 4
    for p in data["points"]:
        r, s = p["result"], p["summary"]
        assert r["references_scored"] == [32] and r["exposure_methods"] == ["extrapolated"]
        assert s["peak_rss_mb"] >= r["rss_before_mb"] * 0.5 and s["flops"] > 0
        assert 0 < s["efficiency"] < 5  # a ratio, not seconds or FLOPs
    scans = [p for p in data["points"] if p["family"] == "scan/tiny"]
    # fixed work: two canaries do twice the scoring of one (extraction and load aside)
    toks = [p["result"]["counter"]["tokens"]["head_forward"] for p in scans]
    assert 1.8 < toks[1] / toks[0] < 2.2
    scrubs = [p for p in data["points"] if p["family"] == "scrub/iterative"]
    assert [p["result"]["scrub"]["steps"] for p in scrubs] == [1, 1]  # no early stop
    assert [p["result"]["scrub"]["edit_pairs"] for p in scrubs] == [1, 2]
    names = {c["name"]: c for c in data["curves"]}
    assert set(names) == {"scan/tiny", "scrub/iterative/vs-docs/secrets=1", "scrub/iterative/vs-secrets/docs=1",
                          "scrub/iterative/vs-secrets/docs=2"}
    fit = names["scan/tiny"]["fits"]["flops"]
    assert fit is not None and math.isfinite(fit["exponent"])
    assert names["scrub/iterative/vs-secrets/docs=1"]["fits"]["seconds"] is None  # one point: no fit
    md = (out / "scaling.md").read_text()
    assert "| `scan/tiny` |" in md and "## Points" in md
    assert data["plots"] and all((out / f).read_bytes()[:4] == b"\x89PNG" for f in data["plots"])
