"""Per-client (federated) evaluation without Flower's runtime: each client's seeded local test split,
a node's evaluate reply for its sampled clients (FedBN: with their own norm layers), and the
strategy's evaluate round over packed nodes."""

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, RecordDict

from fedhn.app import task
from fedhn.app.client_evaluation import evaluate_node
from fedhn.app.client_store import ClientStore
from fedhn.app.config import RunConfig
from fedhn.app.node import LOCAL_NORMS, train_node
from fedhn.app.preflight import run_problems
from fedhn.app.task import TrainingRound
from fedhn.training import evaluate
from strategies import StatsFedAvg
from strategies.client_metrics import evaluation_summary
from strategies.replies import parse_reply


def _config(defaults, tiny_npz, **overrides) -> RunConfig:
    values = {"dataset": str(tiny_npz), "model": "mlp", "norm": "bn", "batch-sizes": "2,4,8", "fraction-evaluate": 1.0}
    return RunConfig.from_mapping(defaults | values | {k.replace("_", "-"): v for k, v in overrides.items()})


pytestmark = pytest.mark.usefixtures("task_identity")


def _rows(images: torch.Tensor) -> set[bytes]:
    return {row.numpy().tobytes() for row in images}


def test_the_local_test_split_is_a_seeded_share_of_the_clients_partition(defaults, tiny_npz):
    config = _config(defaults, tiny_npz, local_test_fraction=0.25)
    whole = _config(defaults, tiny_npz, fraction_evaluate=0.0)
    for client in range(4):
        data, alone = task.client_data(config, client, 4), task.client_data(whole, client, 4)
        assert len(data.test_labels) == round(0.25 * len(alone.labels)) and len(alone.test_labels) == 0
        assert len(data.labels) + len(data.test_labels) == len(alone.labels)
        assert not _rows(data.images) & _rows(data.test_images)  # disjoint
        assert _rows(data.images) | _rows(data.test_images) == _rows(alone.images)  # together: the partition
        assert sorted(torch.cat([data.labels, data.test_labels]).tolist()) == sorted(alone.labels.tolist())
    other_seed = _config(defaults, tiny_npz, local_test_fraction=0.25, seed=1)
    assert _rows(task.client_data(other_seed, 0, 4).test_images) != _rows(task.client_data(config, 0, 4).test_images)


def test_local_test_size_keeps_one_example_on_each_side(defaults, tiny_npz):
    config = _config(defaults, tiny_npz, local_test_fraction=0.9)
    assert [task.local_test_size(config, n) for n in (1, 2, 3, 10)] == [0, 1, 2, 9]
    off = _config(defaults, tiny_npz, fraction_evaluate=0.0)
    assert task.local_test_size(off, 10) == 0


def test_too_small_partitions_for_a_local_split_are_refused(defaults, tiny_npz):
    problems = run_problems(_config(defaults, tiny_npz), num_partitions=96)
    assert len(problems) == 1 and "too few to split off a local test set" in problems[0]


def test_each_client_evaluates_the_global_model_on_its_own_split(defaults, tiny_npz):
    config = _config(defaults, tiny_npz, clients_per_node=2)
    torch.manual_seed(0)
    state = task.new_model(config).state_dict()
    reply = parse_reply(evaluate_node(config, state, [2, 3], 4, ClientStore(RecordDict())), [2, 3], updates=False)
    assert sorted(reply.metrics) == [2, 3] and not reply.errors
    model = task.new_model(config)
    model.load_state_dict(state)
    for client, metrics in reply.metrics.items():
        data = task.client_data(config, client, 4)
        loss, accuracy = evaluate(model, data.test_images, data.test_labels)
        assert (metrics["accuracy"], metrics["loss"]) == (accuracy, pytest.approx(loss))
        assert metrics["num-examples"] == len(data.test_labels) and metrics["client-id"] == client


def test_fedbn_clients_evaluate_with_their_own_norm_layers(defaults, tiny_npz):
    config = _config(defaults, tiny_npz, stats_aggregation="local", clients_per_node=2)
    torch.manual_seed(0)
    state = {key: value.clone() for key, value in task.new_model(config).state_dict().items()}
    store = ClientStore(RecordDict())
    # client 0 trains and keeps its norm layers; client 1 does not
    train_node(TrainingRound(config, 4, 1, 0.1), state, [0], store)
    reply = parse_reply(evaluate_node(config, state, [0, 1], 4, store), [0, 1], updates=False)
    own = task.new_model(config)
    own.load_state_dict(state)
    own.load_state_dict(store.get(0, LOCAL_NORMS), strict=False)
    data = task.client_data(config, 0, 4)
    loss, accuracy = evaluate(own, data.test_images, data.test_labels)
    assert reply.metrics[0]["loss"] == pytest.approx(loss) and reply.metrics[0]["accuracy"] == accuracy
    glob = task.new_model(config)
    glob.load_state_dict(state)
    assert reply.metrics[0]["loss"] != pytest.approx(evaluate(glob, data.test_images, data.test_labels)[0])
    data = task.client_data(config, 1, 4)  # never trained: the global norm layers
    assert reply.metrics[1]["loss"] == pytest.approx(evaluate(glob, data.test_images, data.test_labels)[0])


class FakeGrid:
    def __init__(self, nodes: int) -> None:
        self.nodes = list(range(1, nodes + 1))

    def get_node_ids(self):
        return self.nodes


def test_the_strategy_samples_clients_per_node_and_summarizes_their_evaluations(defaults, tiny_npz):
    """2 nodes x 2 clients; a third node fails: its clients are dropped with the reason, the others count."""
    config = _config(defaults, tiny_npz, clients_per_node=2)
    hosted = {1: [0, 1], 2: [2, 3], 3: [4, 5]}
    strategy = StatsFedAvg(fraction_evaluate=1.0, min_evaluate_nodes=1, clients_of=lambda grid: hosted)
    torch.manual_seed(0)
    state = task.new_model(config).state_dict()
    messages = list(strategy.configure_evaluate(1, ArrayRecord(state), ConfigRecord(), FakeGrid(3)))
    assert [m.metadata.message_type for m in messages] == ["evaluate"] * 3
    assert [list(m.content["config"]["clients"]) for m in messages] == [[0, 1], [2, 3], [4, 5]]
    replies = [
        Message(content=evaluate_node(config, state, [0, 1], 6, ClientStore(RecordDict())), reply_to=messages[0]),
        Message(content=evaluate_node(config, state, [2, 3], 6, ClientStore(RecordDict())), reply_to=messages[1]),
        Message(Error(code=1, reason="boom"), reply_to=messages[2]),
    ]
    metrics = strategy.aggregate_evaluate(1, replies)
    flat = {}
    for reply, clients in zip(replies[:2], ([0, 1], [2, 3]), strict=True):
        flat |= parse_reply(reply.content, clients, updates=False).metrics
    expected = evaluation_summary(
        {c: m["accuracy"] for c, m in flat.items()},
        {c: m["loss"] for c, m in flat.items()},
        {c: m["num-examples"] for c, m in flat.items()},
    )
    evaluation = strategy.last_round.evaluation
    assert {k: evaluation[k] for k in expected} == expected
    assert evaluation["failed"] == 2 and all("boom" in reason for reason in evaluation["failures"].values())
    assert metrics["accuracy"] == pytest.approx(expected["accuracy"])


def test_evaluation_is_sampled_with_a_seed_of_its_own(defaults, tiny_npz):
    hosted = {1: list(range(5)), 2: list(range(5, 10))}
    strategy = StatsFedAvg(fraction_evaluate=0.3, min_evaluate_nodes=1, clients_of=lambda grid: hosted, sampling_seed=4)
    arrays = ArrayRecord({"w": torch.zeros(2)})

    def sampled(server_round):
        return sorted(
            c
            for m in strategy.configure_evaluate(server_round, arrays, ConfigRecord(), FakeGrid(2))
            for c in m.content["config"]["clients"]
        )

    first = sampled(1)
    assert len(first) == 3 and sampled(1) == first and sampled(2) != first
    assert list(StatsFedAvg(fraction_evaluate=0.0).configure_evaluate(1, arrays, ConfigRecord(), FakeGrid(2))) == []
