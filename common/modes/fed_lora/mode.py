"""The fed-lora mode: federated LoRA fine-tuning of a foundation model across heterogeneous devices.

*Federated LoRA across heterogeneous wireless devices* (arXiv 2509.19306;
``shared/seeds/federated-lora-heterogeneous-wireless.txt``, abstract only).
Each device is a TX daemon (``semalign tx --mode fed-lora --device-id k``),
the RX daemon is the base station: it plans each round (LoRA module or skip,
transmit power, bandwidth) by our online drift-plus-penalty method under
long-term energy budgets, receives the updates, drops those the emulated
uplink loses, aggregates heterogeneous ranks and serves the new global
adapter. Files: ``spec.py`` (what a federation shares), ``messages.py``
(wire), ``base_station.py`` + ``station_rounds.py`` (the base station; its settings ``station_config.py``),
``rx.py`` (its RX half), ``tx.py`` (device); the ML and radio core:
``foundation.py``, ``aggregation.py``, ``wireless.py``, ``optimizer.py``,
``text_data.py``. Guide: ``docs/modes/fed_lora.md``.

This module stays light: torch-free option specs, whose defaults are the
configuration dataclasses' (``FedSpec``, ``BaseStationConfig``,
``DeviceConfig``) or the task presets' (``spec.PRESETS``), each written once;
the halves, the data and (for the text tasks) transformers and peft load in
``build_rx``/``build_tx``.
"""

from __future__ import annotations

from common.modes.base import Mode, register_mode
from common.modes.fed_lora.device_config import DeviceConfig
from common.modes.fed_lora.station_config import BaseStationConfig
from common.modes.fed_lora.spec import PRESETS, FedSpec
from common.options import Option

_TASK_HELP = ("federated task: mlp (scikit-learn digits on a 64-64-32-10 MLP with frozen random hidden "
              "layers; no extra data), sst2 (GLUE SST-2 on all-MiniLM-L6-v2) or agnews (AG News on "
              "all-MiniLM-L6-v2, a stand-in for the paper's QNLI, which cannot be had here); text tasks "
              "read <data-dir>/<task>/*.tsv and need the text extra")
_SHARED = [
    Option("fed_task", str, _TASK_HELP, FedSpec.task),
    Option("fed_devices", int, "number of devices N in the federation; the Dirichlet split has N parts and "
           "device k trains on part k (all devices and the base station must agree)", FedSpec.n_devices),
    Option("fed_beta", float, "Dirichlet concentration of the label-skewed split (small: each class on few "
           "devices); all ends must agree", FedSpec.beta),
    Option("fed_pool_size", int, "training samples split among the devices, drawn with --seed; 0 = mlp: the "
           "whole training set (1437 digits), text: 150 per device; all ends must agree", FedSpec.pool_size),
]


PRICE_FLOOR = 0.05  # c of the place-holder backlog (calibrated on the mlp task, docs/modes/fed_lora.md)


def _preset_help(what: str, name: str) -> str:
    """``what`` with the task presets' defaults of field ``name`` (``spec.PRESETS``, one definition)."""
    mlp, text = (getattr(PRESETS[k], name) for k in ("mlp", "text"))
    return f"{what} [default: mlp {mlp:g}, text tasks {text:g}]"


@register_mode
class FedLora(Mode):
    name = "fed-lora"
    summary = ("federated LoRA: devices (TX) train switchable LoRA modules on non-IID shards, the base "
               "station (RX) plans module, power and bandwidth under energy budgets and aggregates")
    rx_one_owner = True  # one federation, one base station: with RX workers all its sessions go to worker 0
    rx_options = [
        *_SHARED,
        Option("data_dir", str, "directory with the text task's TSV files (<dir>/sst2/{train,test}.tsv, "
               "<dir>/agnews/{dev,test}.tsv)"),
        Option("fed_policy", str, "base-station policy: ours (online drift-plus-penalty: module switching, "
               "power and bandwidth under long-term energy budgets), fixed (every device trains the largest "
               "module at full power on an equal bandwidth share: fixed-rank FedAvg) or random (a random "
               "module per device, otherwise as fixed)", BaseStationConfig.policy),
        Option("fed_aggregation", str, "aggregation of heterogeneous-rank updates: stack-svd (exact "
               "stacking + SVD redistribution), zero-pad (HetLoRA), fedavg (factor averaging), or the robust "
               "coordinate-wise trimmed-mean / median of the updates' products", BaseStationConfig.aggregation),
        Option("fed_fixed_module", str, "module of the fixed baseline [default: the largest: all-r8 for mlp, "
               "all-r16 for text]"),
        Option("fed_deadline_s", float, _preset_help("emulated latency budget of a round per device "
               "(compute + upload time), s; an update over it is lost", "deadline_s")),
        Option("fed_bandwidth_hz", float, _preset_help("uplink bandwidth shared by the devices each round, "
               "Hz", "bandwidth_hz")),
        Option("fed_v", float, _preset_help("drift-plus-penalty weight V, J^2 (larger: accuracy over "
               "energy)", "v")),
        Option("fed_price_floor", float, "place-holder backlog of the online policy: each device's energy "
               "is priced at least c V w_k / Ebar_k in the decision, so an empty queue does not make energy "
               "free (0 = plain drift-plus-penalty)", PRICE_FLOOR),
        Option("fed_sample_scale", float, _preset_help("n_0 of the risk proxy 1 - exp(-c_m n_k / n_0), "
               "samples", "sample_scale")),
        Option("fed_capacity_exponent", float, _preset_help("module capacity c_m = (parameters / the "
               "largest module's) ** this, in (0, 1]", "capacity_exponent")),
        Option("fed_round_timeout_s", float, _preset_help("wall-clock time from planning after which a "
               "round forms without the devices still missing, s (checked on every message)", "round_timeout_s")),
        Option("fed_silent_margin", float, "a round forms without a device that has not reported "
               "silent-slack + this x the plan's largest compute + upload time after planning (at the latest "
               "--fed-round-timeout-s)", BaseStationConfig.silent_margin),
        Option("fed_silent_slack_s", float, _preset_help("wall-clock slack of that silent-device deadline (the "
               "devices' real training and transport), s", "silent_slack_s")),
        Option("fed_clip_factor", float, "clip every delivered update's norm (product space, from the global "
               "start) to this x the median of the round's update norms; 0 = no clipping", BaseStationConfig.clip_factor),
        Option("fed_join_timeout_s", float, "wall-clock time from the first HELLO after which round 0 is "
               "planned with the devices known by then, s", BaseStationConfig.join_timeout_s),
        Option("fed_eval_size", int, _preset_help("test samples the global model is evaluated on after "
               "each aggregation, a seeded subset; 0 = all (mlp: 360)", "eval_size")),
        Option("fed_k_factor", float, "Rician K of each device's block fading (0: Rayleigh)", BaseStationConfig.k_factor),
        Option("fed_out", str, "directory for the base station's per-round log (base_station.jsonl) and "
               "its saved global state (state.npz, state.json); none by default"),
        Option("fed_resume", bool, "start the base station from the state saved in --fed-out (a round "
               "that was open when it stopped is abandoned: its devices are told the next round)"),
    ]
    tx_options = [
        *_SHARED,
        Option("device_id", int, "this device's index k in 0..N-1 (its shard is part k of the split)",
               DeviceConfig.device_id),
        Option("fed_distance_m", float, "distance to the base station, m (path loss of the emulated "
               "uplink)", DeviceConfig.distance_m),
        Option("fed_flops_per_s", float, "emulated compute speed, FLOP/s (compute time = training FLOPs / "
               f"this; CPU clock = this / {DeviceConfig.flops_per_cycle:g} FLOP per cycle for the energy model)",
               DeviceConfig.flops_per_s),
        Option("fed_max_power_w", float, "transmit power cap, W", DeviceConfig.max_power_w),
        Option("fed_energy_budget_j", float, _preset_help("long-term average energy budget per round, J",
               "energy_budget_j")),
        Option("fed_epochs", float, _preset_help("local training epochs per round", "epochs")),
        Option("fed_batch", int, _preset_help("local training mini-batch", "batch_size")),
        Option("fed_lr", float, _preset_help("local Adam learning rate", "lr")),
    ]

    @classmethod
    def build_rx(cls, opts: dict):
        from common.modes.fed_lora.optimizer import OptimizerConfig
        from common.modes.fed_lora.base_station import BaseStation
        from common.modes.fed_lora.rx import FedLoraRx
        from common.modes.fed_lora.wireless import CellConfig

        spec, p, data, task, fp = _federation(opts)
        cell = CellConfig(total_bandwidth_hz=_get(opts, "fed_bandwidth_hz", p.bandwidth_hz))
        opt = OptimizerConfig(deadline_s=_get(opts, "fed_deadline_s", p.deadline_s), v=_get(opts, "fed_v", p.v),
                              sample_scale=_get(opts, "fed_sample_scale", p.sample_scale),
                              price_floor=_get(opts, "fed_price_floor", PRICE_FLOOR))
        config = BaseStationConfig(
            **_given(opts, policy="fed_policy", aggregation="fed_aggregation", fixed_module="fed_fixed_module",
                     silent_margin="fed_silent_margin", clip_factor="fed_clip_factor",
                     join_timeout_s="fed_join_timeout_s", k_factor="fed_k_factor"),
            round_timeout_s=_get(opts, "fed_round_timeout_s", p.round_timeout_s),
            silent_slack_s=_get(opts, "fed_silent_slack_s", p.silent_slack_s),
            eval_size=_get(opts, "fed_eval_size", p.eval_size), seed=spec.seed,
            out=str(opts["fed_out"]) if opts.get("fed_out") else None, resume=bool(opts.get("fed_resume")))
        station = BaseStation(spec, data, task, cell, opt, config,
                              capacity_exponent=_get(opts, "fed_capacity_exponent", p.capacity_exponent))
        return FedLoraRx(station, fp, allow_dir=opts.get("curve_allow"))

    @classmethod
    def build_tx(cls, opts: dict):
        from common.modes.fed_lora.tx import FedLoraTx

        spec, p, data, task, fp = _federation(opts)
        config = DeviceConfig(
            **_given(opts, device_id="device_id", distance_m="fed_distance_m", flops_per_s="fed_flops_per_s",
                     max_power_w="fed_max_power_w"),
            energy_budget_j=_get(opts, "fed_energy_budget_j", p.energy_budget_j),
            epochs=_get(opts, "fed_epochs", p.epochs), batch_size=_get(opts, "fed_batch", p.batch_size),
            lr=_get(opts, "fed_lr", p.lr))
        if config.device_id >= spec.n_devices:
            raise ValueError(f"--device-id {config.device_id} outside 0..{spec.n_devices - 1} "
                             f"(--fed-devices {spec.n_devices})")
        x, y = data.shard(config.device_id)
        return FedLoraTx(spec, task, x, y, config, fp)


def _federation(opts: dict):
    """What the base station and every device build alike: the federation spec, its task preset,
    the data (all shards), the model task and the session fingerprint."""
    from common.modes.fed_lora.spec import build_task, fingerprint, load_fed_data, preset

    spec = fed_spec(opts)
    data = load_fed_data(spec, opts.get("data_dir"))
    task = build_task(spec, data.n_classes)
    return spec, preset(spec.task), data, task, fingerprint(spec, task, data.n_classes)


def _given(opts: dict, **fields: str) -> dict:
    """``{field: opts[option]}`` for each ``field=option`` whose option was given (not None), so that the
    configuration dataclass's own default applies to the rest."""
    return {f: opts[o] for f, o in fields.items() if opts.get(o) is not None}


def _get(opts: dict, name: str, preset_default):
    """``opts[name]``, else ``preset_default`` (a task preset's value, ``spec.PRESETS``, or :data:`PRICE_FLOOR`)."""
    v = opts.get(name)
    return preset_default if v is None else v


def fed_spec(opts: dict) -> FedSpec:
    """The federation of ``fed_task, fed_devices, fed_beta, seed, fed_pool_size`` (None = default)."""
    return FedSpec(**_given(opts, task="fed_task", n_devices="fed_devices", beta="fed_beta", seed="seed",
                            pool_size="fed_pool_size"))
