"""aggregate_states: exact pooled statistics, checked against the statistics of the union of the clients' data."""

import numpy as np
import pytest
import torch

from fedhn.norms import norm_layer
from strategies import aggregate_states, combine_partials, partial_aggregate


def _clients(seed: int = 0, channels: int = 4, sizes=(5, 20, 60)) -> list[np.ndarray]:
    """Client feature maps (n_k, C, S) whose channel means differ strongly between clients."""
    rng = np.random.default_rng(seed)
    return [
        rng.normal(loc=rng.normal(0, 3, size=(1, channels, 1)), scale=rng.uniform(0.5, 2), size=(n, channels, 6))
        for n in sizes
    ]


def _bn_state(x: np.ndarray) -> dict[str, np.ndarray]:
    return {
        "bn.running_mean": x.mean(axis=(0, 2)),
        "bn.running_var": x.var(axis=(0, 2)),
        "bn.num_batches_tracked": np.array(len(x), dtype=np.int64),
        "conv.weight": x[:2, :, :3].copy(),
    }


def test_pooled_bn_statistics_equal_those_of_the_union():
    data = _clients()
    union = np.concatenate(data)
    result = aggregate_states([_bn_state(x) for x in data], [len(x) for x in data], "pooled")
    np.testing.assert_allclose(result["bn.running_mean"], union.mean(axis=(0, 2)), rtol=1e-12)
    np.testing.assert_allclose(result["bn.running_var"], union.var(axis=(0, 2)), rtol=1e-12)


def test_mean_aggregation_averages_variances_and_misses_the_spread_of_client_means():
    data = _clients()
    result = aggregate_states([_bn_state(x) for x in data], [len(x) for x in data], "mean")
    weights = np.array([len(x) for x in data]) / sum(len(x) for x in data)
    np.testing.assert_allclose(
        result["bn.running_var"], sum(w * x.var(axis=(0, 2)) for w, x in zip(weights, data, strict=True))
    )
    assert np.all(result["bn.running_var"] < np.concatenate(data).var(axis=(0, 2)))


@pytest.mark.parametrize("groups", [1, 2])
def test_pooled_hn_group_variance_equals_that_of_the_union(groups):
    """HN keeps C channel means and one variance per channel group, centered on the group's mean."""
    data = _clients(seed=1, channels=4)
    states = []
    for x in data:
        cells = x.reshape(len(x), groups, -1)  # (n, G, C/G * S)
        states.append({"hn.running_mean": x.mean(axis=(0, 2)), "hn.running_var": cells.var(axis=(0, 2))})
    union = np.concatenate(data).reshape(-1, groups, 4 // groups * 6)
    result = aggregate_states(states, [len(x) for x in data])
    np.testing.assert_allclose(result["hn.running_var"], union.var(axis=(0, 2)), rtol=1e-12)


def test_explicit_centers_are_used_and_averaged():
    data = _clients(seed=2, channels=3)
    states = [{"n.running_var": np.array([x.var()]), "n.running_var_center": np.array([x.mean()])} for x in data]
    result = aggregate_states(states, [x.size for x in data])
    union = np.concatenate([x.ravel() for x in data])
    np.testing.assert_allclose(result["n.running_var"], [union.var()], rtol=1e-12)
    np.testing.assert_allclose(result["n.running_var_center"], [union.mean()], rtol=1e-12)


def test_pooled_statistics_of_real_layers_match_a_layer_that_saw_the_union():
    """Clients' HN layers (cumulative averages over equal-size batches) pool to the centralized layer's statistics
    up to the unbiased-variance correction, which the pooled formula treats as any variance."""
    rng = np.random.default_rng(3)
    batches = [rng.normal(loc=rng.normal(0, 2, (1, 8, 1, 1)), size=(16, 8, 3, 3)) for _ in range(3)]
    states = []
    for x in batches:
        layer = norm_layer("mean=bn,std=bn+en_g2", momentum=None)(8).double()
        layer(torch.from_numpy(x))
        states.append({k: v.numpy() for k, v in layer.state_dict().items()})
    result = aggregate_states(states, [1, 1, 1])
    union = np.concatenate(batches).transpose(1, 0, 2, 3).reshape(8, -1)
    n = union.shape[1] // 3
    correction = n / (n - 1)  # each client stored an unbiased variance over n values per channel
    np.testing.assert_allclose(result["running_mean"], union.mean(axis=1), rtol=1e-12)
    expected_bn = np.mean([x.transpose(1, 0, 2, 3).reshape(8, -1).var(axis=1) * correction for x in batches], axis=0)
    expected_bn += np.mean(
        [(x.transpose(1, 0, 2, 3).reshape(8, -1).mean(axis=1) - union.mean(axis=1)) ** 2 for x in batches], axis=0
    )
    np.testing.assert_allclose(result["running_var"][:8], expected_bn, rtol=1e-12)
    assert result["num_batches_tracked"].dtype == np.int64


def test_brn_running_statistics_pool_like_bn():
    """Clients' Batch Renorm layers (corrections active) pool to the exact statistics of the union, as BN's do:
    the weighted mean, and sum_k w_k (var_k + (mean_k - mean)^2) around each channel's own mean."""
    rng = np.random.default_rng(4)
    batches = [rng.normal(loc=rng.normal(0, 2, (1, 4, 1, 1)), scale=2, size=(n, 4, 3, 3)) for n in (8, 12, 20)]
    states = []
    for x in batches:
        layer = norm_layer("brn", momentum=None)(4).double()
        assert torch.all(layer.corrections(torch.from_numpy(x))[1] != 0)  # the step is no BN step
        layer(torch.from_numpy(x))
        states.append({k: v.numpy() for k, v in layer.state_dict().items()})
    weights = [len(x) for x in batches]
    result = aggregate_states(states, weights)
    w = np.array(weights) / sum(weights)
    means = np.stack([s["running_mean"] for s in states])
    variances = np.stack([s["running_var"] for s in states])
    mean = w @ means
    np.testing.assert_allclose(result["running_mean"], mean, rtol=1e-12)
    np.testing.assert_allclose(result["running_var"], w @ (variances + (means - mean) ** 2), rtol=1e-12)
    union = np.concatenate(batches).transpose(1, 0, 2, 3).reshape(4, -1)
    np.testing.assert_allclose(result["running_mean"], union.mean(axis=1), rtol=1e-12)
    assert result["num_batches_tracked"] == 1 and result["num_batches_tracked"].dtype == np.int64


def test_counters_stay_int64_and_take_the_maximum():
    states = [
        {"b.num_batches_tracked": np.array(3, dtype=np.int64)},
        {"b.num_batches_tracked": np.array(7, dtype=np.int64)},
    ]
    result = aggregate_states(states, [10.0, 1.0])
    assert result["b.num_batches_tracked"].dtype == np.int64 and result["b.num_batches_tracked"] == 7


def test_float_dtypes_are_kept_and_weights_normalized():
    states = [{"w": np.array([1.0, 2.0], dtype=np.float32)}, {"w": np.array([3.0, 6.0], dtype=np.float32)}]
    result = aggregate_states(states, [1, 3])
    assert result["w"].dtype == np.float32
    np.testing.assert_allclose(result["w"], [2.5, 5.0])


@pytest.mark.parametrize(
    ("states", "weights", "stats", "fragment"),
    [
        ([{"a": np.ones(2)}], [1.0], "median", "stats must be one of pooled, mean, local"),
        ([{"a": np.ones(2)}, {"b": np.ones(2)}], [1, 1], "pooled", "keys"),
        ([{"a": np.ones(2)}, {"a": np.ones(3)}], [1, 1], "pooled", "shape (3,) in state 1"),
        ([{"a": np.ones(2)}], [0.0], "pooled", "positive and finite"),
        ([{"a": np.ones(2)}], [1, 2], "pooled", "one weight per state"),
        ([{"x.running_var": np.ones(3), "x.running_mean": np.ones(2)}], [1], "pooled", "cannot pool 'x.running_var'"),
    ],
)
def test_bad_input_is_rejected_with_the_reason(states, weights, stats, fragment):
    with pytest.raises(ValueError) as info:
        aggregate_states(states, weights, stats)
    assert fragment in str(info.value)


@pytest.mark.parametrize("stats", ["pooled", "mean"])
def test_partials_of_disjoint_clients_combine_to_the_aggregate_of_all(stats):
    data = _clients(seed=2, sizes=(5, 20, 60, 7, 33))
    states, weights = [_bn_state(x) for x in data], [len(x) for x in data]
    expected = aggregate_states(states, weights, stats)
    parts = [partial_aggregate(states[:2], weights[:2], stats), partial_aggregate(states[2:], weights[2:], stats)]
    combined = combine_partials(parts, stats)
    assert parts[0].clients + parts[1].clients == 5
    for key, value in expected.items():
        np.testing.assert_allclose(combined[key], value, rtol=1e-12, err_msg=key)
    assert combined["bn.num_batches_tracked"] == max(len(x) for x in data)
