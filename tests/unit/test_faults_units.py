"""Durations, rates and bit rates: units are required and spelled out."""

from __future__ import annotations

import math

import pytest

from faultlab.faults import UnitError, format_duration, parse_bitrate, parse_duration, parse_rate


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("250ms", 0.25),
        ("3s", 3.0),
        ("1.5s", 1.5),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("500us", 0.0005),
        ("0s", 0.0),
        (" 10 s ", 10.0),
        (".5s", 0.5),
    ],
)
def test_duration(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["3", "3sec", "-1s", "s", "", "1e3ms", "3 S", 3, 2.5, True, None, "inf s"])
def test_duration_rejects(bad):
    with pytest.raises(UnitError) as info:
        parse_duration(bad)
    assert isinstance(info.value, ValueError)
    assert "ms" in info.value.allowed and info.value.value == bad


@pytest.mark.parametrize("text, rate", [("8%", 0.08), ("0%", 0.0), ("100%", 1.0), ("0.5%", 0.005), ("30 %", 0.3)])
def test_rate(text, rate):
    assert parse_rate(text) == pytest.approx(rate)


@pytest.mark.parametrize("bad", ["8", "0.08", "101%", "-1%", "%", 8, "8 percent"])
def test_rate_rejects(bad):
    with pytest.raises(UnitError, match="percentage"):
        parse_rate(bad)


@pytest.mark.parametrize(
    "text, bps",
    [
        ("1mbit", 1e6),
        ("780kbit", 780e3),
        ("2Mbit", 2e6),
        ("64kbit/s", 64e3),
        ("1gbit", 1e9),
        ("9600bit", 9600.0),
        ("1.5mbit", 1.5e6),
    ],
)
def test_bitrate(text, bps):
    assert parse_bitrate(text) == pytest.approx(bps)


@pytest.mark.parametrize("bad", ["1000", "64kbps", "1Mbps", "1mb", "0kbit", 1000])
def test_bitrate_rejects(bad):
    with pytest.raises(UnitError) as info:
        parse_bitrate(bad)
    if isinstance(bad, str) and bad.lower().endswith("bps"):
        assert "ambiguous" in str(info.value)


def test_format_duration():
    assert format_duration(0.25) == "250ms"
    assert format_duration(3) == "3s"
    assert format_duration(math.inf) == "forever"
