"""The encoder's choices: what ``EncodeSettings`` refuses when it is made, and the detail gain's
forms (a mode, a number, a head code)."""

import dataclasses

import pytest

from codec.cdm.detail import gain_of
from codec.settings import EncodeSettings, gain_code, parse_detail_gain


def test_settings_refuse_bad_choices_when_made():
    assert EncodeSettings() == EncodeSettings(rate=None, target_bpp=None, detail_gain="search", scale=1, refine_steps=0)
    for bad, match in (({"rate": 1, "target_bpp": 0.1}, "either"), ({"target_bpp": 0}, "positive"),
                       ({"scale": 3}, "unknown scale"), ({"refine_steps": -1}, "refine_steps"),
                       ({"refine_steps": 1.5}, "refine_steps"), ({"refine_steps": True}, "refine_steps"),
                       ({"detail_gain": "more"}, "unknown detail gain")):  # fmt: skip
        with pytest.raises(ValueError, match=match):
            EncodeSettings(**bad)
    s = EncodeSettings(target_bpp=0.05, scale="auto", detail_gain=1.5, refine_steps=40)
    assert EncodeSettings(target_bpp=0.05, detail_gain=1.5, refine_steps=40) == s  # a budget is met at any size
    assert EncodeSettings(target_bpp=0.05, scale=1).scale == 1 and EncodeSettings(rate=2).scale == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.rate = 2  # one object travels to every actor of a job: nobody changes it on the way
    with pytest.raises(ValueError, match="either"):
        dataclasses.replace(s, rate=2)  # a changed copy is checked too


def test_detail_gain_codes_round_trip():
    assert [gain_code(gain_of(c)) for c in range(128)] == list(range(128))
    assert gain_code(1.0) == 64 and gain_code(0.01) == 0
    for bad in (-0.1, 16.0):
        with pytest.raises(ValueError, match="outside"):
            gain_code(bad)


def test_parse_detail_gain():
    assert parse_detail_gain("search") == "search" and parse_detail_gain("table") == "table"
    assert parse_detail_gain("0.5") == 0.5
    with pytest.raises(ValueError, match="search, table.*'lots'"):
        parse_detail_gain("lots")
