"""A scenario's ``[faults]`` as a profile: merging two profiles, and writing a parsed table back as profile TOML
for the profile parser (:mod:`faultlab.lab.scenario`)."""

from __future__ import annotations

from dataclasses import replace
from faultlab import tables
from faultlab.faults import Profile

__all__ = ["merge_profiles", "profile_toml"]


def merge_profiles(first: Profile, second: Profile) -> Profile:
    """One profile with ``first``'s rules, then ``second``'s; ``first``'s link, else ``second``'s."""
    return replace(first, name=f"{first.name}+{second.name}", summary=f"{first.summary} + {second.summary}",
                   rules=first.rules + second.rules, link=first.link or second.link, text="")


def profile_toml(body: dict, *, name: str) -> str:
    """TOML text for a profile table parsed from a scenario (rules and link), for the profile parser."""
    lines = [f"name = {tables.toml_value(name)}"]
    link = body.get("link")
    if isinstance(link, dict):
        lines.append("[link]")
        lines += [f"{k} = {tables.toml_value(v)}" for k, v in link.items()]
    rules = body.get("rules", [])
    for rule in rules if isinstance(rules, list) else [rules]:
        lines.append("[[rules]]")
        lines += [f"{k} = {tables.toml_value(v)}" for k, v in (rule.items() if isinstance(rule, dict) else [])]
    return "\n".join(lines) + "\n"
