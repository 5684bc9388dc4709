"""The federation's nodes as the ServerApp sees them: which clients each hosts, and the gist of
their errors.

Node ids are random per run; each node reports the partition it holds (its node config's
``partition-id``, and ``num-partitions``) once, to a ``query.partition`` message. With
``clients-per-node = M``, the node holding partition p hosts the clients ``client-layout`` gives it
(:mod:`fedhn.app.layout`); client ids, and hence seeded sampling, are the same in every run and for
every layout of the same clients on nodes.
"""

from __future__ import annotations

from collections.abc import Callable

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedhn.app.layout import ClientLayout

__all__ = ["QUERY_TIMEOUT", "PartitionDirectory", "error_summary"]

_UNKNOWN = 1 << 62  # sorts nodes that did not answer last
QUERY_TIMEOUT = 60.0  # the least time nodes get to answer the partition query


class PartitionDirectory:
    """node id -> partition id, learned by asking each node once (waiting up to ``timeout`` s for the
    answers: the ServerApp gives it the round timeout if longer than :data:`QUERY_TIMEOUT`, since a
    node's first answer includes starting its ClientApp), and the clients each node hosts: those of its
    partition in ``layout(num_partitions)``."""

    def __init__(self, layout: Callable[[int], ClientLayout], timeout: float = QUERY_TIMEOUT) -> None:
        self.layout = layout
        self.timeout = timeout
        self.partition_of: dict[int, int] = {}
        self.num_partitions = 0

    def clients(self, grid: Grid) -> dict[int, list[int]]:
        """The connected nodes that answered, in partition order, with the client ids each hosts."""
        nodes = [node for node in self.order(grid) if node in self.partition_of]
        layout = self.layout(self.num_partitions) if nodes else None
        return {node: layout.clients_of(self.partition_of[node]) for node in nodes} if layout else {}

    def order(self, grid: Grid) -> list[int]:
        """The connected nodes by (partition, node id), asking nodes not seen before."""
        nodes = list(grid.get_node_ids())
        self._learn(grid, [node for node in nodes if node not in self.partition_of])
        return sorted(nodes, key=lambda node: (self.partition_of.get(node, _UNKNOWN), node))

    def _learn(self, grid: Grid, nodes: list[int]) -> None:
        if not nodes:
            return
        query = RecordDict({"config": ConfigRecord({"query": "partition-id"})})
        messages = [
            Message(content=query, dst_node_id=node, message_type=f"{MessageType.QUERY}.partition") for node in nodes
        ]
        for reply in grid.send_and_receive(messages, timeout=self.timeout):
            if not reply.has_error() and reply.content.metric_records:
                metrics = next(iter(reply.content.metric_records.values()))
                self.partition_of[reply.metadata.src_node_id] = int(metrics["partition-id"])
                self.num_partitions = max(self.num_partitions, int(metrics["num-partitions"]))


def error_summary(reason: str, limit: int = 300) -> str:
    """The gist of a client error: Flower's Ray backend wraps the exception's message in a traceback
    (``... Message: <the message>'>``)."""
    lines = reason.strip().splitlines() or [""]
    text = reason.rsplit("Message: ", 1)[-1] if "Message: " in reason else lines[-1]
    text = text.strip().rstrip("'>").strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."
