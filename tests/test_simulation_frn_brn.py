"""End to end: `fedhn compare` runs FRN + TLU and Batch Renorm (its bounds relaxed from round 2) as real
`flwr run` simulations; brn's global model folds for inference."""

import pytest
import torch

from fedhn.folding import fold_norms
from fedhn.models import build_model
from fedhn.norms import TLU
from tests.conftest import compare, read_rounds

pytestmark = pytest.mark.simulation


def test_compare_trains_frn_and_brn(tmp_path):
    run_config = "num-server-rounds=2 batch-sizes='2,8,32' brn-warmup-rounds=1 brn-relax-rounds=1"
    result = compare(tmp_path, "frn,brn", "--num-supernodes", "3", "--run-config", run_config)
    assert result.exit_code == 0, result.output
    for norm in ("frn", "brn"):
        lines = read_rounds(tmp_path / norm)
        assert [line["round"] for line in lines] == [1, 2]
        assert all(line["clients"] == 3 and line["failed"] == 0 for line in lines)
        assert lines[-1]["test_accuracy"] > 0.3  # digits, 10 classes: learning happened
    images = torch.rand(4, 1, 8, 8)
    frn = build_model("resnet8", num_classes=10, norm="frn", in_channels=1, image_size=8)
    frn.load_state_dict(torch.load(tmp_path / "frn" / "model.pt", weights_only=True))
    assert any(t.tau.abs().sum() > 0 for t in frn.modules() if isinstance(t, TLU))  # the thresholds trained
    brn = build_model("resnet8", num_classes=10, norm="brn", in_channels=1, image_size=8)
    brn.load_state_dict(torch.load(tmp_path / "brn" / "model.pt", weights_only=True))
    folded, report = fold_norms(brn.eval())
    assert len(report.folded) == 9
    with torch.no_grad():
        torch.testing.assert_close(folded(images), brn(images), rtol=1e-4, atol=1e-4)
