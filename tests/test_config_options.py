"""One meaning per option: options a method ignores are refused, with the flag named, in one line."""

from __future__ import annotations

import pytest

from scrubber.config import METHOD_OPTIONS, ScrubConfig, load_config
from scrubber.errors import ScrubberError


@pytest.mark.parametrize("method,option,value,owner", [
    ("iterative", "tau", 1e-3, "first-order and iau and second-order"),
    ("first-order", "step_size", 5e-3, "iterative"),
    ("iau", "max_steps", 10, "iterative"),
    ("second-order", "retain_weight", 5.0, "iterative"),
    ("iterative", "damping", 0.1, "second-order"),
])
def test_an_option_of_another_method_is_refused(method, option, value, owner):
    with pytest.raises(ScrubberError) as err:
        load_config(ScrubConfig, None, {"method": method, option: value})
    msg = str(err.value)
    assert msg == f"--{option.replace('_', '-')} applies to {owner} only, not {method}"
    assert "\n" not in msg


def test_each_method_takes_its_own_options_and_the_preset_loads_for_every_method(tmp_path):
    assert load_config(ScrubConfig, None, {"method": "iterative", "step_size": 5e-3}).step_size == 5e-3
    assert load_config(ScrubConfig, None, {"method": "second-order", "tau": 0.5, "damping": 1.0}).damping == 1.0
    from pathlib import Path
    preset = Path(__file__).resolve().parents[1] / "configs" / "scrub.yaml"
    for method in ("iterative", "first-order", "second-order", "iau"):
        # the preset spells out every default; switching the method alone must not break it
        cfg = load_config(ScrubConfig, preset, {"method": method, "canaries": tmp_path / "c.jsonl"})
        assert cfg.method == method


def test_every_method_specific_option_names_real_methods_and_fields():
    from scrubber.edits import METHODS

    for option, methods in METHOD_OPTIONS.items():
        assert option in ScrubConfig.model_fields
        assert set(methods) <= set(METHODS)
