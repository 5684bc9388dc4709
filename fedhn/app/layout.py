"""Which clients each node hosts (``client-layout``): in blocks, or balanced by each client's work.

With ``clients-per-node = M`` a federation of N nodes has N*M clients, and a round lasts as long as its
slowest node. ``blocks`` gives the node holding partition p clients p*M .. p*M+M-1. Under label skew
and mixed batch sizes the blocks can be far apart in work (a Dirichlet 0.1 split of CIFAR-10 gives
clients of 400 to 6,800 images); ``balanced`` places the same clients, still M per node, so that the
nodes' estimated work (:func:`node_cost`) is as even as it can find. Client ids, and with them
partitions, batch sizes, seeds and sampling, do not depend on the layout: every layout gives the same
run (to float rounding), only faster or slower.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from fedhn.app.config import RunConfig
from fedhn.app.task import local_test_size, partitions
from fedhn.data import assign_batch_sizes

__all__ = [
    "STEP_OVERHEAD_IMAGES",
    "ClientLayout",
    "ClientWork",
    "balanced_layout",
    "client_layout",
    "client_work",
    "node_cost",
]

STEP_OVERHEAD_IMAGES = 4.0
"""A training step's fixed cost in images' worth of compute: client training of a CIFAR ResNet8 runs
~430 img/s at batch 2 (4.6 ms a step) and ~1,240 at batch 128 (0.8 ms an image), so a step costs
~3 ms = ~4 images beyond its images (../shared/notes/performance-facts.md)."""

SWAP_BUDGET = 500_000
"""Most clients' worth of node-cost terms :func:`balanced_layout`'s swap search evaluates (so that it is
deterministic and ends within about a second for any federation)."""


@dataclass(frozen=True)
class ClientLayout:
    """The clients each node hosts: ``hosted[p]`` are those of the node holding partition p."""

    hosted: tuple[tuple[int, ...], ...]

    @classmethod
    def blocks(cls, nodes: int, clients_per_node: int = 1) -> ClientLayout:
        """Node p hosts clients p*M .. p*M+M-1."""
        m = clients_per_node
        return cls(tuple(tuple(range(p * m, (p + 1) * m)) for p in range(nodes)))

    @property
    def clients(self) -> int:
        return sum(map(len, self.hosted))

    def clients_of(self, node: int) -> list[int]:
        """The client ids (= partition ids) the node holding partition ``node`` hosts."""
        return list(self.hosted[node])


@dataclass(frozen=True)
class ClientWork:
    """A client's work per round: the images it trains on, its batch size and its local epochs."""

    images: int
    batch_size: int
    epochs: int = 1

    @property
    def steps(self) -> int:
        return self.epochs * math.ceil(self.images / self.batch_size)


def node_cost(work: Iterable[ClientWork], packed: bool = True) -> float:
    """A node's estimated round time, in images' worth of compute: every image, plus
    :data:`STEP_OVERHEAD_IMAGES` per step. One after the other, every client's steps count; packed, the
    members of a batch size train as one step (:func:`fedhn.cohort.train_packed`), so each batch size's
    longest member's steps count."""
    load = _NodeLoad(packed)
    for client in work:
        load.add(client)
    return load.cost


class _NodeLoad:
    """A node's clients' work so far, and its :func:`node_cost` with one more client in O(1)."""

    def __init__(self, packed: bool) -> None:
        self.packed = packed
        self.images = 0
        self.steps = 0
        self.longest: dict[int, int] = {}

    @property
    def cost(self) -> float:
        return self.images + STEP_OVERHEAD_IMAGES * self.steps

    def _added_steps(self, client: ClientWork) -> int:
        return max(client.steps - self.longest.get(client.batch_size, 0), 0) if self.packed else client.steps

    def cost_with(self, client: ClientWork) -> float:
        return self.cost + client.epochs * client.images + STEP_OVERHEAD_IMAGES * self._added_steps(client)

    def add(self, client: ClientWork) -> None:
        self.images += client.epochs * client.images
        self.steps += self._added_steps(client)
        self.longest[client.batch_size] = max(self.longest.get(client.batch_size, 0), client.steps)


def balanced_layout(work: Sequence[ClientWork], nodes: int, packed: bool = True) -> ClientLayout:
    """``len(work) / nodes`` clients per node, placed so that the most costly node (:func:`node_cost`) is
    as cheap as it can find: the clients by decreasing cost, each to the node with room that it costs
    least, then swaps of a client of the most costly node with one of another node while they lower
    the nodes' costs sorted from the highest (a strict order, so the search ends), within
    :data:`SWAP_BUDGET`."""
    if nodes < 1 or len(work) % nodes:
        raise ValueError(f"{len(work)} clients do not split evenly over {nodes} nodes")
    per_node = len(work) // nodes
    loads = [_NodeLoad(packed) for _ in range(nodes)]
    hosted: list[list[int]] = [[] for _ in range(nodes)]
    for client in sorted(range(len(work)), key=lambda c: (-node_cost([work[c]], packed), c)):
        node = min(
            (p for p in range(nodes) if len(hosted[p]) < per_node), key=lambda p: (loads[p].cost_with(work[client]), p)
        )
        loads[node].add(work[client])
        hosted[node].append(client)
    search = _SwapSearch(work, packed, hosted, [load.cost for load in loads])
    while search.improve():
        pass
    return ClientLayout(tuple(tuple(sorted(clients)) for clients in hosted))


class _SwapSearch:
    """:func:`balanced_layout`'s second stage: improving swaps between the most costly node and another."""

    def __init__(self, work: Sequence[ClientWork], packed: bool, hosted: list[list[int]], costs: list[float]) -> None:
        self.work, self.packed, self.hosted, self.costs = work, packed, hosted, costs
        self.budget = SWAP_BUDGET

    def _cost(self, clients: list[int]) -> float:
        self.budget -= len(clients)
        return node_cost((self.work[c] for c in clients), self.packed)

    def improve(self) -> bool:
        """Make the first swap that lowers the costs sorted from the highest; False when none is left
        (or the budget is spent)."""
        hosted, costs = self.hosted, self.costs
        a = max(range(len(costs)), key=lambda p: (costs[p], -p))
        before = sorted(costs, reverse=True)
        for b in (p for p in range(len(costs)) if p != a):
            others = [costs[p] for p in range(len(costs)) if p not in (a, b)]
            for i, j in itertools.product(range(len(hosted[a])), range(len(hosted[b]))):
                if self.budget <= 0:
                    return False
                node_a = [*hosted[a][:i], hosted[b][j], *hosted[a][i + 1 :]]
                node_b = [*hosted[b][:j], hosted[a][i], *hosted[b][j + 1 :]]
                cost_a, cost_b = self._cost(node_a), self._cost(node_b)
                if sorted([*others, cost_a, cost_b], reverse=True) < before:
                    hosted[a], hosted[b], costs[a], costs[b] = node_a, node_b, cost_a, cost_b
                    return True
        return False


def client_work(config: RunConfig, num_clients: int) -> list[ClientWork]:
    """Every client's work per round (its partition less its local test split, its batch size)."""
    sizes = [len(index) for index in partitions(config, num_clients)]
    batch_sizes = assign_batch_sizes(num_clients, config.batch_sizes, config.batch_size_assignment, config.seed)
    return [
        ClientWork(size - local_test_size(config, size), batch_size, config.local_epochs)
        for size, batch_size in zip(sizes, batch_sizes, strict=True)
    ]


@functools.lru_cache(maxsize=8)
def client_layout(config: RunConfig, nodes: int) -> ClientLayout:
    """The run's layout of ``nodes x clients-per-node`` clients on ``nodes`` nodes (``client-layout``);
    ``balanced`` reads the partitions' sizes (:func:`fedhn.app.task.partitions`, cached per process)."""
    if config.client_layout == "blocks":
        return ClientLayout.blocks(nodes, config.clients_per_node)
    return balanced_layout(client_work(config, nodes * config.clients_per_node), nodes, config.pack_clients)
