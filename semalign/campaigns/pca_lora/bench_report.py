"""``semalign bench``'s printed tables (rich): every figure beside its floor (:func:`print_bench`), the
training steps (:func:`print_steps`) and the precisions (:func:`print_precision`)."""

from __future__ import annotations

from common.modes.pca_lora.adapt_config import DEFAULT_RECIPE, RECIPES


def print_bench(res: dict) -> None:
    """The figures of :func:`~semalign.campaigns.pca_lora.bench.run_bench`'s ``res``, each beside its floor."""
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"semalign bench ({res['dataset']}; {res['machine']['cpu']}, load "
                    f"{res['machine']['loadavg'][0]:.2f})", header_style="bold")
    for name in ("figure", "measured", "floor", "note"):
        t.add_column(name, justify="left" if name in ("figure", "note") else "right")
    t.add_row("GEMM (1 thread)", f"{res['gemm_flops_per_s'] / 1e9:.1f} GFLOP/s", "", "compute reference")
    t.add_row("memcpy", f"{res['memcpy_bytes_per_s'] / 1e9:.1f} GB/s", "", "memory reference")
    for alpha, e in res["pca_encode"].items():
        t.add_row(f"PCA encode alpha={alpha}", f"{e['vectors_per_s'] / 1e6:.2f} M vec/s",
                  f"{e['floor_vectors_per_s'] / 1e6:.2f} M vec/s", f"{e['flop_per_vector']} FLOP/vector")
    p = res["payload"]
    t.add_row(f"pack {p['bytes'] / 1e6:.2f} MB", f"{p['pack_mb_per_s']:.0f} MB/s", f"{p['floor_mb_per_s']:.0f} MB/s",
              f"air time {p['airtime_ms_at_reference_rate']:.1f} ms")
    t.add_row("unpack + dequantize", f"{p['unpack_mb_per_s']:.0f} MB/s", f"{p['floor_mb_per_s']:.0f} MB/s", "")
    r = res["zmq_rtt_1mib"]
    t.add_row("ZeroMQ RTT 1 MiB", f"{r['ms']:.2f} ms", f"{r['floor_ms_two_memcpy']:.2f} ms",
              f"air time {r['airtime_ms_at_reference_rate']:.1f} ms")
    for a in res["adapt"]:
        for label in RECIPES:
            x = a[label]
            t.add_row(f"adapt a={a['alpha']} n={a['n_train']} ({label}{', default' if label == DEFAULT_RECIPE else ''})",
                      f"{x['ms']:.0f} ms ({'+'.join(map(str, x['stage_steps']))} steps)",
                      f"{x['floor_ms']:.0f} ms", f"{x['ms_per_step']:.2f} ms/step"
                      + (", cut by the cap" if x["cut_by_cap"] else ""))
    for i in res["inference"]:
        t.add_row(f"inference t={i['t']}", f"{i['ms']:.2f} ms", f"{i['floor_ms']:.2f} ms", "")
    d = res.get("round_d_pre")
    if d:
        t.add_row(f"round at alpha=d_pre ({d['payload_rule']}, n_train {d['n_train'][0]})", f"{d['round_ms']:.1f} ms",
                  f"{d['airtime_plus_inference_ms']:.1f} ms", f"{d['ratio']:.2f}x air time + inference")
    for k, x in (res.get("train_parts") or {}).items():
        t.add_row(f"round a={x['alpha']}, {k} training parts first", f"{x['to_classification_ms']:.1f} ms",
                  f"{x['max_ms']:.1f} ms", f"to classification (acc {x['acc_adapted']:.4f}); encode "
                  f"{x['encode_ms']:.0f} + air {x['airtime_ms']:.0f} + adapt {x['finetune_ms']:.0f} = "
                  f"{x['sum_ms']:.0f} ms, floor: their max")
    if res.get("rss"):
        t.add_row("peak RSS RX / TX", f"{res['rss']['rx_peak_rss_mib']:.0f} / {res['rss']['tx_peak_rss_mib']:.0f} MiB",
                  "", "VmHWM of each process")
    Console(width=160).print(t)
    print_steps(res)
    print_precision(res)


def print_precision(res: dict) -> None:
    """auto's precision choice per recipe, and bf16 vs fp32 accuracy at the same steps."""
    from rich.console import Console
    from rich.table import Table

    t = Table(title="frozen layers: bf16 vs fp32 (same payloads, same step counts; accuracy on the test set)",
              header_style="bold")
    for name in ("alpha", "steps per stage", "fp32", "bf16", "bf16 - fp32"):
        t.add_column(name, justify="right")
    for alpha, x in (res.get("precision_accuracy") or {}).items():
        steps = sorted({"+".join(map(str, r["stage_steps"])) for r in x["rows"]})
        t.add_row(alpha, ", ".join(steps), f"{x['fp32'] * 100:.2f} %", f"{x['bf16'] * 100:.2f} %",
                  f"{(x['bf16'] - x['fp32']) * 100 + 0.0:+.3f} pp")
    Console(width=160).print(t)
    for recipe, c in (res.get("precision_choice") or {}).items():
        ms = c.get("step_ms")
        timing = f": step {ms['fp32']:.3f} ms fp32, {ms['bf16']:.3f} ms bf16" if ms else ""
        print(f"precision auto, {recipe}: {c['precision']} ({c['by']}{timing})")


def print_steps(res: dict) -> None:
    """The ``step`` section: each recipe's step against its FLOP floor at its own shapes, fp32 and bf16."""
    from rich.console import Console
    from rich.table import Table

    steps = res.get("step") or {}
    if not steps:
        return
    native = next(iter(steps.values())).get("bf16_native")
    note = {True: "bf16 native (avx512_bf16/amx_bf16)", False: "bf16 EMULATED: this CPU has no bf16 arithmetic",
            None: "bf16 support unknown (no /proc/cpuinfo)"}[native]
    t = Table(title=f"train step vs FLOP floor at the step's GEMM shapes ({note})", header_style="bold")
    for name in ("step", "MFLOP", "precision", "measured", "floor", "ratio", "GEMM rate at its shapes"):
        t.add_column(name, justify="left" if name in ("step", "precision") else "right")
    for label, x in steps.items():
        for precision in ("fp32", "bf16"):
            p = x.get(precision)
            if p is None:
                t.add_row("", "", precision, "n/a", "", "", "fp32 only (no frozen layers)")
                continue
            t.add_row(f"a={x['alpha']} b={x['batch']} {label}{' (default)' if x['default'] else ''}"
                      if precision == "fp32" else "", f"{x['flops'] / 1e6:.1f}" if precision == "fp32" else "",
                      precision, f"{p['ms_per_step']:.3f} ms", f"{p['floor_ms_per_step']:.3f} ms",
                      f"{p['ratio']:.1f}x", f"{p['gemm_gflops_at_step_shapes']:.1f} GFLOP/s")
    Console(width=160).print(t)
