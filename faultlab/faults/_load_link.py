"""The ``[link]`` table of a profile -> validated :class:`Link` (one :class:`LinkSpec` per direction)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..tables import Table, choice, one_of
from ._model import GilbertElliott, Link, LinkSpec
from ._units import BITRATE_ALLOWED, DURATION_ALLOWED, RATE_ALLOWED, parse_bitrate, parse_duration, parse_rate

__all__ = ["parse_link", "LINK_TOP_KEYS"]

LINK_KEYS = ("delay", "jitter", "distribution", "loss", "duplicate", "reorder", "rate")
LINK_TOP_KEYS = LINK_KEYS + ("dns_delay", "to-pbx", "to-device")
GE_KEYS = ("p", "r", "bad_loss", "good_loss")
DISTRIBUTIONS = ("uniform", "normal")


def _ge(t: Table, name: str) -> GilbertElliott:
    g = t.sub(name, GE_KEYS)
    p = g.require("p", parse_rate, RATE_ALLOWED + " (P(good -> bad) per packet)")
    r = g.require("r", parse_rate, RATE_ALLOWED + " (P(bad -> good) per packet)")
    bad = g.get("bad_loss", parse_rate, RATE_ALLOWED + " (loss in the bad state, netem's 1-h)", 1.0)
    good = g.get("good_loss", parse_rate, RATE_ALLOWED + " (loss in the good state, netem's 1-k)", 0.0)
    return GilbertElliott(p=p, r=r, h=1.0 - bad, k=1.0 - good)


def _link_fields(t: Table) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "delay" in t:
        out["delay"] = t.get("delay", parse_duration, DURATION_ALLOWED)
    if "jitter" in t:
        out["jitter"] = t.get("jitter", parse_duration, DURATION_ALLOWED)
    if "distribution" in t:
        out["distribution"] = t.get("distribution", choice(DISTRIBUTIONS), one_of(DISTRIBUTIONS))
    if "loss" in t:
        if isinstance(t.data["loss"], Mapping):
            out["loss_model"] = _ge(t, "loss")
            out["loss"] = 0.0
        else:
            out["loss"] = t.get(
                "loss", parse_rate, RATE_ALLOWED + ", or a Gilbert-Elliott table { p = \"1%\", r = \"30%\" }"
            )
            out["loss_model"] = None
    if "duplicate" in t:
        out["duplicate"] = t.get("duplicate", parse_rate, RATE_ALLOWED)
    if "reorder" in t:
        out["reorder"] = t.get("reorder", parse_rate, RATE_ALLOWED)
    if "rate" in t:
        out["rate_bps"] = t.get("rate", parse_bitrate, BITRATE_ALLOWED)
    return out


def parse_link(t: Table) -> Link:
    base = _link_fields(t)
    dns_delay = t.get("dns_delay", parse_duration, DURATION_ALLOWED, 0.0)
    specs = {}
    for direction in ("to-pbx", "to-device"):
        fields = dict(base)
        if direction in t:
            fields.update(_link_fields(t.sub(direction, LINK_KEYS)))
        spec = LinkSpec(**fields)
        if spec.reorder and not spec.delay:
            where = t.key(direction) if direction in t and "reorder" in t.data[direction] else t.key("reorder")
            raise t.error_at(where, f"{spec.reorder:.0%}", "reorder needs a delay: a reordered message skips the delay")
        specs[direction] = spec
    return Link(to_pbx=specs["to-pbx"], to_device=specs["to-device"], dns_delay=dns_delay)
