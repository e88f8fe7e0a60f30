"""A scrub that did not work says so and fails (exit 1); data roles are disjoint and reported."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from conftest import CARD_SECRET, write_card_canary
from scrubber.cli import app


def _scrub(model_dir, heldout, tmp_path, *extra):
    canaries = write_card_canary(tmp_path / "c.jsonl")
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["scrub", str(model_dir), "--canaries", str(canaries), "--out", str(out),
                                 "--eval-data", str(heldout), "--n-references", "100",
                                 "--report", str(tmp_path / "scrub.json"), "-q", *extra])
    rep = json.loads((tmp_path / "scrub.json").read_text()) if (tmp_path / "scrub.json").exists() else None
    return r, out, rep


def test_missed_target_exits_1_names_the_canary_and_still_writes_the_model(card_model, tmp_path):
    model_dir, heldout = card_model
    r, out, rep = _scrub(model_dir, heldout, tmp_path, "--method", "iterative", "--max-steps", "1")
    assert r.exit_code == 1, r.output
    assert "scrub failed" in r.stderr and "card" in r.stderr
    assert (out / "config.json").exists()  # written for inspection
    v = rep["verdict"]
    assert v["passed"] is False and v["above_target"] == ["card"]
    assert rep["canaries"][0]["after"]["exposure"] > v["target_exposure"]
    assert CARD_SECRET not in r.output


def test_allow_partial_exits_0_and_still_reports_the_miss(card_model, tmp_path):
    model_dir, heldout = card_model
    r, _out, rep = _scrub(model_dir, heldout, tmp_path, "--max-steps", "1", "--allow-partial")
    assert r.exit_code == 0, r.output
    assert rep["verdict"]["passed"] is False and rep["verdict"]["allow_partial"] is True
    assert "warning: scrub incomplete" in r.stderr


def test_successful_scrub_exits_0_with_disjoint_reported_data_roles(card_model, tmp_path):
    model_dir, heldout = card_model
    r, _out, rep = _scrub(model_dir, heldout, tmp_path)
    assert r.exit_code == 0, r.output
    v = rep["verdict"]
    assert v["passed"] is True and not v["above_target"] and not v["extracted"]
    assert v["utility_kept"] is True
    roles = {x["role"]: x for x in rep["data_roles"]["roles"]}
    assert set(roles) == {"evaluation", "tune", "retain"}
    assert all(x["path"] == str(heldout) for x in roles.values())
    ev, tu, re_ = (set(roles[k]["documents"]) for k in ("evaluation", "tune", "retain"))
    assert ev and tu and re_ and not (ev & tu) and not (ev & re_) and not (tu & re_)
    assert "split by document" in rep["data_roles"]["rule"]
    nm = rep["canaries"][0]["nonmember"]
    assert nm["verdict"] in {"inside", "above", "below"} and nm["n_nonmembers"] == 200
    u = rep["utility"]
    assert u["eval_documents"] <= len(ev)
    assert u["bits_per_byte_before"] > 0 and u["bits_per_byte_after"] > 0


def test_gradient_checkpointing_gives_the_same_scrub(card_model, tmp_path):
    """Checkpointing only trades memory for recomputation: the update must not change."""
    model_dir, heldout = card_model
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _, _, plain = _scrub(model_dir, heldout, tmp_path / "a", "--max-steps", "4", "--allow-partial")
    _, _, ckpt = _scrub(model_dir, heldout, tmp_path / "b", "--max-steps", "4", "--allow-partial",
                        "--gradient-checkpointing")
    a, b = plain["canaries"][0]["after"], ckpt["canaries"][0]["after"]
    assert abs(a["score_bits"] - b["score_bits"]) < 1e-3 * max(1.0, abs(a["score_bits"]))
    moved = a["score_bits"] - plain["canaries"][0]["before"]["score_bits"]
    assert moved > 0.5, moved  # 4 steps made the secret less likely: measured 86.57 -> 87.62 bits


def test_device_map_auto_runs_the_scrub_through_accelerate(card_model, tmp_path):
    """--device-map auto (accelerate's placement; here everything lands on the CPU) loads, updates
    and saves like a plain load: the update flows through accelerate's dispatch hooks."""
    model_dir, heldout = card_model
    r, out, rep = _scrub(model_dir, heldout, tmp_path, "--device-map", "auto", "--max-steps", "3", "--allow-partial")
    assert r.exit_code == 0, r.output
    c = rep["canaries"][0]
    assert c["after"]["score_bits"] > c["before"]["score_bits"]
    assert (out / "model.safetensors").exists()
