"""The Flower components of fed-lora: ``server_app`` and ``client_app`` (``deploy/flower/pyproject.toml``).

Flower starts a fresh ClientApp process for every message, so each handler
builds its device from the run config and its SuperNode's node config
(``FedLora.build_tx``, :func:`~common.modes.fed_lora.flower.config.device_options`):
the Dirichlet shard, the seeded base model, the profile. ``query`` answers the
device's HELLO parameters and fingerprint; ``train`` loads the plan's start
factors (checked by :func:`adapter_from_wire`), trains the planned module with
:meth:`FedLoraTx.train_module` (the daemons' training) and replies with the
trained factors and head. An exception becomes Flower's error reply, which the
ServerApp records as the device's ``failed`` outcome.
"""

from __future__ import annotations

import logging

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from common.modes.fed_lora.flower.config import device_options
from common.modes.fed_lora.flower.records import (
    hello_content,
    plan_from_content,
    update_content,
)
from common.modes.fed_lora.flower.server import run_federation, summary_line
from common.modes.fed_lora.messages import adapter_from_wire
from common.modes.fed_lora.mode import FedLora

log = logging.getLogger("semalign.flower")
client_app = ClientApp()
server_app = ServerApp()


def route_logs() -> None:
    """Send our ``semalign.*`` INFO logs through Flower's ``flwr`` log handlers (the run's log stream,
    ``flwr run --stream``, and the SuperNode's output)."""
    ours = logging.getLogger("semalign")
    ours.setLevel(logging.INFO)
    for handler in logging.getLogger("flwr").handlers:
        if handler not in ours.handlers:
            ours.addHandler(handler)


def build_device(context: Context):
    """This SuperNode's device (:class:`~common.modes.fed_lora.tx.FedLoraTx`) for the run."""
    import torch

    route_logs()
    opts = device_options(context.run_config, context.node_config)
    torch.set_num_threads(opts.get("threads", 1))
    return FedLora.build_tx(opts)


@client_app.query()
def hello(msg: Message, context: Context) -> Message:
    """The device's HELLO parameters (id, shard size, modules, profile, training FLOPs) and fingerprint."""
    tx = build_device(context)
    return Message(hello_content(tx.hello_params(), tx.fingerprint), reply_to=msg)


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the planned module from the global start factors on this device's shard."""
    tx = build_device(context)
    r, module, start = plan_from_content(msg.content)
    if module not in tx.shapes:
        raise ValueError(f"the base station planned module {module!r}, unknown to this device ({tx.modules})")
    arrays, loss, train_s = tx.train_module(r, module, adapter_from_wire(start, tx.shapes[module]))
    log.info("round %d: device %d trained %s in %.2f s, loss %.4g", r, tx.config.device_id, module, train_s, loss)
    return Message(update_content(module, len(tx.y), loss, train_s, arrays), reply_to=msg)


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    """The base station: join the SuperNodes' devices, play the rounds, write the records."""
    route_logs()
    log.info(summary_line(run_federation(grid, context.run_config)))
