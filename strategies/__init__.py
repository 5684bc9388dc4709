"""Server-side aggregation: the framework-free math (:func:`aggregate_states`) and its Flower
strategy (:class:`StatsFedAvg`)."""

from strategies.aggregation import (
    STATS_AGGREGATIONS,
    Partial,
    StatsAggregation,
    aggregate_states,
    combine_partials,
    partial_aggregate,
)
from strategies.fedavg import RoundFailedError, RoundReport, StatsFedAvg

__all__ = [
    "STATS_AGGREGATIONS",
    "Partial",
    "RoundFailedError",
    "RoundReport",
    "StatsAggregation",
    "StatsFedAvg",
    "aggregate_states",
    "combine_partials",
    "partial_aggregate",
]
