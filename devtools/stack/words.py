"""Fence events in the farm's words, for ``./dev stack``: "ewe-17 escaped from North paddock, 40 m out"."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fencex.event import HERD_TYPES

RESET = "\033[0m"
COLOURS = {
    "enter": "\033[32m",  # green
    "exit": "\033[33m",  # yellow
    "dwell": "\033[36m",  # cyan
    "escape": "\033[1;31m",  # bold red: an animal is out
    "return": "\033[1;32m",  # bold green: it is back
    "battery_low": "\033[35m",  # magenta
    "battery_ok": "\033[34m",  # blue
    "silent": "\033[1;35m",  # bold magenta: a collar gone quiet
    "resumed": "\033[34m",  # blue
    "transferred": "\033[34m",  # blue
    "retract": "\033[2m",  # dim: an earlier line withdrawn
}


def _pct(e: Mapping[str, Any]) -> str:
    b = e.get("battery")
    return f" ({b:.0f}%)" if isinstance(b, int | float) else ""


def words(e: Mapping[str, Any], names: Mapping[str, str]) -> str:
    """What happened, as a farmer would say it. ``names``: fence id -> the fence's name
    (an id without a name is shown as it is)."""
    device, fid, kind = e["device_id"], e.get("fence_id") or "", e["type"]
    fence = names.get(fid) or fid
    collar = device if device.lower().startswith("collar") else f"collar {device}"
    if kind == "enter":
        return f"{device} went into {fence}"
    if kind == "exit":
        return f"{device} left {fence}"
    if kind == "dwell":
        return f"{device} has been in {fence} for {e.get('dwell_s', 0) / 60:.0f} min"
    if kind == "escape":
        d = e.get("distance_m")
        far = f", {d:.0f} m out" if isinstance(d, int | float) else ""
        return f"{device} escaped from {fence}{far}" if fence else f"{device} escaped{far}"
    if kind == "return":
        return f"{device} is back in {fence}" if fence else f"{device} is back in its pasture"
    if kind == "battery_low":
        return f"{collar}: battery low{_pct(e)}"
    if kind == "battery_ok":
        return f"{collar}: battery ok again{_pct(e)}"
    if kind == "silent":
        return f"{collar} silent since {e['ts'][11:16]}"  # the last fix's time (UTC, as the lines)
    if kind == "resumed":
        return f"{collar} is sending again"
    if kind == "transferred":
        return f"{collar} is registered to another farm now"
    if kind == "retract":
        return f"{device}: event {e.get('retracts', '')[:8]} withdrawn (late fixes)"
    return f"{device}: {kind} {fence}".rstrip()


def line(e: Mapping[str, Any], names: Mapping[str, str], colour: bool = False) -> str:
    """One line of ``./dev stack``: the fix's time (UTC), the farm, what happened."""
    c, r = (COLOURS.get(e["type"], ""), RESET) if colour else ("", "")
    return f"{e['ts'][11:19]} {e['tenant']}: {c}{words(e, names)}{r}"


def is_herd(e: Mapping[str, Any]) -> bool:
    return e.get("type") in HERD_TYPES
