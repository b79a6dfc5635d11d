"""fed-lora under Flower's deployment engine (a SuperLink and SuperNodes), an optional extra.

The same base station (:class:`~common.modes.fed_lora.base_station.BaseStation`) and
device (:class:`~common.modes.fed_lora.tx.FedLoraTx`) as the ZeroMQ daemons,
driven by Flower's Message API instead of our wire protocol:

- ``config.py``: Flower's run config and node config -> the mode's options
  (the same names as ``semalign rx/tx --mode fed-lora``, kebab-case); no flwr import;
- ``records.py``: adapters <-> Flower ``ArrayRecord`` and the plan / update contents;
- ``server.py``: the ServerApp's loop (join the nodes, plan, send, receive, form);
- ``app.py``: the ``ServerApp`` and ``ClientApp`` objects ``deploy/flower/pyproject.toml`` names;
- ``local.py``: :func:`run_flower_local`, a SuperLink, N SuperNodes and ``flwr run`` on one machine.

Needs ``pip install 'semalign[flower]'`` (flwr 1.41.0). Guide: ``docs/modes/fed_lora_flower.md``.
"""
