"""Published numbers (the paper's tables and figures, BackdoorBench's leaderboard), read from
``published.yaml`` beside this module, where each entry names its source."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import yaml

PATH = Path(__file__).with_name("published.yaml")


@lru_cache(maxsize=None)
def load() -> dict:
    """Every entry of ``published.yaml``: ``{name: {"source", "values", ...}}``."""
    data = yaml.safe_load(PATH.read_text())
    for name, entry in data.items():
        if not entry.get("source") or "values" not in entry:
            raise ValueError(f"{PATH}: entry {name!r} needs a `source` and `values`")
    return data


def values(name: str) -> dict:
    return load()[name]["values"]


def source(name: str) -> str:
    return load()[name]["source"]
