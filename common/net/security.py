"""ZeroMQ CURVE keys and the RX's allow-list of transmitters (``zmq.auth``).

Key files are ZeroMQ certificates as ``zmq.auth.create_certificates`` writes
them: ``NAME.key`` holds the public key only (safe to copy to the other host),
``NAME.key_secret`` holds the public and the secret key (keep it on its host,
mode 0600).

- RX: its own secret certificate (``--curve-secret``) and a directory of the
  TX public certificates it accepts (``--curve-allow``). A ZAP handler
  (:class:`AllowListAuthenticator`, a ``ThreadAuthenticator``) checks every
  connecting TX against that directory (re-read on each connection, so a TX
  is admitted or revoked by adding or removing its ``.key`` file) and logs
  every refusal with the peer address and the key. Those log lines are
  rate-limited (:mod:`common.net.ratelimit`: per message template, the first
  ``REFUSAL_LOG_BURST`` per ``REFUSAL_LOG_WINDOW_S`` seconds, then one
  "suppressed K similar messages" line), so a flood of refused connections
  cannot flood the log.
- TX: its own secret certificate (``--curve-secret``) and the RX's public
  certificate (``--curve-server-public``).

Plain TCP (no authentication, no encryption) is used only when asked for
explicitly (``--insecure``); :func:`rx_security` / :func:`tx_security` raise a
``ValueError`` that says so when neither keys nor ``--insecure`` are given.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from common.files import atomic_write_bytes
from common.net.ratelimit import rate_limit

REFUSAL_LOG_BURST = 5        # per message template and window: lines that pass
REFUSAL_LOG_WINDOW_S = 10.0  # then one summary line per window

log = logging.getLogger("semalign.security")
# ZAP decisions (admitted / REFUSED / allow-list unreadable) are logged once per connection attempt
# (marked with extra=PER_CONNECTION): a connection flood must not become a log flood. The other lines
# of this logger (e.g. the --insecure warning) are not limited. pyzmq's ZAP logger is limited as a whole.
PER_CONNECTION = {"per_connection": True}
log_limiter = rate_limit(log, REFUSAL_LOG_BURST, REFUSAL_LOG_WINDOW_S,
                         select=lambda record: getattr(record, "per_connection", False))
zap_log_limiter = rate_limit("semalign.security.zap", REFUSAL_LOG_BURST, REFUSAL_LOG_WINDOW_S)

INSECURE_WARNING = ("running WITHOUT CURVE (--insecure): any host that reaches this port can "
                    "talk to the daemon, and traffic is neither authenticated nor encrypted")


class KeyFileError(ValueError):
    """A key file is missing, unreadable or of the wrong kind (public where a secret is needed)."""


@dataclass(frozen=True)
class CurveKeys:
    """z85-encoded keys (bytes, 40 characters each)."""

    public: bytes
    secret: bytes


@dataclass(frozen=True)
class RxSecurity:
    """CURVE server keys and the allow-list directory; ``None`` keys = plain (insecure)."""

    keys: CurveKeys | None = None
    allow_dir: Path | None = None

    @property
    def curve(self) -> bool:
        return self.keys is not None


@dataclass(frozen=True)
class TxSecurity:
    """CURVE client keys and the RX's public key; ``None`` keys = plain (insecure)."""

    keys: CurveKeys | None = None
    server_public: bytes | None = None

    @property
    def curve(self) -> bool:
        return self.keys is not None


def generate_keypair(out_dir: str | Path, name: str) -> tuple[Path, Path]:
    """Write ``out_dir/NAME.key`` (public) and ``out_dir/NAME.key_secret`` (0600); returns both paths."""
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"key name {name!r}: use a plain file name such as 'rx' or 'tx-lab1'")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    public, secret = (Path(p) for p in zmq.auth.create_certificates(out, name))
    os.chmod(secret, 0o600)
    return public, secret


def admit_public_key(public: str | Path, allow_dir: str | Path, replace: bool = False) -> Path:
    """Copy the public certificate ``public`` into the allow-list directory ``allow_dir`` (created if
    missing); returns the copy. Refuses a secret certificate, and a different key already admitted
    under the same file name unless ``replace``."""
    src, d = Path(public), Path(allow_dir)
    try:
        key, secret = zmq.auth.load_certificate(src)
    except (OSError, ValueError) as e:
        raise KeyFileError(f"CURVE public key file {src}: cannot read it ({e})") from e
    if secret:
        raise KeyFileError(f"{src} holds a secret key; admit the public NAME.key file, never the .key_secret")
    d.mkdir(parents=True, exist_ok=True)
    dest = d / src.name
    if dest.exists() and dest.resolve() != src.resolve():
        try:
            admitted, _ = zmq.auth.load_certificate(dest)
        except (OSError, ValueError):
            admitted = None
        if admitted != key and not replace:
            raise KeyFileError(f"{dest} already admits another key; remove it first (or pass --force with a "
                               f"new key pair to replace it)")
    if dest.resolve() != src.resolve():
        atomic_write_bytes(dest, src.read_bytes())  # the RX re-reads the directory at each connection
    return dest


def load_secret(path: str | Path) -> CurveKeys:
    """A key pair from a ``.key_secret`` certificate."""
    p = Path(path)
    try:
        public, secret = zmq.auth.load_certificate(p)
    except (OSError, ValueError) as e:
        raise KeyFileError(f"CURVE key file {p}: cannot read it ({e})") from e
    if not secret:
        raise KeyFileError(f"CURVE key file {p} holds no secret key; pass the NAME.key_secret file")
    return CurveKeys(public, secret)


def load_public(path: str | Path) -> bytes:
    """The public key from a ``.key`` (or ``.key_secret``) certificate."""
    p = Path(path)
    try:
        public, _ = zmq.auth.load_certificate(p)
    except (OSError, ValueError) as e:
        raise KeyFileError(f"CURVE public key file {p}: cannot read it ({e})") from e
    return public


def _require_curve() -> None:
    if not zmq.has("curve"):
        raise ValueError("this libzmq was built without CURVE support; install pyzmq wheels "
                         "(bundled libzmq with libsodium/tweetnacl) or pass --insecure")


def rx_security(curve_secret: str | Path | None = None, curve_allow: str | Path | None = None,
                insecure: bool = False) -> RxSecurity:
    """The RX's CURVE set-up: its secret certificate and the allow-list directory, or ``insecure``."""
    secret, allow = curve_secret, curve_allow
    if secret or allow:
        if insecure:
            raise ValueError("--insecure contradicts --curve-secret/--curve-allow; choose one")
        if not (secret and allow):
            raise ValueError("CURVE needs both --curve-secret (the RX's NAME.key_secret) and "
                             "--curve-allow (directory of the TX public .key files it accepts)")
        _require_curve()
        allow_dir = Path(allow)
        if not allow_dir.is_dir():
            raise ValueError(f"--curve-allow {allow_dir}: not a directory")
        if not list(allow_dir.glob("*.key")):
            log.warning("allow-list %s holds no .key file: every TX will be refused", allow_dir)
        return RxSecurity(load_secret(secret), allow_dir)
    if not insecure:
        raise ValueError("no CURVE keys given: pass --curve-secret and --curve-allow (see "
                         "`semalign keygen` and docs/security.md), or --insecure to run plain TCP")
    log.warning(INSECURE_WARNING)
    return RxSecurity()


def worker_security(rx: RxSecurity, worker_allow: str | Path | None) -> RxSecurity:
    """The front end's socket for workers on other hosts: the RX's own CURVE key, admitting the worker
    keys in ``worker_allow`` (never the TXs' list); plain when the RX runs ``--insecure``."""
    if not rx.curve:
        if worker_allow:
            raise ValueError("--worker-allow needs CURVE: give the RX --curve-secret/--curve-allow, or drop "
                             "--worker-allow to let workers join over plain TCP with --insecure")
        log.warning("workers on other hosts join over plain TCP (--insecure): any host that reaches "
                    "--worker-bind can serve this RX's sessions")
        return RxSecurity()
    if not worker_allow:
        raise ValueError("--worker-bind with CURVE needs --worker-allow: the directory of the public .key "
                         "files of the RX workers allowed to join (see docs/deploy.md)")
    allow_dir = Path(worker_allow)
    if not allow_dir.is_dir():
        raise ValueError(f"--worker-allow {allow_dir}: not a directory")
    return RxSecurity(rx.keys, allow_dir)


def tx_security(curve_secret: str | Path | None = None, curve_server_public: str | Path | None = None,
                insecure: bool = False) -> TxSecurity:
    """The TX's CURVE set-up: its secret certificate and the RX's public key, or ``insecure``."""
    secret, server = curve_secret, curve_server_public
    if secret or server:
        if insecure:
            raise ValueError("--insecure contradicts --curve-secret/--curve-server-public; choose one")
        if not (secret and server):
            raise ValueError("CURVE needs both --curve-secret (the TX's NAME.key_secret) and "
                             "--curve-server-public (the RX's public .key file)")
        _require_curve()
        return TxSecurity(load_secret(secret), load_public(server))
    if not insecure:
        raise ValueError("no CURVE keys given: pass --curve-secret and --curve-server-public (see "
                         "`semalign keygen` and docs/security.md), or --insecure to run plain TCP")
    log.warning(INSECURE_WARNING)
    return TxSecurity()


class _AllowList:
    """ZAP credentials provider: a key is allowed when a ``.key`` file in ``directory`` holds it."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)

    def keys(self) -> set[bytes]:
        try:
            return set(zmq.auth.load_certificates(self.directory))
        except (OSError, ValueError) as e:
            log.error("allow-list %s unreadable (%s): refusing every key", self.directory, e,
                      extra=PER_CONNECTION)
            return set()

    def callback(self, domain: str, key: bytes) -> bool:
        return key in self.keys()


class AllowListAuthenticator(ThreadAuthenticator):
    """ZAP handler thread for one context: CURVE clients whose key is in ``allow_dir``.

    Logs each decision: INFO for an admitted TX, WARNING for a refused one
    (with the peer's address and its public key), and counts refusals in
    :attr:`refused`.
    """

    def __init__(self, context: zmq.Context, allow_dir: Path, role: str = "TX"):
        super().__init__(context, log=logging.getLogger("semalign.security.zap"))
        self.allow_dir = Path(allow_dir)
        self.role = role  # who connects, for the log lines: "TX", or "RX worker" on a front end's worker socket
        self.refused = 0
        self._request: tuple[str, str] = ("?", "?")

    def start(self) -> None:
        super().start()
        self.configure_curve_callback("*", _AllowList(self.allow_dir))

    def stop(self) -> None:
        super().stop()
        flush_refusal_logs(force=True)  # a flood cut short still gets its "suppressed K" line

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        if len(msg) >= 7:
            address = msg[3].decode("utf-8", "replace")
            key = z85.encode(msg[6]).decode() if msg[5] == b"CURVE" and len(msg[6]) == 32 else "-"
            self._request = (address, key)
        await super().handle_zap_message(msg)

    def _send_zap_reply(self, request_id, status_code, status_text, user_id="anonymous"):
        address, key = self._request
        if status_code == b"200":
            log.info("%s %s admitted (CURVE key %s)", self.role, address, key, extra=PER_CONNECTION)
        else:
            self.refused += 1
            log.warning("%s %s REFUSED (CURVE key %s): %s; add its public .key to %s to admit it",
                        self.role, address, key, status_text.decode("utf-8", "replace"), self.allow_dir,
                        extra=PER_CONNECTION)
        super()._send_zap_reply(request_id, status_code, status_text, user_id)


def flush_refusal_logs(force: bool = False) -> int:
    """Emit pending "suppressed K similar messages" lines of the ZAP loggers; call now and then."""
    return log_limiter.flush(force) + zap_log_limiter.flush(force)


def apply_server(sock: zmq.Socket, sec: RxSecurity) -> None:
    """Make ``sock`` a CURVE server (before bind); no-op in insecure mode."""
    if sec.keys is None:
        return
    sock.curve_secretkey = sec.keys.secret
    sock.curve_publickey = sec.keys.public
    sock.curve_server = True


def apply_client(sock: zmq.Socket, sec: TxSecurity) -> None:
    """Make ``sock`` a CURVE client of the RX (before connect); no-op in insecure mode."""
    if sec.keys is None:
        return
    sock.curve_secretkey = sec.keys.secret
    sock.curve_publickey = sec.keys.public
    sock.curve_serverkey = sec.server_public
