"""Shared pieces of the benchmarks: timing statistics and the result table.

Every figure is printed beside a reference measured in the same run, as a ratio, so the numbers
mean something on any machine.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def median(values: list[float]) -> float:
    return statistics.median(values)


@dataclass
class Figure:
    name: str
    ours: float
    reference: float | None
    unit: str
    target: str
    passed: bool

    @property
    def ratio(self) -> str:
        if not self.reference:
            return "-"
        return f"{self.ours / self.reference:.2f}"


def print_table(title: str, figures: list[Figure]) -> None:
    print(f"\n{title}")
    header = f"{'figure':44} {'ours':>12} {'reference':>12} {'ratio':>7}  {'target':18} result"
    print(header)
    print("-" * len(header))
    for fig in figures:
        reference = "-" if fig.reference is None else f"{fig.reference:.2f} {fig.unit}"
        print(
            f"{fig.name:44} {fig.ours:>9.2f} {fig.unit:2} {reference:>12} {fig.ratio:>7}  "
            f"{fig.target:18} {'PASS' if fig.passed else 'FAIL'}"
        )
