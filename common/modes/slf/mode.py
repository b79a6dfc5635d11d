"""The slf mode: split learning with layer freezing over VQ-VAE DeepJSCC transceivers and a K-ary DMC.

*Semantics Alignment via Split Learning with Layer Freezing*
(``shared/seeds/semantics-alignment-split-learning-slf.txt``). The TX holds
TRX_i's encoder and its own data, the RX holds TRX_j's decoder and task head;
an alignment round downloads the RX's decoder, fine-tunes it at the TX with
the last ``l`` layers frozen and uploads the changed layers, which the RX
installs for that session. Files: ``transceiver.py`` (model), ``dmc.py``
(channel, index packing), ``training.py`` (eq. 4, pre-training, SLF
fine-tuning), ``configs.py`` (TRX1..3), ``artifacts.py``, ``pretrain.py``,
``recovery.py`` (Table I's cost model), ``messages.py`` (wire), ``tx.py`` /
``rx.py`` (the halves). User guide and byte layouts: ``docs/modes/slf.md``.
"""

from __future__ import annotations

from pathlib import Path

from common.modes.base import Mode, register_mode
from common.modes.slf.configs import CONFIGS, default_slf_artifacts
from common.modes.slf.limits import KEEP_ALIGNMENTS, MAX_SEMANTIC_IMAGES
from common.modes.slf.tx_config import SlfTxConfig
from common.options import Option

# torch-free on import: the option specs build the CLI; the halves (torch, the artifacts) load in
# build_rx/build_tx

RX_TRX, TX_TRX = "trx1", "trx2"  # the demo pair: TRX2's TX talking to TRX1's RX


def slf_artifacts(opts: dict, default_trx: str) -> Path:
    """The transceiver's artifacts directory.

    ``opts['trx']`` when given: a config name (``artifacts/slf-<name>``) or a
    directory; else ``opts['artifacts']`` when given; else
    ``artifacts/slf-<default_trx>``. (An RX serving pca-lora and slf at once
    gives pca-lora's directory in ``--artifacts`` and slf's in ``--trx``.)
    """
    trx = opts.get("trx")
    if trx is None and opts.get("artifacts"):
        return Path(opts["artifacts"])
    trx = str(trx or default_trx)
    if trx in CONFIGS:
        return default_slf_artifacts(trx)
    if "/" in trx or Path(trx).is_dir():
        return Path(trx)
    raise ValueError(f"--trx {trx!r}: neither a transceiver config ({', '.join(sorted(CONFIGS))}) nor a directory")


def _load(path: Path):
    """The transceiver, task head and config in ``path``; ValueError when its shape is not one the mode takes."""
    from common.modes.slf.artifacts import load_transceiver
    from common.modes.slf.messages import shape_problem

    trx, head, config, meta = load_transceiver(path)
    problem = shape_problem(trx.shape)
    if problem:
        raise ValueError(f"{path}: {problem}")
    return trx, head, config


@register_mode
class Slf(Mode):
    name = "slf"
    summary = "VQ-VAE transceivers over a K-ary channel, aligned by decoder download, frozen-layer fine-tuning, upload"
    rx_options = [
        Option("trx", str, f"transceiver whose decoder and task head the RX serves: a config name "
               f"({', '.join(sorted(CONFIGS))}; loads artifacts/slf-<name>) or an artifacts directory; when not "
               f"given, --artifacts if given, else {RX_TRX}", RX_TRX),
        Option("eps", float, "crossover probability of the K-ary channel applied to received codeword indices "
               "[default: the RX transceiver's training eps]"),
        Option("eps_from_bler", bool, "Use each round's announced BLER as the channel's crossover probability "
               "instead of a fixed --eps"),
        Option("keep_alignments", int, "aligned decoders kept across sessions for returning TXs (each under a "
               "random credential only its uploader receives; least recently used first out; in memory, "
               "about 171 kB each for the paper's sizes); 0 = keep none", KEEP_ALIGNMENTS),
    ]
    tx_options = [
        Option("trx", str, f"transceiver whose encoder and data the TX uses: a config name "
               f"({', '.join(sorted(CONFIGS))}; loads artifacts/slf-<name>) or an artifacts directory; when not "
               f"given, --artifacts if given, else {TX_TRX}", TX_TRX),
        Option("n_frozen", int, "l: decoder layers frozen during fine-tuning, counted from the last of "
               "(codebook, decoder.0, decoder.1, decoder.2); 0 re-initialises and retrains the decoder",
               SlfTxConfig.n_frozen),
        Option("n_images", int, f"test images per semantic round (at most {MAX_SEMANTIC_IMAGES})",
               SlfTxConfig.n_images),
        Option("finetune_epochs", float, "fine-tuning passes over the TX's training images per alignment",
               SlfTxConfig.finetune_epochs),
        Option("finetune_images", int, "training images used for fine-tuning, 0 = the TX's whole training split",
               SlfTxConfig.finetune_images),
        Option("finetune_budget_s", float, "wall-clock cap on fine-tuning per alignment, s (none by default)"),
        Option("finetune_lr", float, "Adam learning rate of fine-tuning [default: the paper's, 1e-3 for "
               "--n-frozen 0 (decoder re-initialised), else 1e-4]"),
        Option("align_first", int, "round of the first alignment (rounds before it are semantic rounds with "
               "the RX's original decoder)", SlfTxConfig.align_first),
        Option("align_every", int, "re-align every N rounds after the first alignment, 0 = align once",
               SlfTxConfig.align_every),
        Option("finetune_eps", float, "crossover probability of the channel to fine-tune for [default: the "
               "RX's, announced in its HELLO, or the round's BLER when the RX uses --eps-from-bler]"),
        Option("recovery_deadline_s", float, "recovery-time deadline, s: each alignment picks l itself, the "
               "smallest whose predicted download + fine-tuning + upload time (frames at the CHANNEL's rate, "
               "FLOPs at --compute-flops) meets it, and caps fine-tuning at what the transfers leave; "
               "overrides --n-frozen (none by default)"),
        Option("compute_flops", float, "this TX's fine-tuning speed for --recovery-deadline-s, FLOP/s "
               "[default: measured once by timing a few fine-tuning steps]"),
        Option("download_dtype", str, "how the RX's decoder travels in step 1: float32 or float16 (half the "
               "bytes; uploads stay float32)", SlfTxConfig.download_dtype),
        Option("alignment_cache", str, "directory where the TX keeps its fine-tuned transceiver and the RX's "
               "credential after an alignment; a later TX with the same directory skips steps 1-3 with that "
               "RX (none by default)"),
    ]

    @classmethod
    def build_rx(cls, opts: dict):
        from common.modes.slf.rx import SlfRx

        path = slf_artifacts(opts, RX_TRX)
        trx, head, config = _load(path)
        eps = None if opts.get("eps_from_bler") else (config.eps if opts.get("eps") is None else float(opts["eps"]))
        keep = KEEP_ALIGNMENTS if opts.get("keep_alignments") is None else int(opts["keep_alignments"])
        return SlfRx(trx, head, eps, int(opts.get("seed") or 0), config.name, keep)

    @classmethod
    def build_tx(cls, opts: dict):
        from common.data.datasets import load_dataset
        from common.modes.slf.tx import SlfTx

        path = slf_artifacts(opts, TX_TRX)
        trx, _, config = _load(path)
        if opts.get("dataset") and opts["dataset"] != config.dataset:
            raise ValueError(f"artifacts in {path} were made for {config.dataset!r}, not {opts['dataset']!r}")
        data = config.split(load_dataset(config.dataset, opts.get("data_dir")))
        given = {k: opts[o] for k, o in (("n_frozen", "n_frozen"), ("n_images", "n_images"),
                                         ("finetune_epochs", "finetune_epochs"),
                                         ("finetune_images", "finetune_images"),
                                         ("finetune_budget_s", "finetune_budget_s"), ("finetune_lr", "finetune_lr"),
                                         ("align_first", "align_first"),
                                         ("align_every", "align_every"), ("eps", "finetune_eps"), ("seed", "seed"),
                                         ("recovery_deadline_s", "recovery_deadline_s"),
                                         ("compute_flops", "compute_flops"), ("download_dtype", "download_dtype"),
                                         ("alignment_cache", "alignment_cache"))
                 if opts.get(o) is not None}
        given.setdefault("n_images", min(SlfTxConfig.n_images, len(data.y_test)))
        return SlfTx(trx, config, data, SlfTxConfig(**given), str(path))
