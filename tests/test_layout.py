"""Client layouts: which clients each node hosts, their estimated cost, and the balanced placement."""

import dataclasses
import itertools
import random

import pytest

import fedhn.app.layout
from fedhn.app.config import ConfigError, RunConfig
from fedhn.app.layout import STEP_OVERHEAD_IMAGES, ClientLayout, ClientWork, balanced_layout, client_layout, node_cost
from fedhn.app.task import partitions

# A Dirichlet 0.1 split of 20,000 CIFAR-10 images over 10 clients with the 2..128 batch-size cycle: the
# blocks are far apart in work, and placing the largest clients first leaves the last ones no choice.
SIZES = [2896, 3946, 727, 3397, 3854, 1964, 524, 4127, 2286, 1279]
BATCHES = [2, 4, 8, 16, 32, 64, 128, 2, 4, 8]
SKEWED = [ClientWork(size, batch) for size, batch in zip(SIZES, BATCHES, strict=True)]


def _max_cost(work: list[ClientWork], layout: ClientLayout, packed: bool = True) -> float:
    return max(node_cost([work[c] for c in clients], packed) for clients in layout.hosted)


def test_blocks_give_node_p_clients_p_times_m_onwards():
    layout = ClientLayout.blocks(3, 2)
    assert layout.hosted == ((0, 1), (2, 3), (4, 5))
    assert layout.clients == 6
    assert layout.clients_of(1) == [2, 3]


def test_node_cost_counts_images_and_steps_packed_by_batch_size():
    work = [ClientWork(10, 2), ClientWork(7, 2), ClientWork(9, 4, epochs=2)]
    # steps: 5, 4 and 2 x 3; packed, the two batch-2 clients step together (5 steps)
    assert node_cost(work, packed=False) == 10 + 7 + 18 + STEP_OVERHEAD_IMAGES * (5 + 4 + 6)
    assert node_cost(work, packed=True) == 10 + 7 + 18 + STEP_OVERHEAD_IMAGES * (5 + 6)
    assert node_cost([]) == 0


@pytest.mark.parametrize("packed", [True, False])
def test_balanced_layout_finds_the_best_split_where_the_greedy_start_does_not(packed, monkeypatch):
    layout = balanced_layout(SKEWED, 2, packed)
    assert sorted(c for clients in layout.hosted for c in clients) == list(range(10))
    assert [len(clients) for clients in layout.hosted] == [5, 5]
    best = min(
        max(
            node_cost([SKEWED[c] for c in half], packed),
            node_cost([SKEWED[c] for c in range(10) if c not in half], packed),
        )
        for half in itertools.combinations(range(10), 5)
    )
    assert _max_cost(SKEWED, layout, packed) == best
    monkeypatch.setattr(fedhn.app.layout, "SWAP_BUDGET", 0)
    assert _max_cost(SKEWED, balanced_layout(SKEWED, 2, packed), packed) > best  # placing alone
    assert _max_cost(SKEWED, ClientLayout.blocks(2, 5), packed) > (1.3 if packed else 1.05) * best


def test_no_single_swap_improves_a_balanced_layout_of_many_clients():
    rng = random.Random(0)
    work = [ClientWork(rng.randint(5, 400), rng.choice([2, 4, 8, 16, 32])) for _ in range(24)]
    layout = balanced_layout(work, 4)
    hosted = [list(clients) for clients in layout.hosted]
    worst = _max_cost(work, layout)
    assert worst <= _max_cost(work, ClientLayout.blocks(4, 6))
    for a, b in itertools.permutations(range(4), 2):
        for i, j in itertools.product(range(6), range(6)):
            node_a = [*hosted[a][:i], hosted[b][j], *hosted[a][i + 1 :]]
            node_b = [*hosted[b][:j], hosted[a][i], *hosted[b][j + 1 :]]
            others = [node_cost([work[c] for c in hosted[p]]) for p in range(4) if p not in (a, b)]
            swapped = max(node_cost([work[c] for c in node_a]), node_cost([work[c] for c in node_b]), *others)
            assert swapped >= worst
    assert balanced_layout(work, 4) == layout  # deterministic


def test_balanced_layout_needs_clients_that_split_evenly():
    with pytest.raises(ValueError, match="7 clients do not split evenly over 2 nodes"):
        balanced_layout(SKEWED[:7], 2)


def test_client_layout_balances_the_runs_partitions_and_batch_sizes(tiny_npz):
    config = RunConfig(
        dataset=str(tiny_npz), partitioner="dirichlet", dirichlet_alpha=0.5, clients_per_node=3, batch_sizes=(2, 8)
    )
    assert client_layout(config, 2) == ClientLayout.blocks(2, 3)
    balanced = dataclasses.replace(config, client_layout="balanced")
    layout = client_layout(balanced, 2)
    sizes = [len(index) for index in partitions(balanced, 6)]
    work = [ClientWork(size, batch) for size, batch in zip(sizes, [2, 8, 2, 8, 2, 8], strict=True)]
    assert layout == balanced_layout(work, 2)
    assert _max_cost(work, layout) < _max_cost(work, ClientLayout.blocks(2, 3))


def test_an_unknown_client_layout_names_the_allowed_ones():
    with pytest.raises(ConfigError, match=r"client-layout.*allowed values: blocks, balanced \(nearest: 'balanced'\)"):
        RunConfig.from_mapping({"client-layout": "balance"})
