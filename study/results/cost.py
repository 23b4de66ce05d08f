"""What a study's runs cost in money, from what they held and the spec's price table.

Every trial and reference run logs ``cost/cpu_s`` and ``cost/gpu_s``: its wall seconds times the
CPUs and GPUs it reserved. A spec's ``cost`` section (``study.spec.types.CostSpec``) prices them:

- a run tagged with a node type (``naming.TAG_NODE_TYPE``) that the table lists is charged its
  share of that node: the larger of its CPU share and its GPU share (a trial holding the one GPU
  of a 4-CPU node keeps the node from every other GPU trial, whatever CPUs it leaves), in node-hours,
  times the node's price per hour;
- any other run (no tag: an older run, or a cluster without node types; or a type the table
  lacks) is charged per CPU-hour and per GPU-hour.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from study import naming
from study.spec.types import CostSpec

BY_NODE_TYPE = "node type"
BY_RESOURCE_HOUR = "CPU/GPU hour"


def _seconds(metrics: Mapping[str, float], name: str) -> float:
    value = metrics.get(name)
    return float(value) if value is not None and math.isfinite(float(value)) else 0.0


def run_money(metrics: Mapping[str, float], tags: Mapping[str, str], prices: CostSpec) -> tuple[float, str]:
    """(money, how it was priced) for one run's final metrics and tags."""
    cpu_s, gpu_s = _seconds(metrics, naming.COST_CPU_S), _seconds(metrics, naming.COST_GPU_S)
    node = prices.per_node_type.get(tags.get(naming.TAG_NODE_TYPE, ""))
    if node is not None:
        shares = [held / offered for held, offered in ((cpu_s, node.cpu), (gpu_s, node.gpu)) if offered > 0]
        node_hours = max(shares, default=0.0) / 3600
        return node_hours * node.per_hour, BY_NODE_TYPE
    return (cpu_s * prices.per_cpu_hour + gpu_s * prices.per_gpu_hour) / 3600, BY_RESOURCE_HOUR


@dataclass(frozen=True)
class StudyMoney:
    """What a set of runs cost: the total, and how many runs each pricing rule priced."""

    total: float
    currency: str
    runs_by_node_type: int
    runs_by_resource_hour: int

    def amount(self, value: float | None = None) -> str:
        """``12.35 USD`` (see ``money_text``)."""
        return money_text(self.total if value is None else value, self.currency)


def study_money(runs: Iterable, prices: CostSpec) -> StudyMoney:
    """The money of ``runs`` (objects with ``metrics`` and ``tags`` mappings: ``RunRecord``)."""
    total, counts = 0.0, {BY_NODE_TYPE: 0, BY_RESOURCE_HOUR: 0}
    for run in runs:
        money, how = run_money(run.metrics, run.tags, prices)
        total += money
        counts[how] += 1
    return StudyMoney(total, prices.currency, counts[BY_NODE_TYPE], counts[BY_RESOURCE_HOUR])


def money_text(value: float, currency: str) -> str:
    """An amount as a person reads it: two decimals, or two significant digits below 0.01 (a
    smoke study costs fractions of a cent, which "0.00" would hide)."""
    if value != 0 and abs(value) < 0.01:
        return f"{value:.2g} {currency}"
    return f"{value:.2f} {currency}"
