"""The run configuration: one table of keys, parsed once at the edge into a typed :class:`RunConfig`.

Defaults live in ``pyproject.toml`` (``[tool.flwr.app.config]``), where Flower reads them; every
key is validated here with errors that name the key, the bad value, what is allowed and the
nearest valid key.
"""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from fedhn.app.faults import FAULT_KINDS
from fedhn.data import DATASETS
from fedhn.models import model_names
from fedhn.norms import parse_spec
from strategies import STATS_AGGREGATIONS

__all__ = ["ConfigError", "RunConfig", "KEYS", "load_app_defaults", "resolve_run_config"]


class ConfigError(ValueError):
    """A run configuration that cannot run; the message lists every problem found."""

    @classmethod
    def listing(cls, problems: Iterable[str]) -> ConfigError:
        """The error for ``problems``, one per line under "Invalid run config:"."""
        return cls("Invalid run config:\n" + "\n".join(f"  - {p}" for p in problems))


def _choice(*allowed: str) -> Callable[[Any], str | None]:
    def check(value: str) -> str | None:
        if value in allowed:
            return None
        nearest = difflib.get_close_matches(str(value), allowed, n=1, cutoff=0.4)
        return f"allowed values: {', '.join(allowed)}" + (f" (nearest: {nearest[0]!r})" if nearest else "")

    return check


def _at_least(low: float) -> Callable[[Any], str | None]:
    return lambda value: None if value >= low else f"must be >= {low}"


def _between(low: float, high: float) -> Callable[[Any], str | None]:
    return lambda value: None if low <= value <= high else f"must be in [{low}, {high}]"


def _in_range(low: float, high: float) -> Callable[[Any], str | None]:
    return lambda value: None if low < value <= high else f"must be in ({low}, {high}]"


def _fault_kinds(value: str) -> str | None:
    kinds = [kind.strip() for kind in value.split(",") if kind.strip()]
    unknown = sorted(set(kinds) - set(FAULT_KINDS))
    return (
        f"unknown fault kinds {unknown}; use a comma-separated subset of {', '.join(FAULT_KINDS)}" if unknown else None
    )


def _dataset(value: str) -> str | None:
    if value in DATASETS or value.endswith(".npz"):
        return None
    nearest = difflib.get_close_matches(value, list(DATASETS), n=1, cutoff=0.4)
    return f"allowed values: {', '.join(DATASETS)} or a path to a local .npz (x_train, y_train, x_test, y_test)" + (
        f" (nearest: {nearest[0]!r})" if nearest else ""
    )


def _model(value: str) -> str | None:
    if value.lower() in model_names() or f"tv_{value.lower()}" in model_names():
        return None
    nearest = difflib.get_close_matches(value, model_names(), n=1, cutoff=0.5)
    return "allowed values: resnet8, resnet20, resnet18, mlp or a torchvision model as tv_<name>" + (
        f" (nearest: {nearest[0]!r})" if nearest else ""
    )


def _norm(value: str) -> str | None:
    try:
        parse_spec(value)
    except ValueError as error:
        return str(error)
    return None


def _batch_sizes(value: str) -> str | None:
    try:
        sizes = [int(part) for part in value.split(",")]
    except ValueError:
        return "write positive integers separated by commas, e.g. '2,4,8,16,32,64,128'"
    return None if sizes and min(sizes) >= 1 else "every batch size must be >= 1"


@dataclass(frozen=True)
class Key:
    """One run-config key: its type, its check and what it means."""

    kind: type
    help: str
    check: Callable[[Any], str | None] | None = None


KEYS: dict[str, Key] = {
    "dataset": Key(str, "digits | cifar10 | cifar100 | mnist | fashion-mnist | path to a .npz", _dataset),
    "data-dir": Key(str, "where torchvision datasets are stored (and downloaded where there is internet)"),
    "model": Key(str, "resnet8 | resnet20 | resnet18 | mlp | a torchvision model (tv_<name>)", _model),
    "norm": Key(str, "a norm spec: a preset (bn, gn_g8, hn, sn, ...) or mean=<sets>,std=<sets>", _norm),
    "num-server-rounds": Key(int, "number of federated rounds", _at_least(1)),
    "fraction-train": Key(float, "fraction of the clients sampled each round", _in_range(0.0, 1.0)),
    "min-train-nodes": Key(int, "fewest clients a round trains and aggregates", _at_least(1)),
    "local-epochs": Key(int, "epochs each client trains per round", _at_least(1)),
    "batch-sizes": Key(str, "batch sizes handed to the clients, e.g. '2,4,8,16,32,64,128'", _batch_sizes),
    "batch-size-assignment": Key(
        str, "cycle (client i gets size i mod len) | random (seeded)", _choice("cycle", "random")
    ),
    "lr": Key(float, "learning rate at batch size 128", _at_least(0.0)),
    "lr-scaling": Key(str, "linear (lr * b / 128 per client) | none", _choice("linear", "none")),
    "lr-schedule": Key(str, "constant | cosine (over rounds)", _choice("constant", "cosine")),
    "momentum": Key(float, "SGD momentum", _at_least(0.0)),
    "weight-decay": Key(float, "SGD weight decay", _at_least(0.0)),
    "augment": Key(str, "auto (crop+flip for CIFAR) | crop-flip | none", _choice("auto", "crop-flip", "none")),
    "partitioner": Key(str, "iid | dirichlet | pathological", _choice("iid", "dirichlet", "pathological")),
    "dirichlet-alpha": Key(float, "concentration of the Dirichlet partitioner", _at_least(1e-6)),
    "classes-per-partition": Key(int, "classes per client of the pathological partitioner", _at_least(1)),
    "stats-aggregation": Key(str, "pooled | mean | local (FedBN)", _choice(*STATS_AGGREGATIONS)),
    "eval-batch-size": Key(int, "batch size of the server's evaluation", _at_least(1)),
    "seed": Key(int, "seed of partitions, batch sizes, initialization, sampling and shuffling"),
    "out-dir": Key(str, "results directory ('' = outputs/<time>-<model>-<norm>)"),
    "resume": Key(bool, "continue the run in out-dir from its last checkpoint"),
    "init-model": Key(str, "a state_dict file (e.g. a model.pt) to start from ('' = random initialization)"),
    "round-timeout": Key(float, "seconds the server waits for the replies of a round", _at_least(1.0)),
    "fault-rate": Key(float, "probability that a client injects a fault in a round (tests, demos)", _between(0.0, 1.0)),
    "fault-kinds": Key(str, "faults to inject: a comma-separated subset of raise, nan, hang", _fault_kinds),
    "calibrate-stats": Key(bool, "replace the running statistics by the exact ones of the clients' data"),
    "calibrate-every": Key(int, "with calibrate-stats: every k rounds (0 = after the last round only)", _at_least(0)),
}


@dataclass(frozen=True)
class RunConfig:
    """A validated run configuration (field ``x_y`` is run-config key ``x-y``)."""

    dataset: str
    data_dir: str
    model: str
    norm: str
    num_server_rounds: int
    fraction_train: float
    min_train_nodes: int
    local_epochs: int
    batch_sizes: tuple[int, ...]
    batch_size_assignment: str
    lr: float
    lr_scaling: str
    lr_schedule: str
    momentum: float
    weight_decay: float
    augment: str
    partitioner: str
    dirichlet_alpha: float
    classes_per_partition: int
    stats_aggregation: str
    eval_batch_size: int
    seed: int
    out_dir: str
    resume: bool
    init_model: str
    round_timeout: float
    fault_rate: float
    fault_kinds: tuple[str, ...]
    calibrate_stats: bool
    calibrate_every: int

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]) -> RunConfig:
        """Validate a flat run config (e.g. Flower's ``context.run_config``).

        Raises:
            ConfigError: one message listing every unknown, missing, mistyped or invalid key.
        """
        problems = []
        for key in mapping:
            if key not in KEYS:
                nearest = difflib.get_close_matches(key, list(KEYS), n=1, cutoff=0.5)
                hint = f"; nearest valid key: {nearest[0]!r}" if nearest else f"; valid keys: {', '.join(KEYS)}"
                problems.append(f"unknown key {key!r}{hint}")
        values = {}
        for key, spec in KEYS.items():
            if key not in mapping:
                problems.append(f"missing key {key!r} ({spec.help})")
                continue
            value = mapping[key]
            if spec.kind is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, spec.kind) or (spec.kind is int and isinstance(value, bool)):
                problems.append(f"{key} = {value!r}: expected {spec.kind.__name__} ({spec.help})")
                continue
            problem = spec.check(value) if spec.check else None
            if problem:
                problems.append(f"{key} = {value!r}: {problem}")
            values[key] = value
        if values.get("resume") and not values.get("out-dir"):
            problems.append("resume = true needs out-dir: the directory of the run to continue")
        if problems:
            raise ConfigError.listing(problems)
        values["batch-sizes"] = tuple(int(part) for part in values["batch-sizes"].split(","))
        values["fault-kinds"] = tuple(kind.strip() for kind in values["fault-kinds"].split(",") if kind.strip())
        return cls(**{f.name: values[f.name.replace("_", "-")] for f in fields(cls)})

    def to_dict(self) -> dict[str, Any]:
        """The flat run config (kebab-case keys), as Flower and config.json hold it."""
        flat = {f.name.replace("_", "-"): getattr(self, f.name) for f in fields(self)}
        flat["batch-sizes"] = ",".join(map(str, self.batch_sizes))
        flat["fault-kinds"] = ",".join(self.fault_kinds)
        return flat


def load_app_defaults(app_dir: str | Path) -> dict[str, Any]:
    """The defaults of ``[tool.flwr.app.config]`` in the app's pyproject.toml."""
    with open(Path(app_dir) / "pyproject.toml", "rb") as file:
        return dict(tomllib.load(file)["tool"]["flwr"]["app"]["config"])


def resolve_run_config(app_dir: str | Path, *overrides: Mapping[str, Any]) -> RunConfig:
    """The app's defaults updated by each override in turn, validated."""
    merged = load_app_defaults(app_dir)
    for override in overrides:
        merged.update(override)
    return RunConfig.from_mapping(merged)
