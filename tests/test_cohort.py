"""Packed cohorts: K clients trained in lockstep equal the same K clients trained one by one with
``fedhn.training.train`` (parameters, running statistics, batch counters, losses, step counts)."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fedhn.clipping import AdaptiveClipping
from fedhn.cohort import Client, FunctionalCohort, Group, pack, train_packed, unpack
from fedhn.data import crop_flip
from fedhn.models import build_model
from fedhn.models.cifar_resnet import CifarResNet
from fedhn.norms import HeterologousNorm, freeze_statistics, norm_layer, set_renorm_limits
from fedhn.training import client_lr, train

NORMS = ("bn", "gn_g4", "hn", "hn_g8", "sn", "mean=bn,std=bn+en", "frn", "brn")
SETTINGS = dict(momentum=0.9, weight_decay=5e-4)
# (batch size, partition size): every batch size held by 3 clients, uneven tails (a one-example
# tail merges into the batch before it), clients that finish early.
RESNET_CLIENTS = ((2, 5), (2, 7), (2, 4), (3, 7), (3, 8), (3, 6))
MLP_CLIENTS = ((4, 9), (4, 14), (4, 12), (8, 17), (8, 20), (8, 13))


@pytest.fixture(autouse=True)
def float64_one_thread():
    """float64 (exactness to 1e-10); one thread, as a simulated client trains (and fast on a busy machine)."""
    default, threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    yield
    torch.set_default_dtype(default)
    torch.set_num_threads(threads)


def _resnet8(norm: str) -> nn.Module:
    """resnet8's layout (stem, three stages of one basic block, two with projection shortcuts), narrow."""
    return CifarResNet((8, 16, 16), (1, 1, 1), norm_layer(norm), 4)


def _models(build, count: int) -> list[nn.Module]:
    models = []
    for seed in range(count):
        torch.manual_seed(seed)
        models.append(build())
    return models


def _data(shape: tuple[int, ...], sizes) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    return [
        (torch.randn(n, *shape, generator=generator), torch.randint(0, 4, (n,), generator=generator)) for _, n in sizes
    ]


def _client(index: int, images, labels, batch_size: int, augment: bool) -> Client:
    """Client ``index`` as ``fedhn.app.task.train_client`` sets it up: one generator for augmentation and batches."""
    generator = torch.Generator().manual_seed(100 + index)
    black = torch.full((images.shape[1],), -1.0)
    crop = (lambda x: crop_flip(x, black, generator)) if augment else None
    return Client(images, labels, batch_size, client_lr(0.5, batch_size, "linear"), generator, crop)


def _compare(
    models, cohort, sizes, data, augment: bool, epochs: int, atol: float, rtol: float = 0.0, agc_clip: float = 0.0
) -> None:
    """Train the cohort packed and copies of ``models`` one by one on the same clients; assert equal."""
    clients = [_client(i, x, y, b, augment) for i, ((b, _), (x, y)) in enumerate(zip(sizes, data, strict=True))]
    clipping = AdaptiveClipping(models[0], agc_clip) if agc_clip else None
    results = train_packed(cohort, clients, epochs=epochs, clipping=clipping, **SETTINGS)
    states = unpack(cohort)
    for index, model in enumerate(models):
        alone = copy.deepcopy(model)
        c = _client(index, *data[index], sizes[index][0], augment)
        expected = train(
            alone, c.images, c.labels, batch_size=c.batch_size, epochs=epochs, lr=c.lr, generator=c.generator,
            augment=c.augment, agc_clip=agc_clip, **SETTINGS,
        )  # fmt: skip
        reference = alone.state_dict()
        assert list(states[index]) == list(reference)
        for key, value in reference.items():
            assert states[index][key].dtype == value.dtype, key
            torch.testing.assert_close(states[index][key], value, rtol=rtol, atol=atol, msg=f"client {index} {key}")
        got = results[index]
        assert (got.steps, got.examples, got.batch_size) == (expected.steps, expected.examples, expected.batch_size)
        assert got.loss == pytest.approx(expected.loss, rel=max(rtol, 1e-6))  # train() sums the losses in float32


@pytest.mark.parametrize("norm", NORMS)
def test_packed_resnet8_equals_one_by_one(norm):
    models = _models(lambda: _resnet8(norm), len(RESNET_CLIENTS))
    _compare(models, pack(models), RESNET_CLIENTS, _data((3, 8, 8), RESNET_CLIENTS), True, 1, atol=1e-10)


@pytest.mark.parametrize("norm", NORMS)
def test_packed_mlp_equals_one_by_one(norm):
    models = _models(lambda: build_model("mlp", 4, norm, 3, image_size=4), len(MLP_CLIENTS))
    _compare(models, pack(models), MLP_CLIENTS, _data((3, 4, 4), MLP_CLIENTS), False, 1, atol=1e-10)


@pytest.mark.parametrize("norm", ["bn", "hn"])
def test_packed_cohort_whose_members_all_train_every_step_equals_one_by_one(norm):
    sizes = ((2, 6),) * 3
    models = _models(lambda: _resnet8(norm), len(sizes))
    _compare(models, pack(models), sizes, _data((3, 8, 8), sizes), True, 2, atol=1e-10)


@pytest.mark.parametrize("norm", ["bn", "hn"])
def test_packed_float32_matches_one_by_one(norm):
    torch.set_default_dtype(torch.float32)
    models = _models(lambda: _resnet8(norm), len(RESNET_CLIENTS))
    _compare(models, pack(models), RESNET_CLIENTS, _data((3, 8, 8), RESNET_CLIENTS), True, 1, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("norm", ["bn", "hn", "mean=bn,std=bn+en"])
def test_cumulative_average_uses_each_members_own_batch_count(norm):
    """FedBN-like local state: members arrive with different batch counts, so ``momentum=None`` gives each
    its own factor; two epochs also run members that are not consecutive in one group."""
    build = lambda: CifarResNet((8, 8, 16), (1, 1, 1), norm_layer(norm, momentum=None), 4)  # noqa: E731
    models = _models(build, len(RESNET_CLIENTS))
    for index, model in enumerate(models):
        for module in model.modules():
            if isinstance(module, HeterologousNorm):
                module.num_batches_tracked.fill_(3 * index)
    _compare(models, pack(models), RESNET_CLIENTS, _data((3, 8, 8), RESNET_CLIENTS), True, 2, atol=1e-10)


@pytest.mark.parametrize("norm", ["bn", "hn", "hn_g8", "sn", "mean=bn,std=bn+en"])
def test_packed_members_with_frozen_statistics_equal_one_by_one(norm):
    """FixBN: each member normalizes with its own running statistics, which stay where they were."""
    models = _models(lambda: _resnet8(norm), len(RESNET_CLIENTS))
    for index, model in enumerate(models):
        model.train()(torch.randn(4, 3, 8, 8) * (1 + index))  # members' statistics differ
        freeze_statistics(model)
    before = [copy.deepcopy(model.state_dict()) for model in models]
    cohort = pack(models)
    _compare(models, cohort, RESNET_CLIENTS, _data((3, 8, 8), RESNET_CLIENTS), True, 1, atol=1e-10)
    for state, original in zip(unpack(cohort), before, strict=True):
        for key in (key for key in original if "running" in key or "num_batches" in key):
            assert torch.equal(state[key], original[key]), key


@pytest.mark.parametrize(("norm", "agc_clip"), [("none", 0.0), ("none", 0.02), ("bn", 0.02)])
def test_packed_weight_standardized_resnet_equals_one_by_one(norm, agc_clip):
    """FedWon's pieces packed: ws convolutions, SkipInit gains, adaptive gradient clipping per member."""
    build = lambda: build_model("resnet8", 4, norm, 3, conv="ws")  # noqa: E731
    models = _models(build, len(RESNET_CLIENTS))
    for model in models:  # SkipInit gains start at 0; move them so the residual branches count
        for name, parameter in model.named_parameters():
            if name.endswith("residual_gain.gain"):
                parameter.data.fill_(0.5)
    cohort = pack(models)
    assert any(type(m).__name__ == "CohortWSConv2d" for m in cohort.modules())
    _compare(models, cohort, RESNET_CLIENTS, _data((3, 8, 8), RESNET_CLIENTS), True, 1, atol=1e-10, agc_clip=agc_clip)


@pytest.mark.parametrize("norm", ["mean=bn,std=bn+en", "brn", "frn"])
def test_members_that_are_not_consecutive_get_their_own_gradients_and_statistics(norm):
    models = _models(lambda: _resnet8(norm), 4)
    cohort = pack(models).train()
    images, labels = [torch.randn(3, 3, 8, 8) for _ in range(2)], [torch.tensor([0, 1, 2]), torch.tensor([3, 2, 1])]
    grads, losses = cohort.gradients([Group(torch.tensor([0, 3]), images, labels)])
    states = unpack(cohort)
    for row, member in enumerate([0, 3]):
        model = models[member].train()
        loss = F.cross_entropy(model(images[row]), labels[row])
        loss.backward()
        torch.testing.assert_close(losses[0][row], loss.detach(), rtol=0, atol=1e-12)
        for (name, param), grad in zip(model.named_parameters(), grads, strict=True):
            torch.testing.assert_close(grad[member], param.grad, rtol=0, atol=1e-12, msg=name)
        for key, value in model.state_dict().items():
            torch.testing.assert_close(states[member][key], value, rtol=0, atol=1e-12, msg=key)
    untouched = models[1].state_dict()
    assert all(torch.equal(states[1][key], value) for key, value in untouched.items())


def test_batch_renorm_packs_only_members_of_one_round_and_a_running_average_with_momentum():
    models = _models(lambda: _resnet8("brn"), 2)
    layers = sum(type(m).__name__ == "BatchRenorm" for m in models[0].modules())
    assert sum(type(m).__name__ == "CohortBatchRenorm" for m in pack(models).modules()) == layers == 9
    set_renorm_limits(models[1], 2.0, 5.0)  # another round's bounds
    with pytest.raises(ValueError, match=r"BatchRenorm layers of different num_features, eps, momentum, .*r_max"):
        pack(models)
    cumulative = _models(lambda: CifarResNet((8, 8, 16), (1, 1, 1), norm_layer("brn", momentum=None), 4), 2)
    with pytest.raises(ValueError, match=r"cumulative average \(momentum=None\)"):
        pack(cumulative)  # fedhn.app.task then trains them with the vmap fallback


class _Scale(nn.Module):
    """A layer fedhn.cohort has no converter for."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def _custom() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        _Scale(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1),
        HeterologousNorm(8, "bn", "en"),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )


def test_pack_names_the_module_type_it_cannot_map():
    with pytest.raises(
        TypeError, match=r"Sequential\.1: no cohort converter for torch\.nn\.modules\.batchnorm\.BatchNorm2d"
    ):
        pack(_models(_custom, 2))


@pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")
@pytest.mark.parametrize(
    "build", [_custom, lambda: _resnet8("gn_g4"), lambda: _resnet8("hn")], ids=["custom", "gn", "hn"]
)
def test_vmap_fallback_equals_one_by_one(build):
    models = _models(build, len(RESNET_CLIENTS))
    cohort = FunctionalCohort(models)
    _compare(models, cohort, RESNET_CLIENTS, _data((3, 8, 8), RESNET_CLIENTS), True, 1, atol=1e-10)
