"""What a run records: engines (entries), groups of engines timed side by side, goals."""

from __future__ import annotations

import dataclasses
import statistics
from typing import Callable, Optional

from .util import median


@dataclasses.dataclass
class Entry:
    """One engine (or one configuration) inside a group, timed once per repetition."""

    name: str
    run: Callable[[int], float]  # rep -> seconds (whole run, or per operation for unit "op")
    setup: Optional[Callable[[int], None]] = None  # untimed, before each run
    teardown: Optional[Callable[[int], None]] = None  # untimed, after each run
    note: str = ""


@dataclasses.dataclass
class Group:
    key: str  # workload key, e.g. "W1"
    title: str
    mode: str  # "page cache" or "O_DIRECT"
    entries: list[Entry]
    pairs: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (num, den)
    per_op: bool = False  # times are per operation
    warmup: bool = False  # one untimed run of every entry before the first repetition
    times: dict[str, list[Optional[float]]] = dataclasses.field(default_factory=dict)
    errors: dict[str, str] = dataclasses.field(default_factory=dict)
    info: dict[str, dict] = dataclasses.field(default_factory=dict)  # per entry extras
    notes: list[str] = dataclasses.field(default_factory=list)

    def median(self, name: str) -> Optional[float]:
        return median(self.times.get(name, []))

    def ratio(self, num: str, den: str) -> Optional[float]:
        """Median over repetitions of num/den computed within each repetition."""
        a, b = self.times.get(num, []), self.times.get(den, [])
        rs = [x / y for x, y in zip(a, b) if x is not None and y]
        return statistics.median(rs) if rs else None

    def to_json(self) -> dict:
        return {
            "key": self.key,
            "title": self.title,
            "mode": self.mode,
            "per_op": self.per_op,
            "entries": [
                {
                    "name": e.name,
                    "times": self.times.get(e.name, []),
                    "median": self.median(e.name),
                    "error": self.errors.get(e.name),
                    "note": e.note,
                    "info": self.info.get(e.name, {}),
                }
                for e in self.entries
            ],
            "ratios": [
                {"num": n, "den": d, "median": self.ratio(n, d)} for n, d in self.pairs
            ],
            "notes": self.notes,
        }


@dataclasses.dataclass
class Goal:
    key: str
    text: str
    value: Optional[float]
    limit: float
    kind: str  # "max" (value <= limit) or "min" (value >= limit)
    shown: str = ""

    @property
    def status(self) -> str:
        if self.value is None:
            return "not measured"
        ok = self.value <= self.limit if self.kind == "max" else self.value >= self.limit
        return "MET" if ok else "NOT MET"
