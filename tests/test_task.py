"""The federated task without Flower: problems found before a run starts, client training, FedBN state."""

import pytest
import torch

from fedhn.app.config import RunConfig
from fedhn.app.preflight import run_problems
from fedhn.app.schedule import renorm_limits, round_lr
from fedhn.app.task import (
    TrainingRound,
    client_data,
    client_model,
    new_model,
    norm_keys,
    train_client,
    train_packed_clients,
)
from fedhn.norms import BatchRenorm


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
    state_a, result_a = train_client(TrainingRound(config, 4, 1, config.lr), state, 1)
    state_a = {k: v.clone() for k, v in state_a.items()}
    state_b, result_b = train_client(TrainingRound(config, 4, 1, config.lr), state, 1)
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
    trained, _ = train_client(TrainingRound(config, 4, 1, config.lr), state, 0, local_state=local)
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
    frozen, _ = train_client(TrainingRound(config, 4, 1, 0.0), state, 0)  # lr 0: no parameter moves
    weight = "features.1.weight"
    torch.testing.assert_close(frozen[weight], state[weight], rtol=0, atol=0)
    moved, _ = train_client(TrainingRound(config, 4, 1, 0.5), state, 0)
    assert not torch.equal(moved[weight], state[weight])


@pytest.mark.parametrize(
    ("norm", "suffixes"),
    [
        ("frn", {"weight", "bias", "eps_l"}),
        ("brn", {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}),
    ],
)
def test_fedbn_keeps_frn_and_brn_layers_local(defaults, tiny_npz, norm, suffixes):
    """FedBN selects the norm layers by type: FRN's and Batch Renorm's parameters (and brn's statistics) stay on
    the client; FRN's TLU thresholds are activation parameters and are averaged with the weights."""
    config = _config(defaults, dataset=str(tiny_npz), model="mlp", norm=norm, stats_aggregation="local")
    layers = ("features.2.", "features.5.", "features.8.", "features.11.")
    assert norm_keys(config) == {f"{layer}{suffix}" for layer in layers for suffix in suffixes}
    state = new_model(config).state_dict()
    local = {k: torch.full_like(v, 3) for k, v in state.items() if k in norm_keys(config) and v.is_floating_point()}
    trained, _ = train_client(TrainingRound(config, 4, 1, config.lr), state, 0, local_state=local)
    assert trained["features.2.weight"].mean() > 2  # started from the local 3s, not the global 1s


def test_brn_bounds_follow_the_round(defaults):
    config = _config(defaults, brn_r_max=3.0, brn_d_max=5.0, brn_warmup_rounds=2, brn_relax_rounds=4)
    limits = [renorm_limits(config, server_round) for server_round in range(1, 9)]
    assert limits == [(1, 0), (1, 0), (1.5, 1.25), (2, 2.5), (2.5, 3.75), (3, 5), (3, 5), (3, 5)]
    at_once = _config(defaults, brn_r_max=2.0, brn_d_max=1.0, brn_warmup_rounds=1, brn_relax_rounds=0)
    assert [renorm_limits(at_once, server_round) for server_round in (1, 2, 3)] == [(1, 0), (2, 1), (2, 1)]


def test_brn_clients_train_as_bn_in_the_warmup_and_renormalize_after(defaults, tiny_npz):
    """The client sets the bounds from the round it trains in: in a warm-up round brn trains exactly as bn."""
    settings = dict(dataset=str(tiny_npz), model="mlp", batch_sizes="4", brn_warmup_rounds=1, brn_relax_rounds=2)
    bn, brn = _config(defaults, norm="bn", **settings), _config(defaults, norm="brn", **settings)
    torch.manual_seed(0)
    state = {k: v.clone() for k, v in new_model(bn).state_dict().items()}
    for server_round, same in ((1, True), (2, False)):
        expected, _ = train_client(TrainingRound(bn, 4, server_round, 0.1), state, 0)
        expected = {k: v.clone() for k, v in expected.items()}
        got, _ = train_client(TrainingRound(brn, 4, server_round, 0.1), state, 0)
        assert all(torch.equal(got[k], v) for k, v in expected.items()) is same
        layer = next(m for m in client_model(brn).modules() if isinstance(m, BatchRenorm))
        assert (layer.r_max, layer.d_max) == renorm_limits(brn, server_round)


@pytest.mark.parametrize("norm", ["frn", "brn"])
def test_packed_frn_and_brn_clients_train_as_they_would_alone(defaults, tiny_npz, norm, monkeypatch):
    config = _config(defaults, dataset=str(tiny_npz), model="resnet8", norm=norm, batch_sizes="4,8",
                     brn_warmup_rounds=0, brn_relax_rounds=1)  # fmt: skip
    monkeypatch.setattr("fedhn.app.task.FunctionalCohort", None)  # the cohort layout packs them, no vmap fallback
    torch.manual_seed(0)
    state = {k: v.clone() for k, v in new_model(config).state_dict().items()}
    packed = train_packed_clients(TrainingRound(config, 4, 2, 0.1), state, [0, 1], {})
    for client in (0, 1):
        alone, result = train_client(TrainingRound(config, 4, 2, 0.1), state, client)
        assert packed[client][1].steps == result.steps
        for key, value in alone.items():
            torch.testing.assert_close(packed[client][0][key], value, rtol=1e-4, atol=1e-5, msg=key)


def test_tensorboard_without_the_package_is_refused_before_the_run(defaults, monkeypatch):
    monkeypatch.setattr("fedhn.app.preflight.tensorboard_available", lambda: False)
    assert run_problems(_config(defaults, tensorboard=True)) == [
        "tensorboard = true needs the tensorboard package: pip install -e '.[tensorboard]' (or set tensorboard = false)"
    ]
