"""One machine: a SuperLink, N SuperNodes and ``flwr run`` as real processes on loopback.

:func:`run_flower_local` is what a multi-host deployment does (see
``docs/modes/fed_lora_flower.md``), on one host: ``flower-superlink --insecure``
on a free port, one ``flower-supernode --insecure --node-config ...`` per
device, a SuperLink connection in a private ``FLWR_HOME`` and ``flwr run
deploy/flower <connection> --run-config <file> --stream``, which returns when
the run ends. Every process gets its own ``FLWR_HOME`` under ``out/flwr_home``
and its log under ``out/flower_logs``; all of them, and the processes Flower
starts under them (SuperExec, ServerApp, ClientApps), are stopped on the way
out, whatever happened. No flwr import here: the processes are the venv's
Flower commands.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.files import free_port, read_jsonl, toml_value, write_toml

APP_DIR = Path(__file__).resolve().parents[4] / "deploy" / "flower"
CONNECTION = "semalign-local"
LOG_TAIL_CHARS = 3000


class FlowerRunError(RuntimeError):
    """A local Flower run that did not finish; the message ends with the tail of every process's log."""


@dataclass
class FlowerRun:
    """What a local run left: the base station's per-round ``records`` (``base_station.jsonl``), its
    ``summary`` (``summary.json``), ``wall_s`` (seconds from starting the SuperLink to the end of
    ``flwr run``), ``logs`` (name -> log file) and ``pids`` (every process started or seen under them)."""

    out: Path
    records: list[dict]
    summary: dict
    wall_s: float
    logs: dict[str, Path]
    pids: list[int] = field(default_factory=list)


def run_config_value(v: Any) -> Any:
    """``v`` when Flower's run and node configs can hold it (bool, int, finite float, str); ``ValueError`` else."""
    if isinstance(v, (bool, int, str)) or (isinstance(v, float) and math.isfinite(v)):
        return v
    raise ValueError(f"config values must be bool, int, finite float or str, got {v!r}")


def flower_command(name: str) -> str:
    """The path of Flower's command ``name`` next to this Python (the venv's)."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: fed-lora under Flower needs pip install 'semalign[flower]'")
    return str(path)


def throwaway_pki(d: Path, n_nodes: int, host: str) -> dict[str, Path]:
    """Throwaway TLS and SuperNode-authentication keys for a one-machine run, with ``cryptography``
    (Flower's own dependency): a CA (``ca.crt``), the SuperLink's certificate for ``host`` signed by it
    (``server.pem``, ``server.key``), and one NIST P-384 key pair per SuperNode (``node<k>``, OpenSSH
    private key, and ``node<k>.pub``, what ``flwr supernode register`` takes). Valid for one day."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    d.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)

    def write(path: Path, data: bytes, mode: int = 0o600) -> Path:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return path

    def pem_key(key) -> bytes:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    def cert(subject, issuer, public_key, signer, ca: bool, san=None):
        b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
             .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
             .not_valid_after(now + datetime.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if san is not None:
            b = b.add_extension(san, critical=False)
        return b.sign(signer, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "semalign throwaway CA")])
    ca_cert = cert(ca_name, ca_name, ca_key.public_key(), ca_key, True)
    server_key = ec.generate_private_key(ec.SECP384R1())
    try:
        alt = [x509.IPAddress(ipaddress.ip_address(host))]
    except ValueError:
        alt = [x509.DNSName(host)]
    server = cert(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]), ca_name, server_key.public_key(),
                  ca_key, False, x509.SubjectAlternativeName(alt + [x509.DNSName("localhost")]))
    out = {"ca": write(d / "ca.crt", ca_cert.public_bytes(serialization.Encoding.PEM), 0o644),
           "server_cert": write(d / "server.pem", server.public_bytes(serialization.Encoding.PEM), 0o644),
           "server_key": write(d / "server.key", pem_key(server_key))}
    for k in range(n_nodes):
        key = ec.generate_private_key(ec.SECP384R1())
        out[f"node{k}"] = write(d / f"node{k}", key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()))
        out[f"node{k}.pub"] = write(d / f"node{k}.pub", key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH), 0o644)
    return out


def run_flower_local(out: str | Path, node_configs: Sequence[Mapping[str, Any]],
                     run_config: Mapping[str, Any] | None = None, *, app_dir: str | Path = APP_DIR,
                     timeout_s: float = 600.0, host: str = "127.0.0.1", secure: bool = False) -> FlowerRun:
    """Run fed-lora under Flower's deployment engine on this machine and return its records.

    ``node_configs``: one node config per device (``device-id``, ``fed-distance-m`` m,
    ``fed-flops-per-s`` FLOP/s, ``fed-max-power-w`` W, ``fed-energy-budget-j`` J, ...);
    ``run_config``: run-config overrides (``rounds``, ``fed-policy``, ...); ``fed-devices``
    defaults to ``len(node_configs)`` and ``fed-out`` is ``out``. ``timeout_s``: for the
    whole run. ``secure``: TLS on the SuperLink's API (a throwaway CA, :func:`throwaway_pki`,
    every client verifies the SuperLink's certificate with it) and SuperNode authentication (the
    SuperLink takes only the SuperNodes whose public keys ``flwr supernode register`` added, each
    signing in with its private key), as a multi-host deployment should run; else ``--insecure``.
    Raises :class:`FlowerRunError` (with the logs' tails) when the run does not write its summary.
    """
    if not node_configs:
        raise ValueError("node_configs must name at least one device")
    out = Path(out).resolve()
    logs_dir, home = out / "flower_logs", out / "flwr_home"
    logs_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("summary.json", "base_station.jsonl"):
        (out / stale).unlink(missing_ok=True)
    overrides = {"fed-devices": len(node_configs), **(run_config or {}), "fed-out": str(out)}
    write_toml(out / "run_config.toml", {k: run_config_value(v) for k, v in overrides.items()})
    link_port = free_port(host)
    procs: dict[str, subprocess.Popen] = {}
    logs: dict[str, Path] = {}
    seen: set[int] = set()
    t0 = time.monotonic()

    def start(name: str, argv: list[str], home_name: str | None = None) -> subprocess.Popen:
        (home / (home_name or name)).mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, FLWR_HOME=str(home / (home_name or name)), OMP_NUM_THREADS="1",
                   PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
        logs[name] = logs_dir / f"{name}.log"
        with open(logs[name], "wb") as f:
            procs[name] = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=out,
                                           start_new_session=True)
        return procs[name]

    pki = throwaway_pki(out / "flower_keys", len(node_configs), host) if secure else None
    link_tls = ["--ssl-ca-certfile", str(pki["ca"]), "--ssl-certfile", str(pki["server_cert"]), "--ssl-keyfile",
                str(pki["server_key"]), "--enable-supernode-auth"] if secure else ["--insecure"]
    connection = {"address": f"{host}:{link_port}",
                  **({"root-certificates": str(pki["ca"])} if secure else {"insecure": True})}
    try:
        start("superlink", [flower_command("flower-superlink"), *link_tls, "--host", host, "--port",
                            str(link_port), "--disable-runtime-dependency-installation"])
        _wait_listening(host, link_port, procs["superlink"], deadline=t0 + min(timeout_s, 120.0))
        (home / "flwr-run").mkdir(parents=True, exist_ok=True)
        write_toml(home / "flwr-run" / "config.toml", {"superlink": {"default": CONNECTION, CONNECTION: connection}})
        for k in range(len(node_configs) if secure else 0):  # the SuperLink takes only registered SuperNodes
            reg = start(f"register{k}", [flower_command("flwr"), "supernode", "register", str(pki[f"node{k}.pub"]),
                                         CONNECTION], home_name="flwr-run")
            if reg.wait(timeout=max(1.0, timeout_s - (time.monotonic() - t0))) != 0:
                raise FlowerRunError(f"flwr supernode register of node {k} failed ({reg.returncode}){_tails(logs)}")
        for k, node in enumerate(node_configs):
            cfg = " ".join(f"{key}={toml_value(run_config_value(v))}" for key, v in node.items())
            node_tls = ["--root-certificates", str(pki["ca"]), "--auth-supernode-private-key",
                        str(pki[f"node{k}"])] if secure else ["--insecure"]
            start(f"supernode{k}", [flower_command("flower-supernode"), *node_tls, "--superlink",
                                    f"{host}:{link_port}", "--port", str(free_port(host)), "--node-config", cfg])
        run = start("flwr-run", [flower_command("flwr"), "run", str(Path(app_dir).resolve()), CONNECTION,
                                 "--run-config", str(out / "run_config.toml"), "--stream"])
        try:
            run.wait(timeout=max(1.0, timeout_s - (time.monotonic() - t0)))
        except subprocess.TimeoutExpired:
            raise FlowerRunError(f"the Flower run did not end within {timeout_s:g} s{_tails(logs)}") from None
        wall_s = time.monotonic() - t0
    finally:
        seen |= stop_all(list(procs.values()))
    summary_path = out / "summary.json"
    if not summary_path.exists():
        raise FlowerRunError(f"the ServerApp wrote no {summary_path} (flwr run exit {procs['flwr-run'].returncode})"
                             f"{_tails(logs)}")
    records = read_jsonl(out / "base_station.jsonl")
    return FlowerRun(out, records, json.loads(summary_path.read_text()), wall_s, logs, sorted(seen))


def _wait_listening(host: str, port: int, proc: subprocess.Popen, deadline: float) -> None:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise FlowerRunError(f"flower-superlink exited ({proc.returncode}) before listening on {host}:{port}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise FlowerRunError(f"flower-superlink did not listen on {host}:{port} in time")


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (by parent pid, from ``/proc``; empty where there is none)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in found:
                found.add(c)
                todo.append(c)
    return found


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not count)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def stop_all(procs: Sequence[subprocess.Popen], timeout_s: float = 10.0) -> set[int]:
    """SIGTERM ``procs`` and everything below them (SuperExec detaches into its own session), SIGKILL
    what is left after ``timeout_s``; returns every pid it saw."""
    below = set().union(*(descendants(p.pid) for p in procs)) if procs else set()
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    t_end = time.monotonic() + timeout_s
    for p in procs:
        try:
            p.wait(timeout=max(0.1, t_end - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    while any(alive(pid) for pid in below) and time.monotonic() < t_end + 2.0:
        time.sleep(0.1)
    for pid in below:
        if alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return {p.pid for p in procs} | below


def _tails(logs: Mapping[str, Path]) -> str:
    parts = []
    for name, path in logs.items():
        try:
            text = path.read_text(errors="replace")[-LOG_TAIL_CHARS:]
        except OSError as e:
            text = f"(unreadable: {e})"
        parts.append(f"\n----- {name} ({path}) -----\n{text}")
    return "".join(parts)
