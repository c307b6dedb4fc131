"""Run the experiment in one process, without SuperLink, SuperNodes or Ray.

``python -m berlin_v2x.local [key=value ...]`` takes run-config overrides
(TOML values) on top of pyproject.toml's defaults. Every message goes through
the real ClientApp (mods included) with one persistent Context per node, so
the codec path is the one ``flwr run`` uses; only the transport is missing.
Meant for development and tests.
"""

from __future__ import annotations

import copy
import logging
import sys
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from flwr.app import Context, Error, Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from .client_app import app as client_app
from .config import resolve
from .experiment import run_experiment

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


class InProcessGrid(Grid):
    """A Grid whose nodes are ClientApp calls in this process."""

    def __init__(self, run_config: dict[str, Any], num_nodes: int) -> None:
        self._contexts = {
            node_id: Context(
                run_id=1,
                node_id=node_id,
                state=RecordDict(),
                run_config=dict(run_config),
                node_config={"partition-id": node_id - 1, "num-partitions": num_nodes},
            )
            for node_id in range(1, num_nodes + 1)
        }

    def get_node_ids(self) -> Iterable[int]:
        return list(self._contexts)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ):
        replies = []
        for message in messages:
            # Deep copies stand in for the wire: nothing is shared by reference.
            sent = Message(
                metadata=copy.deepcopy(message.metadata),
                content=copy.deepcopy(message.content),
            )
            try:
                reply = client_app(sent, self._contexts[message.metadata.dst_node_id])
            except Exception as err:  # a SuperNode reports failures as errors
                logging.getLogger(__name__).exception("node failed")
                reply = Message(Error(code=2, reason=repr(err)), reply_to=sent)
            replies.append(reply)
        return replies

    # The remaining Grid methods are not needed by Strategy.start.
    def set_run(self, run_id: int) -> None:
        raise NotImplementedError

    @property
    def run(self):
        raise NotImplementedError

    def create_message(self, *args, **kwargs):
        raise NotImplementedError

    def push_messages(self, messages):
        raise NotImplementedError

    def pull_messages(self, message_ids):
        raise NotImplementedError


def default_run_config() -> dict[str, Any]:
    """The app's [tool.flwr.app.config] table."""
    with PYPROJECT.open("rb") as handle:
        return dict(tomllib.load(handle)["tool"]["flwr"]["app"]["config"])


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """key=value pairs with TOML values, as ``flwr run --run-config`` takes them."""
    return tomllib.loads("\n".join(items)) if items else {}


def run_local(overrides: dict[str, Any]) -> dict[str, Any]:
    """Run the experiment in-process and return its summary."""
    run_config = default_run_config()
    unknown = sorted(set(overrides) - set(run_config))
    if unknown:
        raise KeyError(f"unknown run-config key(s): {', '.join(unknown)}")
    run_config.update(overrides)
    cfg = resolve(run_config)
    # Flower messages need a task identity outside a Flower process.
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    return run_experiment(InProcessGrid(run_config, cfg.num_clients), cfg)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    summary = run_local(parse_overrides(sys.argv[1:]))
    print(
        {k: summary[k] for k in ("masked_accuracy", "top1_accuracy", "traffic_ratio")}
    )
