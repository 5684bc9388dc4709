"""The per-client store: in the node's memory, or in files versioned by round that survive a restart
and give a resumed run the state of the round it resumes from."""

from pathlib import Path

import pytest
import torch
from flwr.app import RecordDict
from flwr.common.config import parse_config_args

from fedhn.app.client_store import ClientStore, client_state_dir, drop_versions_after, store_directory
from fedhn.app.config import RunConfig
from fedhn.app.node import LOCAL_NORMS, train_node
from fedhn.app.task import TrainingRound, new_model
from fedhn.launch.deploy import node_config

pytestmark = pytest.mark.usefixtures("task_identity")


def _versions(directory: Path, client: int) -> list[int]:
    return sorted(int(path.stem.split("-")[1]) for path in (directory / "x" / str(client)).glob("round-*.pt"))


def test_a_round_reads_the_latest_earlier_version_and_keeps_what_a_resume_may_need(tmp_path):
    for server_round in (1, 2, 3):
        ClientStore(RecordDict(), tmp_path, server_round).put(7, "x", {"t": torch.tensor([float(server_round)])})
    assert _versions(tmp_path, 7) == [2, 3]  # round 3 read round 2's: a run resumed from round 2 needs it
    assert ClientStore(RecordDict(), tmp_path, 4).get(7, "x")["t"].item() == 3.0
    assert ClientStore(RecordDict(), tmp_path, 3).get(7, "x")["t"].item() == 2.0  # round 3 again: not its own
    assert ClientStore(RecordDict(), tmp_path, 1).get(7, "x") is None
    assert ClientStore(RecordDict(), tmp_path, 4).get(8, "x") is None


def test_a_write_deletes_versions_of_later_rounds_left_by_a_killed_run(tmp_path):
    for server_round in (1, 5):
        ClientStore(RecordDict(), tmp_path, server_round).put(0, "x", {"t": torch.zeros(1)})
    ClientStore(RecordDict(), tmp_path, 2).put(0, "x", {"t": torch.ones(1)})
    assert _versions(tmp_path, 0) == [1, 2]
    assert not list(tmp_path.rglob("*.tmp"))  # written through a temporary file and a rename


def test_resume_drops_the_versions_after_the_checkpointed_round(tmp_path):
    for client, rounds in ((0, (1, 2, 3)), (1, (2,)), (2, (4,))):
        for server_round in rounds:
            ClientStore(RecordDict(), tmp_path, server_round).put(client, "x", {"t": torch.zeros(1)})
    drop_versions_after(tmp_path, 2)
    assert (_versions(tmp_path, 0), _versions(tmp_path, 1), _versions(tmp_path, 2)) == ([2], [2], [])


def test_without_a_directory_the_store_is_the_nodes_memory(tmp_path):
    state = RecordDict()
    ClientStore(state, None, 1).put(3, "x", {"t": torch.ones(2)})
    torch.testing.assert_close(ClientStore(state, None, 2).get(3, "x")["t"], torch.ones(2))
    assert ClientStore(RecordDict(), None, 2).get(3, "x") is None and not list(tmp_path.iterdir())


def test_the_nodes_state_dir_comes_before_the_runs_directory(tmp_path):
    assert store_directory({"state-dir": "/node"}, {"client-state-dir": "/run"}) == Path("/node")
    assert store_directory({"partition-id": 0}, {"client-state-dir": "/run"}) == Path("/run")
    assert store_directory({"partition-id": 0}, {"lr": 0.1}) is None
    assert client_state_dir("out") == Path("out").resolve() / "client-state"


def test_fedhn_deploy_gives_each_supernode_a_state_dir_of_its_own(tmp_path):
    parsed = parse_config_args([node_config(1, 2, tmp_path)])  # as flower-supernode --node-config reads it
    assert parsed == {"partition-id": 1, "num-partitions": 2, "state-dir": str(tmp_path / "client-state-1")}
    assert store_directory(parsed, {"client-state-dir": "/run"}) == tmp_path / "client-state-1"


@pytest.mark.parametrize("pack_clients", [False, True])
def test_fedbn_clients_of_a_restarted_node_train_as_if_it_had_never_stopped(defaults, tiny_npz, tmp_path, pack_clients):
    """Rounds 1-3 on a node that lives throughout (memory) and on one restarted before every round (files):
    the same updates, bit for bit; re-running round 3 after a resume from round 2 gives round 3 again."""
    values = {"dataset": str(tiny_npz), "model": "mlp", "norm": "bn", "batch-sizes": "2,4,8", "clients-per-node": 3}
    config = RunConfig.from_mapping(
        defaults | values | {"stats-aggregation": "local", "pack-clients": pack_clients, "weight-decay": 0.0}
    )
    torch.manual_seed(0)
    state = new_model(config).state_dict()
    memory, rounds = RecordDict(), {1: [0, 1, 2], 2: [0, 2], 3: [0, 1]}
    for server_round, clients in rounds.items():
        alive = train_node(
            TrainingRound(config, 6, server_round, 0.1), state, clients, ClientStore(memory, None, server_round)
        )
        store = ClientStore(RecordDict(), tmp_path, server_round)  # a new process: nothing in memory
        restarted = train_node(TrainingRound(config, 6, server_round, 0.1), state, clients, store)
        for client in clients:
            for key, value in alive.updates[client][0].items():
                assert torch.equal(restarted.updates[client][0][key], value), (server_round, client, key)
    kept = ClientStore(RecordDict(), tmp_path, 4).get(1, LOCAL_NORMS)
    assert kept and all(torch.equal(value, alive.updates[1][0][key]) for key, value in kept.items())
    assert not torch.equal(kept["features.2.running_mean"], state["features.2.running_mean"])

    drop_versions_after(tmp_path, 2)  # killed after round 3 trained, before its checkpoint
    again = train_node(TrainingRound(config, 6, 3, 0.1), state, rounds[3], ClientStore(RecordDict(), tmp_path, 3))
    for client in rounds[3]:
        for key, value in alive.updates[client][0].items():
            assert torch.equal(again.updates[client][0][key], value), (client, key)
