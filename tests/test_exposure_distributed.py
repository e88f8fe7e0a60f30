"""Candidate scoring sharded over 2 CPU processes with accelerate gives the one-process exposures."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from canaries.canary import Canary, dump_canaries
from conftest import console_script
from scrubber.measure.exposure import measure_many
from scrubber.measure.exposure.distributed import score_candidates_sharded

CANARIES = [
    Canary(id="pin", prefix="The pin is ", secret="123", format="digits3"),
    Canary(id="card", prefix="My credit card number is ", secret="6604 8764 7593 8247", format="credit_card"),
    Canary(id="pw", prefix="password: ", secret="hunter2abc", format="password"),
]
OPTIONS = {"n_references": 301, "seed": 3, "batch_size": 64}


def _launcher() -> list[str]:
    found = console_script("accelerate")
    if found is None:
        pytest.skip("accelerate launcher not installed")
    return [found, "launch"]


def test_two_cpu_processes_match_one(tmp_path, saved_tiny_model):
    canary_file = tmp_path / "canaries.jsonl"
    dump_canaries(CANARIES, canary_file)
    out = tmp_path / "exposures.json"
    env = {
        **os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1", "MASTER_PORT": "29517",
    }  # fmt: skip
    # --multi_gpu is what makes `accelerate launch` start N processes (torchrun); without CUDA they join gloo
    cmd = [
        *_launcher(), "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517",
        "-m", "scrubber.measure.exposure.distributed", str(saved_tiny_model),
        "--canaries", str(canary_file), "--out", str(out), "--cpu",
        "--n-references", str(OPTIONS["n_references"]), "--seed", str(OPTIONS["seed"]),
        "--batch-size", str(OPTIONS["batch_size"]),
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(out.read_text())
    assert got["num_processes"] == 2

    # the same checkpoint loaded the same way (a reloaded config may pick another attention kernel)
    model = AutoModelForCausalLM.from_pretrained(saved_tiny_model).eval()
    tokenizer = AutoTokenizer.from_pretrained(saved_tiny_model)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        local = measure_many(model, tokenizer, CANARIES, **OPTIONS)
    finally:
        torch.set_num_threads(before)
    assert set(got["exposures"]) == set(local)
    for cid, want in local.items():
        have = got["exposures"][cid]
        assert have["method"] == want.method
        assert have["rank"] == want.rank
        assert abs(have["score_bits"] - want.score_bits) <= 1e-6, cid
        assert abs(have["exposure"] - want.exposure) <= 1e-6, cid
        for end in ("ci_low", "ci_high"):
            assert abs(have[end] - getattr(want, end)) <= 1e-6, (cid, end)


def test_sharded_scorer_is_plain_scoring_in_one_process(tiny_gpt2, tiny_tokenizer):
    from accelerate import PartialState

    cands = [f"{i:03d}" for i in range(0, 1000, 37)]
    sharded = score_candidates_sharded(tiny_gpt2, tiny_tokenizer, "pin: ", cands, state=PartialState(cpu=True))
    from scrubber.measure.exposure import score_candidates

    assert (sharded == score_candidates(tiny_gpt2, tiny_tokenizer, "pin: ", cands)).all()
