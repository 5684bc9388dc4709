"""The run configuration: :class:`RunConfig`'s fields are the one table of run-config keys.

Each field declares its key once: the kebab-case name (from the field name), the type, the default,
the meaning (Markdown, as the README and ``fedhn config`` show it), the check and whether a resumed
run may change it. ``pyproject.toml`` (``[tool.flwr.app.config]``) repeats the defaults, where
Flower reads them (a test keeps the two equal). Every key is validated here with errors that name
the key, the bad value, what is allowed and the nearest valid key.
"""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import Field, dataclass, field, fields
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from fedhn.app.faults import FAULT_KINDS
from fedhn.data import DATASETS, is_folder_path
from fedhn.data.feature_shift import AUTO as AUTO_SHIFT
from fedhn.data.feature_shift import feature_shift_problem
from fedhn.models import CONVS, MODELS, model_names
from fedhn.norms import is_no_norm, norm_layer, parse_spec
from fedhn.training import LR_SCALINGS
from strategies import STATS_AGGREGATIONS

__all__ = ["ConfigError", "RunConfig", "Key", "KEYS", "load_app_defaults", "markdown_table", "resolve_run_config"]

Check = Callable[[Any], str | None]
"""A check of a parsed value: ``None`` if it is valid, else what is wrong with it."""


class ConfigError(ValueError):
    """A run configuration that cannot run; the message lists every problem found."""

    @classmethod
    def listing(cls, problems: Iterable[str]) -> ConfigError:
        """The error for ``problems``, one per line under "Invalid run config:"."""
        return cls("Invalid run config:\n" + "\n".join(f"  - {p}" for p in problems))


def _choice(*allowed: str) -> Check:
    def check(value: str) -> str | None:
        if value in allowed:
            return None
        nearest = difflib.get_close_matches(str(value), allowed, n=1, cutoff=0.4)
        return f"allowed values: {', '.join(allowed)}" + (f" (nearest: {nearest[0]!r})" if nearest else "")

    return check


def _at_least(low: float) -> Check:
    return lambda value: None if value >= low else f"must be >= {low}"


def _between(low: float, high: float) -> Check:
    return lambda value: None if low <= value <= high else f"must be in [{low}, {high}]"


def _in_range(low: float, high: float) -> Check:
    return lambda value: None if low < value <= high else f"must be in ({low}, {high}]"


def _fault_kinds(kinds: tuple[str, ...]) -> str | None:
    unknown = sorted(set(kinds) - set(FAULT_KINDS))
    return (
        f"unknown fault kinds {unknown}; use a comma-separated subset of {', '.join(FAULT_KINDS)}" if unknown else None
    )


def _dataset(value: str) -> str | None:
    if value in DATASETS or value.endswith(".npz") or is_folder_path(value):
        return None
    nearest = difflib.get_close_matches(value, list(DATASETS), n=1, cutoff=0.4)
    return (
        f"allowed values: {', '.join(DATASETS)}, a path to a local .npz (x_train, y_train, x_test, y_test) "
        "or the path of an image folder (with a '/', e.g. './caltech256')"
    ) + (f" (nearest: {nearest[0]!r})" if nearest else "")


def _open_fraction(value: float) -> str | None:
    return None if 0 < value < 1 else "must be in (0, 1)"


def _model(value: str) -> str | None:
    if value.lower() in model_names() or f"tv_{value.lower()}" in model_names():
        return None
    nearest = difflib.get_close_matches(value, model_names(), n=1, cutoff=0.5)
    return f"allowed values: {', '.join(MODELS)} or a torchvision model as tv_<name>" + (
        f" (nearest: {nearest[0]!r})" if nearest else ""
    )


def _norm(value: str) -> str | None:
    if is_no_norm(value):
        return None
    try:
        norm_layer(value)
    except ValueError as error:
        return str(error)
    return None


def _batch_sizes(sizes: tuple[int, ...]) -> str | None:
    if not sizes:
        return "give at least one batch size"
    return None if min(sizes) >= 1 else "every batch size must be >= 1"


@dataclass(frozen=True)
class Key:
    """One run-config key, as its :class:`RunConfig` field declares it.

    The type is ``str``, ``int``, ``float``, ``bool``, or a tuple of ``str``, ``int`` or ``float``
    (``tuple[int, ...]``) written in the run config as its items separated by commas.
    """

    name: str
    attribute: str
    type: Any
    default: Any
    help: str
    check: Check | None
    resumable: bool

    @classmethod
    def of(cls, declared: Field[Any], annotation: Any) -> Key:
        """The key of a :class:`RunConfig` field with its resolved type annotation."""
        meta = declared.metadata
        return cls(
            name=declared.name.replace("_", "-"),
            attribute=declared.name,
            type=annotation,
            default=declared.default,
            help=meta["help"],
            check=meta["check"],
            resumable=meta["resumable"],
        )

    def parse(self, value: Any) -> Any:
        """The field value of run-config value ``value``.

        Raises:
            ValueError: what is wrong with the value (wrong type or failed check), without the key.
        """
        if get_origin(self.type) is tuple:
            if not isinstance(value, str):
                raise ValueError(f"expected str ({self.help})")
            item = get_args(self.type)[0]
            try:
                parsed = tuple(item(part.strip()) for part in value.split(",") if part.strip())
            except ValueError:
                raise ValueError(
                    f"expected {item.__name__} values separated by commas, e.g. {self.unparse(self.default)!r}"
                ) from None
        elif self.type is float and isinstance(value, int) and not isinstance(value, bool):
            parsed = float(value)
        elif isinstance(value, self.type) and not (self.type is int and isinstance(value, bool)):
            parsed = value
        else:
            raise ValueError(f"expected {self.type.__name__} ({self.help})")
        problem = self.check(parsed) if self.check else None
        if problem:
            raise ValueError(problem)
        return parsed

    def unparse(self, value: Any) -> Any:
        """The run-config value of field value ``value`` (the inverse of :meth:`parse`)."""
        return ",".join(map(str, value)) if get_origin(self.type) is tuple else value


def _key(default: Any, help: str, check: Check | None = None, *, resumable: bool = False) -> Any:
    """Declare a :class:`RunConfig` field: its default, meaning, check and whether a resumed run may change it."""
    return field(default=default, metadata={"help": help, "check": check, "resumable": resumable})


@dataclass(frozen=True)
class RunConfig:
    """A validated run configuration (field ``x_y`` is run-config key ``x-y``); ``RunConfig()`` holds the defaults."""

    dataset: str = _key(
        "digits",
        "`digits` (scikit-learn's 8x8 digits, embedded), `cifar10`, `cifar100`, `mnist`, `fashion-mnist` "
        "(torchvision, in `data-dir`), a path to a `.npz` with uint8 `x_train` (N,H,W,C), `y_train`, `x_test`, "
        "`y_test`, or the path (with a `/`) of an image folder `root/<domain>/<class>/*.jpg` or "
        "`root/<class>/*.jpg`, optionally under `train/` and `test/` (see *Image folders*)",
        _dataset,
    )
    data_dir: str = _key(
        "data",
        "where torchvision datasets are stored (downloaded where there is internet; offline and absent, a clear "
        "error names the expected files)",
        resumable=True,
    )
    image_size: int = _key(
        32, "image folders: each image's shorter side is resized to this size, then center-cropped", _at_least(4)
    )
    folder_test_fraction: float = _key(
        0.2,
        "image folders without `train/` and `test/`: the fraction of each class of each domain held out "
        "(seeded by `seed`) as the central test set",
        _open_fraction,
    )
    cache_dir: str = _key(
        "",
        "where decoded image folders are cached as uint8 tensors (rebuilt when a file changes); empty: "
        "`$XDG_CACHE_HOME/fedhn/datasets` (default `~/.cache/fedhn/datasets`)",
        resumable=True,
    )
    stream_data: str = _key(
        "auto",
        "image folders: `true` decodes images from disk batch by batch through a DataLoader instead of holding "
        "them in memory; `false` holds them; `auto` streams above 4 GiB of decoded images",
        _choice("auto", "true", "false"),
    )
    model: str = _key(
        "resnet8", ", ".join(f"`{name}`" for name in MODELS) + " or a torchvision model (`tv_<name>`)", _model
    )
    norm: str = _key(
        "hn",
        "a norm spec: a preset (`bn`, `gn_g8`, `hn`, `sn`, `frn`, `brn`, ...), `mean=<sets>,std=<sets>` "
        '(`fedhn norms`), or `none` (no normalization: FedWon, with `conv = "ws"` and `agc-clip`)',
        _norm,
    )
    conv: str = _key(
        "plain",
        "`plain` convolutions, or `ws`: scaled weight-standardized ones with a learnable gain (FedWon, NF-ResNets)",
        _choice(*CONVS),
    )
    num_server_rounds: int = _key(10, "federated rounds", _at_least(1), resumable=True)
    fraction_train: float = _key(1.0, "fraction of the clients sampled each round", _in_range(0.0, 1.0))
    fraction_evaluate: float = _key(
        0.0,
        "fraction of the clients that evaluate the global model on their local test split each round, through "
        "Flower's evaluate messages (with their own norm layers under `stats-aggregation = local`); 0: central "
        "evaluation only",
        _between(0.0, 1.0),
    )
    local_test_fraction: float = _key(
        0.2,
        "share of each client's partition held out (seeded) as its local test split; applies only when "
        "`fraction-evaluate > 0` (otherwise clients train on their whole partition)",
        _in_range(0.0, 0.9),
    )
    min_train_nodes: int = _key(
        2,
        "fewest clients a round samples and fewest valid client updates it needs (counts clients, not nodes: "
        "the server waits for ceil(min-train-nodes / clients-per-node) connected nodes)",
        _at_least(1),
    )
    clients_per_node: int = _key(
        1,
        "logical clients each node (simulated or real SuperNode) hosts, trained packed in one process: "
        "N nodes hold N*M clients, placed by `client-layout` (see *Packed clients*)",
        _at_least(1),
    )
    client_layout: str = _key(
        "blocks",
        "which clients each node hosts when `clients-per-node > 1`: `blocks` (node i: clients i*M .. i*M+M-1) or "
        "`balanced` (M each, placed so that the nodes' estimated work is even: faster rounds under label skew "
        "and mixed batch sizes, the same run; see *Packed clients*)",
        _choice("blocks", "balanced"),
    )
    pack_clients: bool = _key(
        True,
        "train a node's sampled clients together as one packed cohort (`false`: one after the other; same "
        "results to float rounding)",
    )
    node_aggregation: bool = _key(
        False,
        "nodes send the exact partial aggregate of their clients instead of every client's update (automatic "
        "above 256 MiB of updates per node)",
    )
    local_epochs: int = _key(1, "epochs each client trains per round", _at_least(1))
    batch_sizes: tuple[int, ...] = _key((2, 4, 8, 16, 32, 64, 128), "client batch sizes, comma-separated", _batch_sizes)
    batch_size_assignment: str = _key(
        "cycle", "`cycle`: client i gets `sizes[i mod len]`; `random`: drawn with `seed`", _choice("cycle", "random")
    )
    lr: float = _key(0.1, "learning rate at batch size 128", _at_least(0.0))
    lr_scaling: str = _key(
        "linear",
        "`linear`: each client uses `lr * b / 128` (the paper's rule); `sqrt`: `lr * sqrt(b / 128)` (the "
        "square-root rule; norm-free nets' best rates fall slower than linearly with the batch); `none`: every "
        "client uses `lr`",
        _choice(*LR_SCALINGS),
    )
    lr_schedule: str = _key(
        "constant", "`constant`, or `cosine`: decays over the rounds", _choice("constant", "cosine")
    )
    momentum: float = _key(0.9, "SGD momentum", _at_least(0.0))
    weight_decay: float = _key(0.0005, "SGD weight decay", _at_least(0.0))
    agc_clip: float = _key(
        0.0,
        "adaptive gradient clipping (FedWon, NFNets): each unit's gradient norm at most `agc-clip` times its "
        "weight norm; the classifier is not clipped; 0 = off (NFNets used 0.01-0.16, larger for smaller batches)",
        _at_least(0.0),
    )
    augment: str = _key(
        "auto",
        "`crop-flip` (pad-4 random crop + flip, batched on tensors), `none`; `auto` = crop-flip for CIFAR-like data",
        _choice("auto", "crop-flip", "none"),
    )
    partitioner: str = _key(
        "iid",
        "`iid`, `dirichlet` (`dirichlet-alpha`), `pathological` (`classes-per-partition`), via flwr-datasets; "
        "`domain`: each client holds one domain of an image folder (split by `domain-partitioner`)",
        _choice("iid", "dirichlet", "pathological", "domain"),
    )
    dirichlet_alpha: float = _key(
        0.5, "concentration of the `dirichlet` partitioner (smaller: more skewed labels)", _at_least(1e-6)
    )
    classes_per_partition: int = _key(2, "classes per client of the `pathological` partitioner", _at_least(1))
    domain_partitioner: str = _key(
        "iid",
        "with `partitioner = domain`: how the clients of one domain split its examples (`iid`, `dirichlet`, "
        "`pathological`)",
        _choice("iid", "dirichlet", "pathological"),
    )
    feature_shift: str = _key(
        "none",
        f"feature-shift clients: `none`; `auto` (= `{','.join(AUTO_SHIFT)}`); or comma-separated transformation "
        "names: client c sees its images through transformation c mod len (see *Per-client evaluation and "
        "feature shift*)",
        feature_shift_problem,
    )
    stats_aggregation: str = _key(
        "pooled",
        "how running statistics are aggregated: `pooled` (the exact statistics of the union of the clients' data), "
        "`mean` (the mean of the variances), `local` (FedBN: they stay on the clients)",
        _choice(*STATS_AGGREGATIONS),
    )
    eval_batch_size: int = _key(500, "batch size of the server's evaluation", _at_least(1))
    seed: int = _key(0, "seed of partitions, batch sizes, initialization, sampling and shuffling")
    deterministic: bool = _key(
        False,
        "bitwise-reproducible GPU runs in every worker: `torch.use_deterministic_algorithms`, cuDNN deterministic, "
        "`CUBLAS_WORKSPACE_CONFIG` (slower; CPU runs are reproducible without it)",
    )
    out_dir: str = _key("", "results directory; empty: `outputs/<time>-<model>-<norm>`", resumable=True)
    resume: bool = _key(False, "continue the run in `out-dir` from its last checkpoint", resumable=True)
    init_model: str = _key("", "a state_dict file (e.g. a `model.pt`) to start from; empty: a random initialization")
    round_timeout: float = _key(
        3600.0,
        "seconds the server waits for a round's replies; late clients are dropped for that round",
        _at_least(1.0),
        resumable=True,
    )
    fault_rate: float = _key(
        0.0,
        "seeded fault injection for tests and demos: the probability that a client fails in a round",
        _between(0.0, 1.0),
        resumable=True,
    )
    fault_kinds: tuple[str, ...] = _key(
        FAULT_KINDS,
        f"how injected faults fail: a comma-separated subset of {', '.join(f'`{kind}`' for kind in FAULT_KINDS)}",
        _fault_kinds,
        resumable=True,
    )
    calibrate_stats: bool = _key(
        False,
        "federated precise statistics: after the last round, the server replaces the running statistics by the "
        "exact ones of the clients' data",
    )
    calibrate_every: int = _key(
        0, "with `calibrate-stats`: also every k rounds (0 = after the last round only)", _at_least(0)
    )
    brn_r_max: float = _key(
        3.0, "`brn`: the bound r_max of the std correction r once relaxed (1 = BatchNorm)", _at_least(1.0)
    )
    brn_d_max: float = _key(
        5.0, "`brn`: the bound d_max of the mean correction d once relaxed (0 = BatchNorm)", _at_least(0.0)
    )
    brn_warmup_rounds: int = _key(
        2, "`brn`: the first rounds train with r_max = 1, d_max = 0 (BatchNorm)", _at_least(0)
    )
    brn_relax_rounds: int = _key(
        4,
        "`brn`: after the warm-up, r_max and d_max rise linearly to `brn-r-max`, `brn-d-max` over this many rounds",
        _at_least(0),
    )
    freeze_stats_after: int = _key(
        0,
        "FixBN: after round T the clients normalize with the global running statistics in training too, and the "
        "statistics stay fixed (with `calibrate-stats`: calibrated once, after round T); 0 = never",
        _at_least(0),
    )

    tensorboard: bool = _key(
        False,
        "also write TensorBoard event files into `out-dir` (needs the `tensorboard` extra)",
        resumable=True,
    )

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]) -> RunConfig:
        """Validate a flat run config (e.g. Flower's ``context.run_config``).

        Raises:
            ConfigError: one message listing every unknown, missing, mistyped or invalid key.
        """
        problems = []
        for name in mapping:
            if name not in KEYS:
                nearest = difflib.get_close_matches(name, list(KEYS), n=1, cutoff=0.5)
                hint = f"; nearest valid key: {nearest[0]!r}" if nearest else f"; valid keys: {', '.join(KEYS)}"
                problems.append(f"unknown key {name!r}{hint}")
        values = {}
        for name, key in KEYS.items():
            if name not in mapping:
                problems.append(f"missing key {name!r} ({key.help})")
                continue
            try:
                values[key.attribute] = key.parse(mapping[name])
            except ValueError as problem:
                problems.append(f"{name} = {mapping[name]!r}: {problem}")
        if values.get("resume") and not values.get("out_dir"):
            problems.append("resume = true needs out-dir: the directory of the run to continue")
        if not problems:
            problems = _freeze_problems(values)
        if problems:
            raise ConfigError.listing(problems)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """The flat run config (kebab-case keys), as Flower and config.json hold it."""
        return {name: key.unparse(getattr(self, key.attribute)) for name, key in KEYS.items()}


def _freeze_problems(values: Mapping[str, Any]) -> list[str]:
    """What makes ``freeze-stats-after`` (FixBN) meaningless with the other keys."""
    after = values["freeze_stats_after"]
    if not after:
        return []
    norm = values["norm"]
    if is_no_norm(norm) or not parse_spec(norm).keeps_running_stats:
        return [
            f"freeze-stats-after = {after}: norm = {norm!r} keeps no running statistics to freeze; use a norm with "
            "a batch set (bn, en, hn, hn_g<G>, sn, mean=bn,std=bn+en, ...) or freeze-stats-after = 0"
        ]
    if values["stats_aggregation"] == "local":
        return [
            f"freeze-stats-after = {after}: with stats-aggregation = 'local' (FedBN) there are no global statistics "
            "to freeze at (each client keeps its own); use stats-aggregation = 'pooled' or 'mean', or do not freeze"
        ]
    if values["calibrate_stats"] and values["calibrate_every"]:
        return [
            f"freeze-stats-after = {after} with calibrate-every = {values['calibrate_every']}: frozen statistics "
            "are calibrated once, after round T, and must not change afterwards; set calibrate-every = 0"
        ]
    return []


_TYPES = get_type_hints(RunConfig)
KEYS: dict[str, Key] = {key.name: key for key in (Key.of(f, _TYPES[f.name]) for f in fields(RunConfig))}
"""Every run-config key by name, in :class:`RunConfig`'s field order."""


def _markdown_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return f"`{value}`" if value else '`""`'
    return str(value)


def markdown_table() -> str:
    """The keys as the README's Markdown table: one row per key, with its default and meaning."""
    rows = [f"| `{name}` | {_markdown_value(key.unparse(key.default))} | {key.help} |" for name, key in KEYS.items()]
    return "\n".join(["| key | default | meaning |", "|---|---|---|", *rows])


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
