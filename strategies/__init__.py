"""Server-side aggregation: the framework-free math (:func:`aggregate_states`) and its Flower
strategy (:class:`StatsFedAvg`)."""

from strategies.aggregation import STATS_AGGREGATIONS, StatsAggregation, aggregate_states
from strategies.fedavg import RoundFailedError, RoundReport, StatsFedAvg

__all__ = [
    "STATS_AGGREGATIONS",
    "RoundFailedError",
    "RoundReport",
    "StatsAggregation",
    "StatsFedAvg",
    "aggregate_states",
]
