"""fold_norms: folded copies compute the eval outputs of the original; per-sample norms stay."""

import pytest
import torch
import torchvision
from torch import nn

from fedhn import folding
from fedhn.folding import ChannelAffine, fold_norms
from fedhn.models import build_model
from fedhn.norms import is_norm

MODELS = ["resnet8", "resnet20", "resnet18", "mlp", "tv_resnet18", "mobilenet_v2"]
FOLDABLE = ["bn", "hn", "hn_g8", "mean=bn,std=bn+en", "brn"]


def _trained(name: str, norm: str) -> nn.Module:
    """A model after two SGD steps, so that running statistics and parameters are not at their init."""
    torch.manual_seed(0)
    model = build_model(name, norm=norm, image_size=16)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):
        loss = model(torch.randn(4, 3, 16, 16) * 2 + 0.5).logsumexp(1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def _assert_same_eval_outputs(model: nn.Module, folded: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        expected, actual = model(x), folded(x)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())


def _norm_names(model: nn.Module) -> list[str]:
    return [name for name, module in model.named_modules() if is_norm(module)]


@pytest.mark.parametrize("norm", FOLDABLE)
@pytest.mark.parametrize("name", MODELS)
def test_every_norm_folds_into_its_layer_and_eval_outputs_stay(name, norm):
    model = _trained(name, norm)
    folded, report = fold_norms(model)
    _assert_same_eval_outputs(model, folded, torch.randn(3, 3, 16, 16))
    assert sorted(report.folded) == sorted(_norm_names(model))
    assert report.traced and not report.affine and not report.kept
    assert not _norm_names(folded)


@pytest.mark.parametrize("norm", ["gn_g4", "sn", "ln"])
def test_norms_with_per_sample_statistics_are_kept(norm):
    model = _trained("resnet8", norm)
    folded, report = fold_norms(model)
    assert sorted(report.kept) == sorted(_norm_names(model)) and not report.folded
    _assert_same_eval_outputs(model, folded, torch.randn(2, 3, 16, 16))


def test_brn_folds_after_training_with_its_corrections_active():
    model = _trained("resnet8", "bn")  # running statistics away from their init, then Batch Renorm over them
    brn = build_model("resnet8", norm="brn", image_size=16)
    brn.load_state_dict(model.state_dict())
    brn.train()
    brn(torch.randn(4, 3, 16, 16) * 3 - 1)  # r, d != 1, 0 move the running statistics
    folded, report = fold_norms(brn.eval())
    assert sorted(report.folded) == sorted(_norm_names(brn))
    _assert_same_eval_outputs(brn, folded, torch.randn(3, 3, 16, 16))


def test_frn_is_refused_with_the_reason():
    with pytest.raises(ValueError, match=r"cannot fold 9 FRN layers \(stem.1, .*own root mean square.*in eval mode"):
        fold_norms(build_model("resnet8", norm="frn"))


def test_torchvision_batchnorm_folds():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    model(torch.randn(4, 3, 32, 32))  # running statistics move away from their init
    model.eval()
    folded, report = fold_norms(model)
    assert len(report.folded) == 20
    _assert_same_eval_outputs(model, folded, torch.randn(2, 3, 32, 32))


@pytest.mark.parametrize("bias", [True, False])
def test_conv_with_or_without_bias_folds(bias):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, bias=bias), nn.BatchNorm2d(8))
    model(torch.randn(4, 3, 6, 6) * 3 + 2)
    folded, report = fold_norms(model.eval())
    assert report.folded == {"1": "0"}
    assert isinstance(folded[1], nn.Identity) and folded[0].bias is not None
    _assert_same_eval_outputs(model, folded, torch.randn(2, 3, 6, 6))


class _Residual(nn.Module):
    """A norm after an addition, and a conv whose output feeds two consumers: neither can fold."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.norm_after_add = nn.BatchNorm2d(4)
        self.norm_of_shared = nn.BatchNorm2d(4)

    def forward(self, x):
        out = self.conv(x)
        return self.norm_after_add(out + x) + self.norm_of_shared(out) + out


def test_norm_without_a_foldable_layer_becomes_channel_affine():
    torch.manual_seed(0)
    model = _Residual()
    model(torch.randn(4, 4, 5, 5) * 2 - 1)
    folded, report = fold_norms(model.eval())
    assert sorted(report.affine) == ["norm_after_add", "norm_of_shared"] and not report.folded
    assert isinstance(folded.norm_after_add, ChannelAffine)
    _assert_same_eval_outputs(model, folded, torch.randn(2, 4, 5, 5))


@pytest.mark.parametrize("name", ["resnet20", "mlp"])
def test_models_that_do_not_trace_fold_through_their_structure(name, monkeypatch):
    model = _trained(name, "hn")
    _, traced_report = fold_norms(model)

    def untraceable(*args):
        raise torch.fx.proxy.TraceError("data-dependent control flow")

    monkeypatch.setattr(folding, "_traced_pairs", untraceable)
    folded, report = fold_norms(model)
    assert not report.traced and report.folded == traced_report.folded
    _assert_same_eval_outputs(model, folded, torch.randn(2, 3, 16, 16))


def test_fold_returns_a_copy_and_leaves_the_model_alone():
    model = _trained("resnet8", "hn").train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    folded, _ = fold_norms(model)
    assert folded is not model and model.training and not folded.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
