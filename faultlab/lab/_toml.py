"""TOML text from plain values: how a scenario's inline ``[faults]`` (rules and link, already parsed from the
scenario's TOML) go back to the profile parser, which then checks them as it checks any profile."""

from __future__ import annotations

from typing import Any

__all__ = ["to_toml"]


def to_toml(body: dict, *, name: str) -> str:
    """TOML text for a profile table parsed from a scenario (rules and link), for the profile parser."""
    lines = [f"name = {toml_value(name)}"]
    link = body.get("link")
    if isinstance(link, dict):
        lines.append("[link]")
        lines += [f"{k} = {toml_value(v)}" for k, v in link.items()]
    rules = body.get("rules", [])
    for rule in rules if isinstance(rules, list) else [rules]:
        lines.append("[[rules]]")
        lines += [f"{k} = {toml_value(v)}" for k, v in (rule.items() if isinstance(rule, dict) else [])]
    return "\n".join(lines) + "\n"


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f'"{k}" = {toml_value(v)}' for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {value!r} as TOML")
