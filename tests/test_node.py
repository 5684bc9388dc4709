"""A node hosting several clients: each trains as it would alone, failures stay per client, and the
node's partial aggregate gives the server the same global model as every client's update."""

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict

from fedhn.app.client_store import ClientStore
from fedhn.app.config import RunConfig
from fedhn.app.faults import draw_fault
from fedhn.app.node import LOCAL_NORMS, reply_content, train_node
from fedhn.app.task import TrainingRound, new_model, train_client
from strategies import StatsFedAvg


def _config(defaults, tiny_npz, **overrides) -> RunConfig:
    values = {"dataset": str(tiny_npz), "model": "mlp", "norm": "hn", "batch-sizes": "2,4,8", "clients-per-node": 3}
    return RunConfig.from_mapping(defaults | values | {k.replace("_", "-"): v for k, v in overrides.items()})


pytestmark = pytest.mark.usefixtures("task_identity")


def _global(config):
    torch.manual_seed(0)
    return {key: value.clone() for key, value in new_model(config).state_dict().items()}


@pytest.mark.parametrize("pack_clients", [False, True])
def test_every_client_of_a_node_trains_as_alone(defaults, tiny_npz, pack_clients):
    """One after the other: exactly; packed into one cohort: to float32 rounding."""
    config = _config(defaults, tiny_npz, pack_clients=pack_clients)
    state = _global(config)
    node_round = train_node(TrainingRound(config, 6, 2, 0.1), state, [3, 4, 5], ClientStore(RecordDict()))
    assert sorted(node_round.updates) == [3, 4, 5] and not node_round.errors and not node_round.hang
    tolerance = {"rtol": 1e-5, "atol": 1e-6} if pack_clients else {"rtol": 0, "atol": 0}
    for client, (trained, result) in node_round.updates.items():
        alone, alone_result = train_client(TrainingRound(config, 6, 2, 0.1), state, client)
        assert (result.steps, result.examples, result.batch_size) == (
            alone_result.steps,
            alone_result.examples,
            alone_result.batch_size,
        )
        assert result.loss == pytest.approx(alone_result.loss, rel=tolerance["rtol"])
        for key, value in alone.items():
            torch.testing.assert_close(trained[key], value, **tolerance, msg=key)


def _seed_where(pattern, clients, server_round, rate, kinds):
    return next(
        seed for seed in range(10_000) if [draw_fault(seed, c, server_round, rate, kinds) for c in clients] == pattern
    )


def test_a_client_that_raises_leaves_the_nodes_other_clients_their_updates(defaults, tiny_npz):
    seed = _seed_where([None, "raise", "nan"], [0, 1, 2], 1, 0.5, ("raise", "nan"))
    config = _config(defaults, tiny_npz, seed=seed, fault_rate=0.5, fault_kinds="raise,nan")
    node_round = train_node(TrainingRound(config, 6, 1, 0.1), _global(config), [0, 1, 2], ClientStore(RecordDict()))
    assert sorted(node_round.updates) == [0, 2] and "client 1 raised in round 1" in node_round.errors[1]
    assert torch.isnan(node_round.updates[2][0]["classifier.weight"]).all()


def test_a_hanging_client_delays_its_whole_node(defaults, tiny_npz):
    seed = _seed_where([None, "hang", None], [0, 1, 2], 1, 0.5, ("hang",))
    config = _config(defaults, tiny_npz, seed=seed, fault_rate=0.5, fault_kinds="hang")
    node_round = train_node(TrainingRound(config, 6, 1, 0.1), _global(config), [0, 1, 2], ClientStore(RecordDict()))
    assert node_round.hang and sorted(node_round.updates) == [0, 1, 2]


def test_fedbn_clients_of_one_node_keep_their_own_norm_layers(defaults, tiny_npz):
    config = _config(defaults, tiny_npz, stats_aggregation="local")
    store = ClientStore(RecordDict())
    train_node(TrainingRound(config, 6, 1, 0.1), _global(config), [0, 1, 2], store)
    kept = [store.get(client, LOCAL_NORMS) for client in (0, 1, 2)]
    key = next(k for k in kept[0] if k.endswith("running_mean"))
    assert not torch.equal(kept[0][key], kept[1][key]) and not torch.equal(kept[1][key], kept[2][key])


def _aggregate(config, state, node_rounds) -> dict[str, np.ndarray]:
    """The global model the strategy makes from the replies of nodes 1 and 2 (clients 0-2 and 3-5)."""
    strategy = StatsFedAvg(min_train_nodes=1, clients_of=lambda grid: {1: [0, 1, 2], 2: [3, 4, 5]})

    class Grid:
        def get_node_ids(self):
            return [1, 2]

    arrays = ArrayRecord({key: Array(value.numpy()) for key, value in state.items()})
    messages = strategy.configure_train(1, arrays, ConfigRecord(), Grid())
    replies = [
        Message(reply_content(config, state, node_round), reply_to=message)
        for message, node_round in zip(messages, node_rounds, strict=True)
    ]
    aggregated, metrics = strategy.aggregate_train(1, replies)
    assert metrics["clients"] == 6 and strategy.last_round.accepted == 6
    return {key: value.numpy() for key, value in aggregated.items()}


@pytest.mark.parametrize("norm", ["bn", "hn", "mean=bn,std=bn+en"])
def test_node_aggregation_gives_the_same_global_model_as_every_update(defaults, tiny_npz, norm):
    config = _config(defaults, tiny_npz, norm=norm)
    state = _global(config)
    nodes = [
        train_node(TrainingRound(config, 6, 1, 0.1), state, clients, ClientStore(RecordDict()))
        for clients in ([0, 1, 2], [3, 4, 5])
    ]
    every = _aggregate(config, state, nodes)
    partial = _aggregate(RunConfig.from_mapping(config.to_dict() | {"node-aggregation": True}), state, nodes)
    for key, value in every.items():
        assert value.dtype == partial[key].dtype
        np.testing.assert_allclose(partial[key], value, rtol=1e-5, atol=1e-6, err_msg=key)


def test_a_node_drops_its_own_malformed_updates_before_aggregating(defaults, tiny_npz):
    seed = _seed_where([None, "nan", None], [0, 1, 2], 1, 0.5, ("nan",))
    config = _config(defaults, tiny_npz, seed=seed, fault_rate=0.5, fault_kinds="nan", node_aggregation=True)
    state = _global(config)
    node_round = train_node(TrainingRound(config, 6, 1, 0.1), state, [0, 1, 2], ClientStore(RecordDict()))
    content = reply_content(config, state, node_round)
    assert "non-finite" in content.config_records["errors"]["1"]
    assert content.metric_records["partial-size"]["clients"] == 2


def test_the_updates_of_a_nodes_clients_are_their_own(defaults, tiny_npz):
    """The node trains its clients one after the other in one model: each update must survive the next."""
    config = _config(defaults, tiny_npz)
    state = _global(config)
    node_round = train_node(TrainingRound(config, 6, 1, 0.1), state, [0, 1, 2], ClientStore(RecordDict()))
    weights = [node_round.updates[c][0]["classifier.weight"] for c in (0, 1, 2)]
    assert not torch.equal(weights[0], weights[1]) and not torch.equal(weights[1], weights[2])
