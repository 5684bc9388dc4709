"""Image folders (fedhn.data.image_folder): layouts, the seeded split, decoding, the cache, streaming, domains."""

import os
import shutil

import numpy as np
import pytest
import torch
from torchvision.io import write_png

from fedhn.app import task
from fedhn.app.config import ConfigError, RunConfig
from fedhn.app.preflight import run_problems
from fedhn.app.round_log import RoundLog
from fedhn.app.task import client_data, dataset, new_model
from fedhn.calibration import calibration_order, layer_sums
from fedhn.data import FolderImages, FolderOptions, domain_partition_indices, load_dataset, read_batches
from fedhn.data import image_folder as folder_module
from fedhn.data import images as images_module
from fedhn.data.image_folder import cache_path, scan_folder
from fedhn.models import build_model
from fedhn.training import evaluate, train
from tests.conftest import write_image_folder

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding:DeprecationWarning")


@pytest.fixture(autouse=True)
def _fresh_loads():
    """load_dataset caches per process: every test reads the folder anew."""
    load_dataset.cache_clear()
    yield
    load_dataset.cache_clear()


def _load(root, cache, **options):
    return load_dataset(str(root), folder=FolderOptions(cache_dir=str(cache), **({"image_size": 8} | options)))


def test_one_domain_layout_has_its_classes_and_no_domains(tmp_path):
    root = write_image_folder(tmp_path / "data", domains=(), per_class=5)
    index = scan_folder(root)
    assert index.classes == ("cat", "dog", "owl") and index.domains == ()
    assert len(index.train.paths) + len(index.test.paths) == 15
    assert set(index.train.domains.tolist()) == {0}


def test_domain_layout_names_domains_and_labels_each_file(tmp_path):
    root = write_image_folder(tmp_path / "data", per_class=5)
    index = scan_folder(root)
    assert index.domains == ("photo", "sketch") and index.classes == ("cat", "dog", "owl")
    for split in (index.train, index.test):
        for path, label, domain in zip(split.paths, split.labels, split.domains, strict=True):
            assert path.split(os.sep)[-3:-1] == [index.domains[domain], index.classes[label]]


@pytest.mark.parametrize("test_name", ["test", "val"])
def test_train_and_test_folders_are_the_given_split(tmp_path, test_name):
    write_image_folder(tmp_path / "data" / "train", per_class=4)
    write_image_folder(tmp_path / "data" / test_name, per_class=2, seed=1)
    index = scan_folder(tmp_path / "data", test_fraction=0.5)
    assert index.domains == ("photo", "sketch")
    assert (len(index.train.paths), len(index.test.paths)) == (24, 12)
    assert all(f"{os.sep}train{os.sep}" in p for p in index.train.paths)
    assert all(f"{os.sep}{test_name}{os.sep}" in p for p in index.test.paths)


def test_the_split_is_seeded_and_stratified_by_domain_and_class(tmp_path):
    root = write_image_folder(tmp_path / "data", per_class=10)
    first, again, other = scan_folder(root, 0.3, seed=1), scan_folder(root, 0.3, seed=1), scan_folder(root, 0.3, 2)
    assert first.test.paths == again.test.paths and first.train.paths == again.train.paths
    assert first.test.paths != other.test.paths
    assert not set(first.train.paths) & set(first.test.paths)
    groups = first.test.domains * 3 + first.test.labels
    assert np.bincount(groups, minlength=6).tolist() == [3] * 6  # round(10 x 0.3) of each class of each domain


def test_images_are_resized_center_cropped_rgb_uint8(tmp_path):
    root = tmp_path / "data"
    for name, color in (("red", (200, 10, 10)), ("gray", (90,))):
        (root / name).mkdir(parents=True)
        for i in range(3):
            image = torch.tensor(color, dtype=torch.uint8).view(-1, 1, 1).expand(-1, 20, 30 + i).clone()
            image[:, :, :5] = 0  # a black band on the left: cropped away (the shorter side is 20 -> 8, width 12+ -> 8)
            image[:, :, -5:] = 255
            write_png(image, str(root / name / f"{i}.png"))
    data = _load(root, tmp_path / "cache", stream="false", test_fraction=0.34)
    images = torch.cat([data.x_train, data.x_test])
    labels = torch.cat([data.y_train, data.y_test])
    assert images.shape == (6, 3, 8, 8) and images.dtype == torch.uint8
    center = images[:, :, :, 2:6]
    assert torch.equal(
        center[labels == 1], torch.tensor([200, 10, 10], dtype=torch.uint8).view(1, 3, 1, 1).expand(3, 3, 8, 4)
    )
    assert torch.equal(center[labels == 0], torch.full((3, 3, 8, 4), 90, dtype=torch.uint8))  # gray -> 3 equal channels


def test_the_cache_is_made_once_reused_and_rebuilt_when_files_change(tmp_path, monkeypatch):
    root = write_image_folder(tmp_path / "data", per_class=5)
    cache = tmp_path / "cache"
    first = _load(root, cache, stream="false")
    (cached,) = cache.iterdir()
    assert cached == cache_path(scan_folder(root), FolderOptions(8, cache_dir=str(cache), stream="false"), False)
    load_dataset.cache_clear()
    with monkeypatch.context() as patch:  # reuse: nothing is decoded again
        patch.setattr(folder_module, "decode_all", lambda *_: pytest.fail("decoded although cached"))
        again = _load(root, cache, stream="false")
    assert torch.equal(first.x_train, again.x_train) and torch.equal(first.x_test, again.x_test)
    # a changed file (content and mtime) invalidates the cache
    changed = scan_folder(root).train.paths[0]
    write_png(torch.zeros(3, 9, 12, dtype=torch.uint8), changed)
    os.utime(changed, ns=(1, 1))
    load_dataset.cache_clear()
    rebuilt = _load(root, cache, stream="false")
    assert torch.equal(rebuilt.x_train[0], torch.zeros(3, 8, 8, dtype=torch.uint8))
    assert torch.equal(rebuilt.x_train[1:], first.x_train[1:])
    # so does an added file; one cache file per folder and options, overwritten
    shutil.copy(changed, os.path.join(os.path.dirname(changed), "extra.png"))
    load_dataset.cache_clear()
    assert len(_load(root, cache, stream="false").y_train) == len(first.y_train) + 1
    assert list(cache.iterdir()) == [cached]


def test_a_read_only_data_directory_is_never_written(tmp_path):
    root = write_image_folder(tmp_path / "data", per_class=3)
    before = sorted(p for p in root.rglob("*"))
    for path in [root, *before]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    try:
        data = _load(root, tmp_path / "cache")
        assert len(data.y_train) + len(data.y_test) == 18
        assert sorted(root.rglob("*")) == before
        assert len(list((tmp_path / "cache").iterdir())) == 1
    finally:
        for path in [root, *before]:
            path.chmod(0o755 if path.is_dir() else 0o644)


def test_an_unwritable_cache_dir_says_to_set_cache_dir(tmp_path):
    root = write_image_folder(tmp_path / "data", per_class=3)
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(OSError, match="set cache-dir to a writable directory"):
        _load(root, tmp_path / "file" / "cache")


def test_bad_layouts_are_refused_with_what_to_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist; give an image folder"):
        scan_folder(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no folders"):
        scan_folder(tmp_path / "empty")
    write_image_folder(tmp_path / "mixed" / "photo", domains=(), classes=("cat", "dog"))
    write_image_folder(tmp_path / "mixed" / "sketch", domains=(), classes=("cat", "owl"))
    with pytest.raises(ValueError, match=r"domain 'sketch' has other classes .*lacks \['dog'\], adds \['owl'\]"):
        scan_folder(tmp_path / "mixed")
    write_image_folder(tmp_path / "split" / "train", classes=("cat", "dog"))
    write_image_folder(tmp_path / "split" / "test", classes=("cat",))
    with pytest.raises(ValueError, match="train/ has domains .* but test/ has"):
        scan_folder(tmp_path / "split")
    (tmp_path / "noimages" / "cat").mkdir(parents=True)
    (tmp_path / "noimages" / "dog").mkdir()
    (tmp_path / "noimages" / "dog" / "0.txt").write_text("text")
    with pytest.raises(ValueError, match="holds no class folders"):
        scan_folder(tmp_path / "noimages")
    with pytest.raises(ValueError, match="leaves no test image; raise folder-test-fraction"):
        scan_folder(write_image_folder(tmp_path / "small", per_class=2), test_fraction=0.1)


def test_streamed_images_are_the_in_memory_images(tmp_path):
    root = write_image_folder(tmp_path / "data", per_class=7)
    memory, streamed = _load(root, tmp_path / "cache", stream="false"), _load(root, tmp_path / "cache", stream="true")
    assert not memory.streamed and streamed.streamed and isinstance(streamed.x_test, FolderImages)
    assert torch.equal(streamed.y_train, memory.y_train) and torch.equal(streamed.d_test, memory.d_test)
    for mean, reference in zip(streamed.channel_stats, memory.channel_stats, strict=True):
        assert torch.equal(mean, reference)
    index = torch.tensor([5, 0, 17, 3, 9])
    batches = [torch.tensor([1, 4]), torch.tensor([0, 2, 3])]
    got = torch.cat(list(read_batches(streamed.normalized(streamed.x_train[index]), batches)))
    assert torch.equal(got, memory.normalized(memory.x_train[index])[torch.cat(batches)])


def test_training_evaluation_and_calibration_on_streamed_data_equal_the_in_memory_path(tmp_path, monkeypatch):
    monkeypatch.setattr(images_module, "STREAM_WORKERS", 0)  # decoded in this process: no worker start per epoch
    root = write_image_folder(tmp_path / "data", per_class=7)
    memory, streamed = _load(root, tmp_path / "cache", stream="false"), _load(root, tmp_path / "cache", stream="true")
    states = []
    for data in (memory, streamed):
        torch.manual_seed(0)
        model = build_model("mlp", data.num_classes, "hn", 3, 8)
        recipe = dict(batch_size=4, epochs=2, lr=0.05, momentum=0.9, weight_decay=5e-4)
        result = train(
            model, data.normalized(data.x_train), data.y_train, **recipe, generator=torch.Generator().manual_seed(3)
        )
        loss, accuracy = evaluate(model, data.normalized(data.x_test), data.y_test, batch_size=4)
        layer = calibration_order(model, torch.zeros(1, 3, 8, 8))[1]
        sums = layer_sums(model, data.normalized(data.x_train), layer, batch_size=5)
        states.append((model.state_dict(), result, loss, accuracy, sums))
    (state, result, loss, accuracy, sums), (state_s, result_s, loss_s, accuracy_s, sums_s) = states
    assert result == result_s and (loss, accuracy) == (loss_s, accuracy_s)
    for key in state:
        assert torch.equal(state[key], state_s[key]), key
    for key in sums:
        assert torch.equal(sums[key], sums_s[key]), key


def test_auto_streams_above_the_threshold(tmp_path, monkeypatch):
    root = write_image_folder(tmp_path / "data", per_class=3)
    assert not _load(root, tmp_path / "cache").streamed  # 18 x 3 x 8 x 8 bytes
    load_dataset.cache_clear()
    monkeypatch.setattr(folder_module, "STREAM_ABOVE_BYTES", 18 * 3 * 8 * 8 - 1)
    assert _load(root, tmp_path / "cache").streamed


def test_each_client_holds_one_domain_split_by_the_label_partitioner(tmp_path):
    data = _load(write_image_folder(tmp_path / "data", per_class=10), tmp_path / "cache")
    labels, domains = data.y_train.numpy(), data.d_train.numpy()
    parts = domain_partition_indices(labels, domains, data.domains, 4)
    assert [set(domains[p].tolist()) for p in parts] == [{0}, {0}, {1}, {1}]
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(labels)))
    skewed = domain_partition_indices(labels, domains, data.domains, 6, "pathological", classes_per_partition=1)
    assert [len(set(labels[p].tolist())) for p in skewed] == [1] * 6
    assert [set(domains[p].tolist()) for p in skewed] == [{0}] * 3 + [{1}] * 3


def test_the_domain_partitioner_says_how_many_clients_fit(tmp_path):
    data = _load(write_image_folder(tmp_path / "data", per_class=4), tmp_path / "cache")
    labels, domains = data.y_train.numpy(), data.d_train.numpy()
    with pytest.raises(
        ValueError,
        match=r"3 clients do not divide among the 2 domains \(photo, sketch\); use a multiple of 2 .* e\.g\. 2 or 4",
    ):
        domain_partition_indices(labels, domains, data.domains, 3)
    with pytest.raises(ValueError, match="needs data with domains"):
        domain_partition_indices(labels, None, (), 2)
    with pytest.raises(ValueError, match="domain 'photo': 100 partitions but only"):
        domain_partition_indices(labels, domains, data.domains, 200)


def _run_config(defaults, root, cache, **overrides):
    values = {"dataset": str(root), "cache-dir": str(cache), "image-size": 8, "model": "mlp", "batch-sizes": "4"}
    return RunConfig.from_mapping(defaults | values | {k.replace("_", "-"): v for k, v in overrides.items()})


def test_a_run_on_a_folder_gives_each_client_one_domain_and_checks_the_client_count(defaults, tmp_path):
    root = write_image_folder(tmp_path / "data", per_class=8)
    config = _run_config(defaults, root, tmp_path / "cache", partitioner="domain", stream_data="true")
    assert run_problems(config, num_partitions=4) == []
    (problem,) = run_problems(config, num_partitions=3)
    assert problem.startswith("partitioner = 'domain': 3 clients do not divide among the 2 domains")
    data = dataset(config)
    for client in range(4):
        part = client_data(config, client, 4)
        assert isinstance(part.images, FolderImages)
        assert {path.split(os.sep)[-3] for path in part.images.paths} == {data.domains[client // 2]}
    one_domain = _run_config(defaults, write_image_folder(tmp_path / "one", domains=()), tmp_path / "cache")
    (problem,) = run_problems(RunConfig.from_mapping(one_domain.to_dict() | {"partitioner": "domain"}), 2)
    assert "needs data with domains" in problem


def test_the_central_accuracy_is_reported_per_domain_and_combined(defaults, tmp_path):
    config = _run_config(defaults, write_image_folder(tmp_path / "data", per_class=8), tmp_path / "cache")
    config = RunConfig.from_mapping(config.to_dict() | {"out-dir": str(tmp_path / "run")})
    torch.manual_seed(0)
    model = new_model(config)
    loss, accuracy, by_domain = RoundLog(config, model)._evaluate()
    domains = task.test_data_by_domain(config)
    assert list(domains) == list(by_domain) == ["photo", "sketch"]
    assert sum(len(labels) for _, labels in domains.values()) == len(task.test_data(config)[1])
    for name, (images, labels) in domains.items():
        assert by_domain[name] == evaluate(model, images, labels)[1]
    assert (loss, accuracy) == pytest.approx(evaluate(model, *task.test_data(config)), rel=1e-6)


def test_folder_paths_are_valid_dataset_values_and_other_names_are_not(defaults):
    assert RunConfig.from_mapping(defaults | {"dataset": "./caltech256"}).dataset == "./caltech256"
    with pytest.raises(ConfigError, match="or the path of an image folder"):
        RunConfig.from_mapping(defaults | {"dataset": "caltech256"})
    with pytest.raises(ConfigError, match=r"stream-data = 'yes': allowed values: auto, true, false"):
        RunConfig.from_mapping(defaults | {"stream-data": "yes"})
