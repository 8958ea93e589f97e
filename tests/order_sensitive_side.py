"""A bench side (edged.bench.sides) that is slower when it is the first of its loading to
load, as an engine is on a virtual machine: for test_bench.py's check that the bench gives
each side its best over both load orders."""

from __future__ import annotations

from pathlib import Path


def side(name: str, log: str, sides: int):
    with Path(log).open("a+") as file:
        file.seek(0)
        loaded_before = len(file.read().split())
        file.write(f"{name}\n")
    first = loaded_before % sides == 0
    return {"decode": lambda: 2.0 if first else 1.0, "prefill": lambda: 3.0}, name
