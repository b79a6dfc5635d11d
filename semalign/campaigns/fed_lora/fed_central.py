"""``semalign fed --reference``: the centralised-LoRA upper reference, trained in-process
(:func:`run_central`)."""

from __future__ import annotations

import logging
import time

import numpy as np

from common.modes.fed_lora.spec import preset
from semalign.campaigns.fed_lora.fed_config import FedCampaign, shared_options

log = logging.getLogger("semalign.fed")

CENTRAL_SEED_TAG = 1_000_003  # the reference's batch-order seed: default_rng([seed, round, tag])


def run_central(c: FedCampaign) -> dict:
    """The centralised-LoRA upper reference of ``c``, trained in-process (no daemons).

    The federation's model (same task, seed, so the same frozen base and initial head) trains the
    module fixed-rank FedAvg uses (``rx_options["fed_fixed_module"]``, else the largest) on the union
    of the devices' shards: per "round" ``epochs`` passes over the union with the devices' batch size
    and learning rate and a fresh Adam, like one device holding all the data. So it takes as many
    optimiser steps per round as all devices of a FedAvg round together (up to each shard's last short
    batch), and ``rounds`` rounds. After every round the model (base + the module's exact ``B A`` +
    head, :meth:`predict_merged`, as the base station evaluates) is scored on the base station's
    evaluation subset. Training runs on one torch thread, like every daemon of the campaign.

    Returns ``module``, ``n_train``, ``epochs``/``batch_size``/``lr`` per round, ``acc_before`` and
    ``acc_by_round`` (0..1), ``train_s`` (wall seconds of training, all rounds), ``steps`` (optimiser
    steps, all rounds), ``seed``.
    """
    import torch

    from common.learn.train import TrainConfig
    from common.modes.fed_lora.mode import fed_spec
    from common.modes.fed_lora.spec import build_task, eval_subset, load_fed_data, take

    spec = fed_spec(shared_options(c))
    p = preset(c.task)
    data = load_fed_data(spec, c.data_dir)
    task = build_task(spec, data.n_classes)
    module = c.rx_options.get("fed_fixed_module") or max(task.modules, key=task.upload_bits)
    union = np.sort(np.concatenate(data.parts))
    x, y = take(data.train_x, union), data.train_y[union]
    eval_size = c.rx_options.get("fed_eval_size")
    idx = eval_subset(len(data.test_y), p.eval_size if eval_size is None else eval_size, spec.seed)
    ex, ey = take(data.test_x, idx), data.test_y[idx]
    epochs = c.tx_options.get("fed_epochs") or p.epochs
    batch = c.tx_options.get("fed_batch") or p.batch_size
    lr = c.tx_options.get("fed_lr") or p.lr

    def accuracy() -> float:
        return float(np.mean(task.predict_merged(ex, task.get_adapter(module)) == ey))

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as every daemon of the campaign
    try:
        accs, train_s, steps, before = [], 0.0, 0, accuracy()
        for r in range(c.rounds):
            cfg = TrainConfig(epochs=epochs, batch_size=batch, lr=lr,
                              seed=int(np.random.default_rng([spec.seed, r, CENTRAL_SEED_TAG]).integers(2**31)))
            t0 = time.perf_counter()
            report = task.train_adapter(module, x, y, cfg)
            train_s += time.perf_counter() - t0
            steps += report.steps
            accs.append(accuracy())
            log.info("central reference: round %d, %s on %d samples, accuracy %.4f", r, module, len(y), accs[-1])
    finally:
        torch.set_num_threads(threads)
    return {"module": module, "n_train": int(len(y)), "epochs": float(epochs), "batch_size": int(batch),
            "lr": float(lr), "acc_before": before, "acc_by_round": accs, "train_s": train_s, "steps": steps,
            "seed": spec.seed, "eval_size": int(len(ey))}
