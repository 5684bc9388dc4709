"""The ServerApp's view of the nodes: partitions learned once, and the gist of client errors."""

from flwr.app import Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedhn.app.layout import ClientLayout
from fedhn.app.nodes import PartitionDirectory, error_summary


class PartitionGrid:
    """Nodes 11, 12, 13 holding partitions 2, 0, 1; counts the query messages it receives."""

    partitions = {11: 2, 12: 0, 13: 1}

    def __init__(self) -> None:
        self.queried: list[int] = []

    def get_node_ids(self):
        return list(self.partitions)

    def send_and_receive(self, messages, timeout=None):
        replies = []
        for message in messages:
            node = message.metadata.dst_node_id
            self.queried.append(node)
            metrics = MetricRecord({"partition-id": self.partitions[node], "num-partitions": len(self.partitions)})
            reply = Message(RecordDict({"metrics": metrics}), reply_to=message)
            replies.append(reply)
        return replies


def test_nodes_are_ordered_by_partition_and_asked_only_once():
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    try:
        directory, grid = PartitionDirectory(ClientLayout.blocks), PartitionGrid()
        assert directory.order(grid) == [12, 13, 11]
        assert directory.order(grid) == [12, 13, 11]
        assert sorted(grid.queried) == [11, 12, 13]
    finally:
        TaskIdentity.run_id = TaskIdentity.node_id = TaskIdentity.task_id = None


def test_error_summary_keeps_the_exception_message_of_a_ray_traceback():
    reason = "Traceback (most recent call last):\n  File x\nClientAppException: <Exception Message: boom in round 3'>"
    assert error_summary(reason) == "boom in round 3"
    assert error_summary("a\nlast line") == "last line"
    assert len(error_summary("x" * 1000)) == 300


def test_a_node_hosts_the_clients_the_layout_of_all_partitions_gives_its_partition():
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    try:
        layouts = []

        def layout(nodes: int) -> ClientLayout:
            layouts.append(nodes)
            return ClientLayout(((0, 4, 8), (1, 3, 5), (2, 6, 7)))

        clients = PartitionDirectory(layout).clients(PartitionGrid())
        assert clients == {12: [0, 4, 8], 13: [1, 3, 5], 11: [2, 6, 7]}
        assert layouts == [3]
        assert PartitionDirectory(lambda nodes: ClientLayout.blocks(nodes, 3)).clients(PartitionGrid()) == {
            12: [0, 1, 2],
            13: [3, 4, 5],
            11: [6, 7, 8],
        }
    finally:
        TaskIdentity.run_id = TaskIdentity.node_id = TaskIdentity.task_id = None
