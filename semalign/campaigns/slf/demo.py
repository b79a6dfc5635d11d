"""``semalign demo --mode slf``: the slf mode on loopback, RX and TX as separate OS processes.

1. Missing transceivers (a config name whose ``artifacts/slf-<name>`` holds
   none) are pre-trained first at :data:`DEMO_PRETRAIN`, the reduced size
   measured in ``docs/modes/slf.md`` (a few minutes per transceiver on one
   core here), with a progress bar.
2. The RX (``semalign rx --mode slf --trx RX_TRX``) and the TX (``semalign tx
   --mode slf --trx TX_TRX``) start through :mod:`semalign.campaigns.processes`, over
   CURVE with throwaway keys in ``OUT/keys``, on the loopback emulator: round
   0 is a semantic round with the RX's original decoder (misaligned), round 1
   the alignment (download, fine-tuning with ``l`` frozen, upload), the rest
   semantic rounds with the aligned decoder.
3. A returning TX (a second TX process, same key, same ``alignment_cache``)
   runs 3 rounds: its alignment round resumes the kept alignment instead of
   steps 1-3.

Prints a table per round, the recovery-time breakdown (emulated air time,
measured wall time, Table I's model) and accuracy / MSE before vs after, and
writes ``OUT/results.json``: the TX's rounds and config, both processes' pids
(and the returning TX's), the summary. The daemons' own files stay in
``OUT/tx``, ``OUT/tx-returning`` and ``OUT/*.log``.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import tomllib
from rich.console import Console
from rich.table import Table

from common.files import atomic_write_json
from common.modes.slf.artifacts import SlfArtifactError, read_slf_meta
from common.modes.slf.configs import CONFIGS
from common.results.log import load_results
from semalign.campaigns.processes import free_port, launch, stop_process, throwaway_keys

log = logging.getLogger("semalign.demo")

# pre-training of a missing transceiver: each pool cut to 12,500 images (10,000 train / 2,500 test), 10
# transceiver + 10 head epochs, the paper's batch 128 and Adam 1e-3 (3-5 min per transceiver on one core at
# load 2-6 here with the (32, 64) / 128 head; 45 s with the former (8, 16) / 64 head at load 1-2)
DEMO_PRETRAIN = {"max_pool": 12500, "epochs": 10.0, "head_epochs": 10.0}
DEMO_FINETUNE_EPOCHS = 2.0  # passes over the TX's 10,000 training images per alignment (about 10 s here)
RETURNING_ROUNDS = 3  # the returning TX: semantic (original decoder), alignment (resumed), semantic
DAEMON_ENV = {"OMP_NUM_THREADS": "1"}


def _f(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def ensure_transceiver(trx: str, data_dir: str | None, progress: bool = True) -> Path:
    """The artifacts directory of ``trx`` (a config name or a directory), pre-training a missing named one."""
    if trx not in CONFIGS:
        path = Path(trx)
        try:
            read_slf_meta(path)
        except SlfArtifactError as e:
            raise ValueError(f"{trx!r}: neither a transceiver config ({', '.join(sorted(CONFIGS))}) nor a "
                             f"directory of slf artifacts ({e})") from e
        return path
    from common.modes.slf.configs import default_slf_artifacts

    path = default_slf_artifacts(trx)
    try:
        read_slf_meta(path)
        return path
    except SlfArtifactError:
        pass
    from common.data.datasets import load_dataset
    from common.modes.slf.configs import get_config
    from common.modes.slf.pretrain import (
        pretrain_and_save,
        progress_steps,
        with_overrides,
    )
    from semalign.progress import progress_bar

    config = with_overrides(get_config(trx), DEMO_PRETRAIN)
    log.info("no artifacts in %s: pre-training %s first (%d images, %g + %g epochs; a few minutes)", path, trx,
             config.max_pool, config.epochs, config.head_epochs)
    data = load_dataset(config.dataset, data_dir)
    with progress_bar(f"pretrain slf {trx}", progress_steps(config), progress) as advance:
        meta = pretrain_and_save(config, data, path, advance)
    m = meta.metrics
    log.info("%s: own link accuracy %.4f, MSE %.4f; %.1f s; saved %s", trx, m["link_accuracy"], m["link_mse"],
             m["seconds"], path)
    return path


def _toml_table(config: Path | None, name: str) -> dict:
    if config is None:
        return {}
    try:
        return tomllib.loads(Path(config).read_text()).get(name, {})
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ValueError(f"--config {config}: {e}") from e


def _run_tx(options: dict, log_path: Path, timeout_s: float) -> subprocess.Popen:
    proc = launch("tx", options, log_path, env=DAEMON_ENV)
    try:
        status = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        stop_process(proc)
        raise RuntimeError(f"the TX did not finish within {timeout_s:.0f} s; see {log_path}")
    if status != 0:
        raise RuntimeError(f"the TX exited with status {status}; see {log_path}")
    return proc


def run_slf_demo(rounds: int, out: Path, tx_trx: str = "trx2", rx_trx: str = "trx1", n_frozen: int = 2,
                 trace: str = "demo", data_dir: str | None = None, config: Path | None = None, *,
                 returning: bool = True, tx_options: dict | None = None, rx_options: dict | None = None,
                 timeout_s: float = 1800.0, progress: bool = True, show: bool = True) -> dict:
    """Run the demo (module docstring); returns what it writes to ``out/results.json``.

    ``tx_options``/``rx_options``: further daemon options (name -> value),
    e.g. tiny settings in tests. ``returning``: also run the returning TX.
    """
    if rounds < 3:
        raise ValueError(f"--rounds {rounds}: the slf demo needs at least 3 (before, alignment, after)")
    if not 0 <= n_frozen <= 4:
        raise ValueError(f"--n-frozen {n_frozen}: l must be in 0..4")
    out = Path(out)
    tx_path = ensure_transceiver(tx_trx, data_dir, progress)
    rx_path = ensure_transceiver(rx_trx, data_dir, progress)
    out.mkdir(parents=True, exist_ok=True)
    address = f"tcp://127.0.0.1:{free_port()}"
    rx_curve, tx_curve = throwaway_keys(out / "keys")
    tx_base = {"mode": "slf", "connect": address, "trx": tx_path, "data_dir": data_dir, "config": config,
               "n_frozen": n_frozen, "alignment_cache": out / "tx-cache", **tx_curve}
    if "finetune_epochs" not in _toml_table(config, "tx"):
        tx_base["finetune_epochs"] = DEMO_FINETUNE_EPOCHS
    tx_base.update(tx_options or {})
    cache = out / "tx-cache"  # a demo starts without kept alignments: the first TX must align
    for p in cache.glob("*") if cache.is_dir() else ():
        p.unlink()
    rx = launch("rx", {"mode": "slf", "bind": address, "link": "loopback", "trace": trace, "trace_rounds": rounds,
                       "trx": rx_path, "config": config, **rx_curve, **(rx_options or {})}, out / "rx.log",
                env=DAEMON_ENV)
    log.info("RX pid %d on %s (CURVE, throwaway keys in %s); TX starting; logs in %s", rx.pid, address,
             out / "keys", out)
    try:
        tx = _run_tx({**tx_base, "rounds": rounds, "out": out / "tx"}, out / "tx.log", timeout_s)
        back = None
        if returning:
            back = _run_tx({**tx_base, "rounds": RETURNING_ROUNDS, "out": out / "tx-returning"},
                           out / "tx-returning.log", timeout_s)
    finally:
        rx_status = stop_process(rx)
    if rx_status != 0:
        raise RuntimeError(f"the RX exited with status {rx_status}; see {out / 'rx.log'}")
    first = load_results(out / "tx")
    result = {"mode": "slf", "config": first["config"], "processes": {"rx_pid": rx.pid, "tx_pid": tx.pid},
              "rx_pid": rx.pid, "tx_pid": tx.pid, "address": address, "trace": trace,
              "rx_trx": str(rx_path), "tx_trx": str(tx_path), "rounds": first["rounds"],
              "summary": summarise(first["rounds"])}
    if back is not None:
        again = load_results(out / "tx-returning")
        result["processes"]["returning_tx_pid"] = back.pid
        result["returning"] = {"tx_pid": back.pid, "rounds": again["rounds"],
                               "summary": summarise_returning(again["rounds"], result["summary"])}
    _check_pids(result)
    path = out / "results.json"
    atomic_write_json(path, result, indent=2)
    if show:
        print_demo(result)
        print(f"results: {path}", file=sys.stdout)
    return result


def _check_pids(result: dict) -> None:
    """Every round names the RX's and its TX's process id: two (three) real processes."""
    rx, tx = result["rx_pid"], result["tx_pid"]
    rows = [(r, tx) for r in result["rounds"]]
    if "returning" in result:
        rows += [(r, result["returning"]["tx_pid"]) for r in result["returning"]["rounds"]]
    for row, pid in rows:
        if row["status"] == "ok" and (row.get("rx_pid") != rx or row.get("tx_pid") != pid):
            raise RuntimeError(f"round {row['round']}: pids rx {row.get('rx_pid')} / tx {row.get('tx_pid')}, "
                               f"expected {rx} / {pid}")


def summarise(rows: list[dict]) -> dict:
    """Accuracy and MSE before vs after the (first) alignment, and its recovery breakdown."""
    after = next((r for r in rows if r.get("recovery")), None)
    align = next((r for r in rows if r.get("kind") == "align" and r["status"] == "ok"), None)
    failed = [f"round {r['round']}: {r.get('error')}" for r in rows if r["status"] != "ok"]
    out = {"aligned": after is not None, "failed_rounds": failed}
    if after is None or align is None:
        return out
    rec = after["recovery"]
    out.update(acc_before=rec["acc_before"], acc_after=rec["acc_after"], mse_before=rec["mse_before"],
               mse_after=rec["mse_after"], align_round=rec["align_round"], after_round=rec["after_round"],
               n_frozen=align["n_frozen"], eps=align["eps"], rate_bps=align["rate_bps"])
    if rec["mse_before"] and rec["mse_after"] is not None:
        out["mse_reduction"] = 1 - rec["mse_after"] / rec["mse_before"]
    if align.get("resumed"):
        out["resumed"] = True
        return out
    rate = align["rate_bps"]
    out["recovery"] = {
        "emulated": {"download_s": align["download_airtime_s"], "finetune_s": align["finetune_s"],
                     "upload_s": align["upload_airtime_s"], "total_s": align["recovery_s"]},
        "measured": {"download_s": align["download_transfer_s"] + align["download_rx_s"],
                     "finetune_s": align["finetune_s"], "upload_s": align["upload_transfer_s"],
                     "total_s": align["recovery_wall_s"]},
        "table1": align["table1"],
    }
    out["airtime_floor"] = {
        "download_frame_bytes": align["download_frame_bytes"], "download_tensor_bytes": align["download_tensor_bytes"],
        "download_airtime_s": align["download_airtime_s"],
        "download_floor_s": align["download_tensor_bytes"] * 8 / rate,
        "upload_frame_bytes": align["upload_frame_bytes"], "upload_tensor_bytes": align["upload_tensor_bytes"],
        "upload_airtime_s": align["upload_airtime_s"], "upload_floor_s": align["upload_tensor_bytes"] * 8 / rate,
        "upload_transmissions": align.get("upload_transmissions"),
    }
    epochs = align["finetune_epochs"] * align["finetune_steps"] / max(align["finetune_steps_planned"], 1)
    out["finetune_s_per_epoch"] = align["finetune_s"] / epochs if epochs else None
    return out


def summarise_returning(rows: list[dict], first: dict) -> dict:
    """The returning TX: did its alignment round resume, how long it took against the first full alignment."""
    align = next((r for r in rows if r.get("kind") == "align"), None)
    out = {"resumed": bool(align and align.get("resumed")), "failed_rounds":
           [f"round {r['round']}: {r.get('error')}" for r in rows if r["status"] != "ok"]}
    if align is None or align["status"] != "ok":
        return out
    after = next((r for r in rows if r.get("recovery")), None)
    out.update(recovery_wall_s=align["recovery_wall_s"], resume_frame_bytes=align.get("resume_frame_bytes"),
               n_frozen=align["n_frozen"])
    if after is not None:
        out.update(acc_before=after["recovery"]["acc_before"], acc_after=after["recovery"]["acc_after"],
                   mse_before=after["recovery"]["mse_before"], mse_after=after["recovery"]["mse_after"])
    full = (first.get("recovery") or {}).get("measured", {}).get("total_s")
    if full and align.get("resumed"):
        out["first_recovery_wall_s"] = full
        out["speedup"] = full / max(align["recovery_wall_s"], 1e-9)
    return out


# ---------------------------------------------------------------- printing


def rounds_table(rows: list[dict], title: str) -> Table:
    t = Table(title=title, header_style="bold")
    for name in ("round", "kind", "channel", "rate Mb/s", "decoder", "accuracy", "MSE", "bytes", "download s",
                 "fine-tune s", "upload s", "recovery s", "Table I s", "status"):
        t.add_column(name, justify="left" if name in ("kind", "channel", "decoder", "bytes", "status") else "right")
    for r in rows:
        rate = r.get("rate_bps")
        status = "ok" if r["status"] == "ok" else f"{r['status']}: {r.get('error')}"
        kind = r.get("kind") or "-"
        dl = ul = ft = rec = t1 = "-"
        if kind == "align" and r["status"] == "ok":
            if r.get("resumed"):
                kind, nbytes, rec = "align (resumed)", f"resume {r['resume_frame_bytes']} B", \
                    f"{r['recovery_wall_s'] * 1e3:.1f} ms wall"
                decoder = "kept"
            else:
                nbytes = f"dl {r['download_frame_bytes']} / ul {r['upload_frame_bytes']}"
                dl = f"{r['download_airtime_s']:.4f} air / {r['download_transfer_s'] + r['download_rx_s']:.4f}"
                ul = f"{r['upload_airtime_s']:.4f} air / {r['upload_transfer_s']:.4f}"
                ft, rec, t1 = f"{r['finetune_s']:.2f}", f"{r['recovery_s']:.2f}", f"{r['table1']['total_s']:.3f}"
                decoder = f"l={r['n_frozen']}"
            accuracy = mse = None
        else:
            nbytes = f"{r['semantic_bytes']} idx" if r.get("semantic_bytes") is not None else "-"
            decoder, accuracy, mse = r.get("decoder") or "-", r.get("accuracy"), r.get("mse")
        t.add_row(str(r["round"]), kind, f"{r.get('modulation') or '-'} MCS{_f(r.get('mcs'), 'd')}",
                  _f(rate / 1e6 if rate else None, ".1f"), decoder, _f(accuracy, ".3f"), _f(mse, ".4f"), nbytes,
                  dl, ft, ul, rec, t1, status)
    return t


def recovery_table(summary: dict) -> Table:
    rec = summary["recovery"]
    t = Table(title=f"recovery time of the alignment (round {summary['align_round']}, l = {summary['n_frozen']}), s",
              header_style="bold")
    for name in ("", "download", "fine-tune", "upload", "total"):
        t.add_column(name, justify="left" if not name else "right")
    rate = summary["rate_bps"] / 1e6
    for label, part in ((f"emulated link: air time at {rate:.1f} Mb/s + fine-tuning on this CPU", rec["emulated"]),
                        ("measured wall time on loopback", rec["measured"]),
                        ("Table I model: 2 Mb/s links, 30 TFLOP/s", rec["table1"])):
        t.add_row(label, f"{part['download_s']:.4f}", f"{part['finetune_s']:.4f}", f"{part['upload_s']:.4f}",
                  f"{part['total_s']:.4f}")
    return t


def print_demo(result: dict) -> None:
    console = Console(width=220)
    s = result["summary"]
    console.print(rounds_table(result["rounds"], f"semalign demo --mode slf: TX {Path(result['tx_trx']).name} -> "
                                                  f"RX {Path(result['rx_trx']).name}, trace {result['trace']} "
                                                  f"(download/upload s: emulated air time / measured)"))
    if s.get("recovery"):
        console.print(recovery_table(s))
        a = s["airtime_floor"]
        console.print(f"air time vs floor (tensor bytes x 8 / rate): download {a['download_airtime_s'] * 1e3:.3f} ms "
                      f"for {a['download_frame_bytes']} B (floor {a['download_floor_s'] * 1e3:.3f} ms, "
                      f"{a['download_tensor_bytes']} B of tensors); upload {a['upload_airtime_s'] * 1e3:.3f} ms "
                      f"for {a['upload_frame_bytes']} B (floor {a['upload_floor_s'] * 1e3:.3f} ms, "
                      f"{a['upload_tensor_bytes']} B), {a['upload_transmissions']} transmission(s)")
        if s.get("finetune_s_per_epoch"):
            console.print(f"fine-tuning: {s['finetune_s_per_epoch']:.2f} s per epoch on this CPU")
    if s.get("aligned"):
        console.print(f"[bold]before -> after alignment[/bold]: accuracy {s['acc_before']:.3f} -> "
                      f"{s['acc_after']:.3f}, MSE {s['mse_before']:.4f} -> {s['mse_after']:.4f} "
                      f"(MSE reduction {s.get('mse_reduction', 0) * 100:.1f} %)")
    else:
        console.print(f"[bold red]no alignment completed[/bold red]: {'; '.join(s['failed_rounds']) or '-'}")
    back = result.get("returning")
    if back:
        console.print(rounds_table(back["rounds"], "returning TX (same key, same alignment cache): a new process "
                                                   "and session"))
        b = back["summary"]
        if b.get("resumed"):
            line = (f"returning TX: resumed the kept alignment (l = {b['n_frozen']}) in "
                    f"{b['recovery_wall_s'] * 1e3:.1f} ms with a {b['resume_frame_bytes']} B request")
            if b.get("speedup"):
                line += f", against {b['first_recovery_wall_s']:.2f} s for the first alignment"
            if b.get("acc_after") is not None:
                line += f"; accuracy {b['acc_before']:.3f} -> {b['acc_after']:.3f}"
            console.print(line)
        else:
            console.print(f"returning TX did not resume: {'; '.join(b['failed_rounds']) or 'aligned anew'}")
    console.print(f"processes: RX pid {result['rx_pid']}, TX pid {result['tx_pid']}"
                  + (f", returning TX pid {back['tx_pid']}" if back else ""))
