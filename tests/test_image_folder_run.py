"""End to end: a `flwr run` simulation (through fedhn compare) on a generated 2-domain image folder,
streamed from disk, each client holding one domain (2 nodes x 2 clients, trained one after the other)."""

import pytest

from fedhn.data.image_folder import scan_folder
from tests.conftest import compare, read_rounds, write_image_folder

pytestmark = [
    pytest.mark.simulation,
    pytest.mark.filterwarnings("ignore:The image decoding and encoding:DeprecationWarning"),
]


def test_a_streamed_two_domain_folder_trains_one_domain_per_client(tmp_path):
    root = write_image_folder(tmp_path / "data", per_class=12)
    read_only = sorted(root.rglob("*"))
    run_config = (
        f"dataset='{root}' cache-dir='{tmp_path / 'cache'}' image-size=8 stream-data='true' partitioner='domain' "
        "model='mlp' batch-sizes='4' local-epochs=2 num-server-rounds=2 lr=0.4 clients-per-node=2"
    )
    result = compare(tmp_path / "out", "hn", "--num-supernodes", "2", "-c", run_config)
    assert result.exit_code == 0, result.output
    lines = read_rounds(tmp_path / "out" / "hn")
    assert [line["round"] for line in lines] == [1, 2]
    assert all(line["clients"] == 4 and line["failed"] == 0 for line in lines)
    test = scan_folder(root).test
    sizes = {"photo": int((test.domains == 0).sum()), "sketch": int((test.domains == 1).sum())}
    for line in lines:
        by_domain = line["test_accuracy_by_domain"]
        assert set(by_domain) == {"photo", "sketch"}
        combined = sum(by_domain[name] * sizes[name] for name in sizes) / sum(sizes.values())
        assert line["test_accuracy"] == pytest.approx(combined, abs=1e-9)
    assert lines[-1]["test_accuracy"] > 0.5  # 3 classes told apart by colour: learning happened
    assert sorted(root.rglob("*")) == read_only  # nothing written next to the data
