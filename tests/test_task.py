"""The federated task without Flower: problems found before a run starts, client training, FedBN state."""

import pytest
import torch

from fedhn.app.config import RunConfig
from fedhn.app.preflight import run_problems
from fedhn.app.schedule import round_lr
from fedhn.app.task import client_data, new_model, norm_keys, train_client


def _config(defaults, **overrides) -> RunConfig:
    return RunConfig.from_mapping(defaults | {k.replace("_", "-"): v for k, v in overrides.items()})


def test_a_valid_run_has_no_problems(defaults):
    assert run_problems(_config(defaults), num_partitions=10) == []


@pytest.mark.parametrize(
    ("overrides", "partitions", "fragment"),
    [
        ({"norm": "gn_g32"}, 0, "norm = 'gn_g32' does not fit model 'resnet8' on digits"),
        ({"model": "mlp", "norm": "in"}, 0, "mean set in holds a single value"),
        ({"dataset": "/nonexistent/x.npz"}, 0, "does not exist"),
        ({"batch_sizes": "256,512"}, 10, "all larger than every client's partition"),
        ({}, 5000, "5000 clients but digits has 1437 training examples"),
    ],
)
def test_impossible_runs_are_found_before_they_start(defaults, overrides, partitions, fragment):
    problems = run_problems(_config(defaults, **overrides), num_partitions=partitions)
    assert len(problems) == 1 and fragment in problems[0]


def test_client_gets_its_partition_and_batch_size(defaults, tiny_npz):
    config = _config(defaults, dataset=str(tiny_npz), batch_sizes="2,8")
    first, second = client_data(config, 0, 4), client_data(config, 1, 4)
    assert (first.batch_size, second.batch_size) == (2, 8)
    assert (
        len(first.labels)
        + len(second.labels)
        + len(client_data(config, 2, 4).labels)
        + len(client_data(config, 3, 4).labels)
        == 96
    )


def test_client_training_is_deterministic_and_reports_its_work(defaults, tiny_npz):
    config = _config(defaults, dataset=str(tiny_npz), model="mlp", norm="hn", batch_sizes="4", local_epochs=2)
    torch.manual_seed(0)
    state = new_model(config).state_dict()
    state_a, result_a = train_client(config, state, 1, 4, server_round=1, lr=config.lr)
    state_a = {k: v.clone() for k, v in state_a.items()}
    state_b, result_b = train_client(config, state, 1, 4, server_round=1, lr=config.lr)
    assert (result_a.steps, result_a.examples, result_a.batch_size) == (12, 48, 4)
    assert result_a == result_b
    for key in state_a:
        torch.testing.assert_close(state_a[key], state_b[key], rtol=0, atol=0)


def test_local_state_overrides_the_global_norm_layers(defaults, tiny_npz):
    config = _config(defaults, dataset=str(tiny_npz), model="mlp", norm="bn", stats_aggregation="local")
    keys = norm_keys(config)
    state = new_model(config).state_dict()
    # The MLP is Flatten, then (Linear, norm, ReLU) x 4: its norm layers are features.2, .5, .8 and .11.
    assert keys == {k for k in state if k.startswith(("features.2.", "features.5.", "features.8.", "features.11."))}
    local = {k: torch.full_like(v, 3) for k, v in state.items() if k in keys and v.is_floating_point()}
    trained, _ = train_client(config, state, 0, 4, server_round=1, lr=config.lr, local_state=local)
    running = next(k for k in local if k.endswith("running_var"))
    assert trained[running].mean() > 1.5  # started from the local 3s, not the global 1s


def test_cosine_schedule_decays_to_near_zero(defaults):
    config = _config(defaults, lr=0.2, lr_schedule="cosine", num_server_rounds=10)
    assert round_lr(config, 1) == pytest.approx(0.2)
    assert round_lr(config, 10) < 0.01
    assert round_lr(_config(defaults, lr=0.2), 10) == 0.2


def test_clients_train_with_the_lr_the_server_sends(defaults, tiny_npz):
    config = _config(defaults, dataset=str(tiny_npz), model="mlp", norm="bn", batch_sizes="4", lr=0.5)
    torch.manual_seed(0)
    state = {k: v.clone() for k, v in new_model(config).state_dict().items()}
    frozen, _ = train_client(config, state, 0, 4, server_round=1, lr=0.0)  # lr 0: no parameter moves
    weight = "features.1.weight"
    torch.testing.assert_close(frozen[weight], state[weight], rtol=0, atol=0)
    moved, _ = train_client(config, state, 0, 4, server_round=1, lr=0.5)
    assert not torch.equal(moved[weight], state[weight])


def test_tensorboard_without_the_package_is_refused_before_the_run(defaults, monkeypatch):
    monkeypatch.setattr("fedhn.app.preflight.tensorboard_available", lambda: False)
    assert run_problems(_config(defaults, tensorboard=True)) == [
        "tensorboard = true needs the tensorboard package: pip install -e '.[tensorboard]' (or set tensorboard = false)"
    ]
