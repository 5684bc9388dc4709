"""Client partitions (through flwr-datasets partitioners) and client batch sizes."""

from __future__ import annotations

import numpy as np
from datasets import Dataset
from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, Partitioner, PathologicalPartitioner

__all__ = ["partition_indices", "domain_partition_indices", "assign_batch_sizes"]


def partition_indices(
    labels: np.ndarray,
    num_partitions: int,
    partitioner: str = "iid",
    seed: int = 0,
    dirichlet_alpha: float = 0.5,
    classes_per_partition: int = 2,
) -> list[np.ndarray]:
    """Index sets of the training examples of each client.

    The partitioner runs on a label-only ``datasets.Dataset`` (no hub access). ``dirichlet`` draws
    label proportions per client from Dir(alpha) with at least 2 examples per client; ``pathological``
    gives each client ``classes_per_partition`` classes.

    Raises:
        ValueError: more partitions than examples, or a partitioner that cannot satisfy its constraints.
    """
    if num_partitions > len(labels):
        raise ValueError(f"{num_partitions} partitions but only {len(labels)} training examples; use fewer clients")
    dataset = Dataset.from_dict({"label": np.asarray(labels).tolist(), "index": list(range(len(labels)))})
    splitter: Partitioner
    if partitioner == "iid":
        splitter = IidPartitioner(num_partitions)
    elif partitioner == "dirichlet":
        splitter = DirichletPartitioner(
            num_partitions, partition_by="label", alpha=dirichlet_alpha, min_partition_size=2, seed=seed
        )
    elif partitioner == "pathological":
        splitter = PathologicalPartitioner(
            num_partitions,
            partition_by="label",
            num_classes_per_partition=classes_per_partition,
            class_assignment_mode="first-deterministic",
            seed=seed,
        )
    else:
        raise ValueError(f"Unknown partitioner {partitioner!r}: use iid, dirichlet or pathological (or domain)")
    splitter.dataset = dataset
    return [np.asarray(splitter.load_partition(i)["index"], dtype=np.int64) for i in range(num_partitions)]


def domain_partition_indices(
    labels: np.ndarray,
    domains: np.ndarray | None,
    domain_names: tuple[str, ...],
    num_partitions: int,
    within: str = "iid",
    **label_split: float,
) -> list[np.ndarray]:
    """Index sets of the training examples of each client when each client holds one domain.

    With D domains and K clients (K a multiple of D), clients d*K/D .. (d+1)*K/D - 1 hold domain d
    (in the order of ``domain_names``), its examples split among them by the label partitioner
    ``within`` (:func:`partition_indices` with ``label_split``: seed, dirichlet_alpha, classes_per_partition).

    Raises:
        ValueError: the data has no domains, the clients do not divide among the domains, or ``within`` fails.
    """
    if domains is None or not domain_names:
        raise ValueError(
            "each client holding one domain needs data with domains (an image folder root/<domain>/<class>/*.jpg); "
            "this dataset has one domain: use partitioner iid, dirichlet or pathological"
        )
    count = len(domain_names)
    if num_partitions % count:
        fits = sorted({count * max(1, num_partitions // count), count * (num_partitions // count + 1)})
        raise ValueError(
            f"{num_partitions} clients do not divide among the {count} domains "
            f"({', '.join(domain_names)}); use a multiple of {count} clients "
            f"(num-supernodes x clients-per-node), e.g. {' or '.join(map(str, fits))}"
        )
    parts = []
    for domain in range(count):
        members = np.flatnonzero(np.asarray(domains) == domain)
        try:
            split = partition_indices(np.asarray(labels)[members], num_partitions // count, within, **label_split)
        except ValueError as error:
            raise ValueError(f"domain {domain_names[domain]!r}: {error}") from None
        parts.extend(members[part] for part in split)
    return parts


def assign_batch_sizes(num_partitions: int, sizes: tuple[int, ...], mode: str = "cycle", seed: int = 0) -> list[int]:
    """Batch size of each client: ``cycle`` gives client i ``sizes[i % len(sizes)]``, ``random`` draws
    from ``sizes`` with ``seed``."""
    if mode == "cycle":
        return [sizes[i % len(sizes)] for i in range(num_partitions)]
    if mode == "random":
        return [int(s) for s in np.random.default_rng(seed).choice(sizes, size=num_partitions)]
    raise ValueError(f"Unknown batch-size assignment {mode!r}: use cycle or random")
