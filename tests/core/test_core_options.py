"""core.options: one typed path from option text to a config dataclass."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from sglang_cascade.core.options import (
    config_from_options,
    option_names,
    parse_options_text,
    shared_options,
    split_name,
)


@dataclass
class _Admission:
    reserve: bool = True
    loan_margin: float = 0.1


@dataclass
class _Aligned:
    aligned: bool = True
    kv_base: int = 16


@dataclass(frozen=True)
class _Sched:
    admission: _Admission = field(default_factory=_Admission)
    batching: _Aligned = field(default_factory=_Aligned)
    predictor: str = "bucket"
    quantile: float | None = None


def test_keys_are_leaf_field_names_and_values_take_the_field_type():
    cfg = config_from_options(_Sched, parse_options_text("reserve=0,kv_base=32,predictor=oracle,quantile=0.9"))
    assert cfg.admission.reserve is False and cfg.batching.kv_base == 32
    assert cfg.predictor == "oracle" and cfg.quantile == 0.9
    assert cfg.admission.loan_margin == 0.1  # untouched defaults stay
    assert option_names(_Sched) == ["aligned", "kv_base", "loan_margin", "predictor", "quantile", "reserve"]


def test_defaults_are_not_shared_between_builds():
    a = config_from_options(_Sched, {"reserve": 0})
    b = config_from_options(_Sched, {})
    assert a.admission is not b.admission and b.admission.reserve is True


@pytest.mark.parametrize(
    "opts, msg",
    [
        ({"nope": 1}, "unknown option"),
        ({"reserve": 2}, "0/1"),
        ({"kv_base": 1.5}, "integer"),
        ({"loan_margin": "x"}, "number"),
    ],
)
def test_bad_options_are_rejected_with_the_key(opts, msg):
    with pytest.raises(ValueError, match=msg):
        config_from_options(_Sched, opts)


def test_text_parsing():
    assert split_name("cascade:pipelining=0,kv_ratio=1.5,predictor=oracle") == (
        "cascade",
        {"pipelining": 0, "kv_ratio": 1.5, "predictor": "oracle"},
    )
    assert split_name("least_load") == ("least_load", {})
    assert parse_options_text(" a=1 , b=none ") == {"a": 1, "b": "none"}
    with pytest.raises(ValueError, match="not key=value"):
        parse_options_text("a=1,b")


def test_optional_accepts_none_text():
    assert config_from_options(_Sched, {"quantile": "none"}).quantile is None


def test_shared_options_pass_settings_on_by_field_name_only():
    @dataclass
    class _Router:
        kv_base: int = 64  # shared with the nested _Aligned
        predictor: str = "oracle"  # shared with _Sched
        spill: bool = True  # _Sched has no such option

    shared = shared_options(_Router(), _Sched)
    assert shared == {"kv_base": 64, "predictor": "oracle"}
    cfg = config_from_options(_Sched, shared)
    assert cfg.batching.kv_base == 64 and cfg.predictor == "oracle" and cfg.admission.reserve is True
