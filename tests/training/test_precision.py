"""``mixed_precision: auto``: bf16 only where the device multiplies bf16 matrices natively. On a CPU
without it (AVX2 only) a bf16 step takes a scalar fallback, tens of times slower than fp32."""

from __future__ import annotations

import pytest

from training import loop
from training.config import ConfigError, apply_overrides, load_preset


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "no")])
def test_auto_is_bf16_only_where_it_is_native(monkeypatch, native, expected):
    monkeypatch.setattr(loop, "native_bf16", lambda: native)
    assert loop.resolve_precision("auto") == expected
    assert loop.resolve_precision("no") == "no"


def test_explicit_bf16_on_a_cpu_without_it_is_kept_and_warned(monkeypatch, capsys):
    monkeypatch.setattr(loop, "native_bf16", lambda: False)
    monkeypatch.setattr(loop.torch.cuda, "is_available", lambda: False)
    assert loop.resolve_precision("bf16") == "bf16"
    assert "many times slower than fp32" in capsys.readouterr().out


def test_the_demo_preset_asks_for_auto_and_the_check_knows_it():
    assert load_preset("demo")["train"]["mixed_precision"] == "auto"
    with pytest.raises(ConfigError, match="auto, no, fp16, bf16 or fp8"):
        apply_overrides(load_preset("demo"), ["train.mixed_precision=fast"])
