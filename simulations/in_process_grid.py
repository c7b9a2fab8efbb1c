"""The part of Flower's Grid that the ServerApp uses, over the sites' real ClientApps in this process.

No Flower engine and no network: each message goes to the destination site's ClientApp (its mods, site
policy, egress guard and ledger) as a direct call, and its reply comes back. For tests that must fail in
seconds when the two sides disagree, and for profiles that should hold only rmm's own work
(simulations/bench_hotspots.py). Never part of a deployment.
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity


class InProcessGrid:
    """``get_node_ids`` and ``send_and_receive`` over ``sites``: node id -> (ClientApp, its Context)."""

    def __init__(self, sites: dict[int, tuple[object, Context]]) -> None:
        self.sites = sites
        self.sent: list[str] = []  # the message type of every message, in order

    def get_node_ids(self):
        return list(self.sites)

    def send_and_receive(self, messages, *, timeout=None):
        replies = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            app, context = self.sites[node]
            TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, node
            self.sent.append(msg.metadata.message_type)
            request = Message(msg.content, dst_node_id=node, message_type=msg.metadata.message_type)
            reply = app(request, context)
            if reply.metadata.src_node_id != node:
                raise RuntimeError(f"node {node} answered as node {reply.metadata.src_node_id}")
            replies.append(reply)
        return replies


def site_grid(folders: list[Path], ledgers: Path, app_factory) -> InProcessGrid:
    """One node per site folder (node ids 1, 2, ...), each a ClientApp from ``app_factory()`` reading its
    folder on the CPU, with its ledger in ``ledgers``."""
    sites = {}
    for node, folder in enumerate(folders, start=1):
        config = {"data-dir": str(folder), "ledger": str(ledgers / f"{folder.name}.ledger.jsonl"), "device": "cpu"}
        sites[node] = (app_factory(), Context(run_id=1, node_id=node, node_config=config, state=RecordDict(),
                                              run_config={}))
    return InProcessGrid(sites)
