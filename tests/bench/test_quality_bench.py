"""The quality bench's reading of a style-vs-identity curve at equal style (hand values)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location("quality_bench", Path(__file__).resolve().parents[2] / "bench" / "quality.py")
quality = importlib.util.module_from_spec(_SPEC)
sys.modules[_SPEC.name] = quality  # dataclasses look their module up here
_SPEC.loader.exec_module(quality)


def test_identity_is_read_where_the_curve_first_reaches_a_style_level():
    curve = [{"steps": 40, "style": 0.6, "margin": 0.10}, {"steps": 10, "style": 0.2, "margin": 0.30},
             {"steps": 100, "style": 0.9, "margin": 0.04}]
    assert quality.at_style(curve, 0.4, "margin") == pytest.approx(0.20)  # halfway between steps 10 and 40
    assert quality.at_style(curve, 0.8, "margin") == pytest.approx(0.06)  # 2/3 of the way from 40 to 100
    assert quality.at_style(curve, 0.1, "margin") == pytest.approx(0.30)  # reached at the first point
    assert quality.at_style(curve, 0.95, "margin") is None  # never reached


def test_a_curve_that_dips_is_read_at_its_first_crossing():
    curve = [{"steps": 10, "style": 0.2, "margin": 0.3}, {"steps": 20, "style": 0.7, "margin": 0.2},
             {"steps": 40, "style": 0.5, "margin": 0.1}, {"steps": 100, "style": 0.9, "margin": 0.0}]
    assert quality.at_style(curve, 0.6, "margin") == pytest.approx(0.22)


def test_step_lists_parse_sorted_and_positive():
    assert quality.int_list("400,40,40") == [40, 400]
    with pytest.raises(Exception):
        quality.int_list("0,40")


def test_variants_are_found_by_short_or_table_name_and_a_typo_names_the_choices():
    assert [quality.resolve_variant(n).name for n in ("ld", "SDS", "LD (full)", "ld-mirror", "LD − grid")] == \
        ["LD (full)", "SDS", "LD (full)", "LD − mirror", "LD − grid"]
    with pytest.raises(SystemExit, match="unknown variant 'LDX'; choose from: ld, sds, ld-mirror"):
        quality.resolve_variant("LDX")


def test_sweep_variants_reach_the_distill_config_and_the_job():
    from engine.stylize.config import StylizeConfig

    base = StylizeConfig(prompt="a zombie head", generator="g")
    noiseless = quality.resolve_variant("sds-noiseless")
    assert (noiseless.method, quality.with_distill_overrides(base, noiseless).distill.sds_variant) == ("sds", "noiseless")
    high = quality.with_distill_overrides(base, quality.resolve_variant("ld-high-noise")).distill
    assert (high.single_step_range, high.grid_step_range, high.method) == ((15, 40), (15, 40), "ld")
    assert quality.with_distill_overrides(base, quality.resolve_variant("ld")) is base
    cfg100 = quality.resolve_variant("sds-textbook-cfg100")
    assert cfg100.guidance_scale == 100.0 and dict(cfg100.distill) == {"sds_variant": "textbook"}
    assert quality.resolve_variant("ld-lr5e-4").lr == 5e-4
