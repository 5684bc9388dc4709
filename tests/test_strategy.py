"""StatsFedAvg: the Flower adapter aggregates like aggregate_states and drops malformed replies."""

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message
from flwr.common.constant import SUPERLINK_NODE_ID

from strategies import RoundFailedError, StatsFedAvg, aggregate_states
from strategies.replies import node_reply


class FakeGrid:
    """The part of a Flower Grid the strategy's sampling uses."""

    def __init__(self, nodes: int) -> None:
        self.nodes = list(range(1, nodes + 1))

    def get_node_ids(self):
        return self.nodes


pytestmark = pytest.mark.usefixtures("task_identity")


GLOBAL = {
    "bn.running_mean": np.zeros(3, dtype=np.float32),
    "bn.running_var": np.ones(3, dtype=np.float32),
    "bn.num_batches_tracked": np.array(4, dtype=np.int64),
    "fc.weight": np.zeros((2, 3), dtype=np.float32),
}


def _state(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "bn.running_mean": rng.normal(0, 3, 3).astype(np.float32),
        "bn.running_var": rng.uniform(0.5, 2, 3).astype(np.float32),
        "bn.num_batches_tracked": np.array(4 + seed, dtype=np.int64),
        "fc.weight": rng.normal(size=(2, 3)).astype(np.float32),
    }


def _round(strategy: StatsFedAvg, nodes: int = 3) -> list[Message]:
    arrays = ArrayRecord({key: Array(value) for key, value in GLOBAL.items()})
    return list(strategy.configure_train(1, arrays, ConfigRecord(), FakeGrid(nodes)))


def _reply(message: Message, state: dict[str, np.ndarray], metrics: dict) -> Message:
    """The reply of a node with one client."""
    (client,) = message.content["config"]["clients"]
    arrays = ArrayRecord({k: Array(v) for k, v in state.items()})
    return Message(content=node_reply({client: metrics}, {client: arrays}), reply_to=message)


@pytest.mark.parametrize("stats", ["pooled", "mean"])
def test_aggregate_train_equals_aggregate_states(stats):
    strategy = StatsFedAvg(stats_aggregation=stats, min_train_nodes=2)
    messages = _round(strategy)
    states = [_state(seed) for seed in range(3)]
    replies = [
        _reply(m, s, {"num-examples": 10 * (i + 1), "train-loss": float(i), "partition-id": i})
        for i, (m, s) in enumerate(zip(messages, states, strict=True))
    ]
    arrays, metrics = strategy.aggregate_train(1, reversed(replies))
    expected = aggregate_states(states, [10, 20, 30], stats)
    for key, value in expected.items():
        np.testing.assert_array_equal(arrays[key].numpy(), value)
    assert arrays["bn.num_batches_tracked"].numpy().dtype == np.int64
    assert metrics["train-loss"] == pytest.approx((0 * 10 + 1 * 20 + 2 * 30) / 60)
    assert strategy.last_round.accepted == 3 and not strategy.last_round.dropped


def test_round_config_adds_entries_per_round():
    strategy = StatsFedAvg(round_config=lambda r: {"lr": 0.5 / r})
    message = _round(strategy)[0]
    assert message.content["config"]["lr"] == 0.5 and message.content["config"]["server-round"] == 1


def test_malformed_replies_are_dropped_with_their_reasons():
    strategy = StatsFedAvg(min_train_nodes=1)
    messages = _round(strategy, nodes=6)
    nan_state = _state(1) | {"fc.weight": np.full((2, 3), np.nan, dtype=np.float32)}
    wrong_shape = _state(2) | {"fc.weight": np.zeros((3, 3), dtype=np.float32)}
    wrong_dtype = _state(3) | {"bn.num_batches_tracked": np.array(4.0)}
    replies = [
        _reply(messages[0], _state(0), {"num-examples": 5}),
        _reply(messages[1], nan_state, {"num-examples": 5}),
        _reply(messages[2], wrong_shape, {"num-examples": 5}),
        _reply(messages[3], wrong_dtype, {"num-examples": 5}),
        _reply(messages[4], _state(4), {"train-loss": 1.0}),
        Message(Error(code=1, reason="client crashed"), reply_to=messages[5]),
    ]
    arrays, _ = strategy.aggregate_train(1, replies)
    np.testing.assert_array_equal(arrays["fc.weight"].numpy(), _state(0)["fc.weight"])
    reasons = sorted(strategy.last_round.dropped.values())
    assert len(reasons) == 5
    assert any("non-finite" in r for r in reasons)
    assert any("float32[3, 3]" in r for r in reasons)
    assert any("float64[]" in r and "int64[]" in r for r in reasons)
    assert any("'num-examples'" in r for r in reasons)
    assert any("client crashed" in r for r in reasons)


def test_round_below_the_minimum_ends_the_run_with_the_reasons():
    strategy = StatsFedAvg(min_train_nodes=2)
    messages = _round(strategy)
    replies = [
        _reply(messages[0], _state(0), {"num-examples": 5}),
        Message(Error(code=1, reason="timeout"), reply_to=messages[1]),
    ]
    with pytest.raises(
        RoundFailedError, match=r"Round 1 failed: 1 valid client updates, fewer than the minimum of 2.*timeout"
    ):
        strategy.aggregate_train(1, replies)
    assert strategy.last_round.accepted == 1 and not strategy.last_round.aggregated


def test_unknown_stats_aggregation_is_rejected():
    with pytest.raises(ValueError, match="pooled, mean, local"):
        StatsFedAvg(stats_aggregation="median")


class ReplyingGrid(FakeGrid):
    """A Grid whose nodes answer train messages with ``_state(node)`` and ``num-examples`` = node."""

    def send_and_receive(self, messages, timeout=None):
        return [_reply(m, _state(m.metadata.dst_node_id), {"num-examples": m.metadata.dst_node_id}) for m in messages]


def test_start_hands_each_rounds_report_to_evaluate_fn():
    seen = []

    def after_aggregation(server_round, arrays):
        return arrays, {"note": server_round}

    def evaluate_fn(server_round, arrays, report):
        seen.append((server_round, None if report is None else (report.server_round, report.accepted, report.extra)))

    strategy = StatsFedAvg(first_round=4, min_train_nodes=1, fraction_evaluate=0.0, after_aggregation=after_aggregation)
    arrays = ArrayRecord({key: Array(value) for key, value in GLOBAL.items()})
    strategy.start(grid=ReplyingGrid(3), initial_arrays=arrays, num_rounds=2, evaluate_fn=evaluate_fn)
    assert seen == [(3, None), (4, (4, 3, {"note": 4})), (5, (5, 3, {"note": 5}))]


def test_seeded_sampling_is_reproducible_and_leaves_the_global_random_state_alone():
    import random

    def sampled(seed: int, server_round: int) -> list[int]:
        strategy = StatsFedAvg(sampling_seed=seed, fraction_train=0.3, min_train_nodes=1)
        arrays = ArrayRecord({key: Array(value) for key, value in GLOBAL.items()})
        messages = strategy.configure_train(server_round, arrays, ConfigRecord(), FakeGrid(10))
        return [m.metadata.dst_node_id for m in messages]

    random.seed(123)
    before = random.getstate()
    first = sampled(0, 1)
    assert random.getstate() == before
    assert len(first) == 3 and first == sampled(0, 1)
    assert {tuple(sampled(0, r)) for r in range(1, 6)} != {tuple(first)}  # rounds draw differently


def test_an_error_reply_from_the_superlink_is_the_dead_nodes_with_flowers_reason():
    """A SuperLink answers for a node that stopped sending heartbeats with an error reply of its
    own (sender: the SuperLink): the node's clients are dropped with that reason, not as timed out."""
    strategy = StatsFedAvg(min_train_nodes=1)
    grid = FakeGrid(2)
    grid.nodes = [SUPERLINK_NODE_ID + 10, SUPERLINK_NODE_ID + 11]
    arrays = ArrayRecord({key: Array(value) for key, value in GLOBAL.items()})
    messages = list(strategy.configure_train(1, arrays, ConfigRecord(), grid))
    for message in messages:  # what the grid does when it pushes them
        message.metadata.__dict__["_message_id"] = message.object_id
    unavailable = Message(Error(code=5, reason="Error: Node Unavailable"), reply_to=messages[1])
    unavailable.metadata.__dict__["_src_node_id"] = SUPERLINK_NODE_ID  # as Flower makes it
    strategy.aggregate_train(1, [_reply(messages[0], _state(0), {"num-examples": 5}), unavailable])
    (client,) = messages[1].content["config"]["clients"]
    node = messages[1].metadata.dst_node_id
    assert strategy.last_round.dropped == {f"client {client} (node {node})": "error: Error: Node Unavailable"}
