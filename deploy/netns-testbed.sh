#!/usr/bin/env bash
# Two-namespace testbed: the RX and the TX in two network namespaces joined by
# a veth pair, rate-limited with tc tbf, run over the `ip` sidelink backend.
#
#   sudo deploy/netns-testbed.sh [options]
#
# Builds namespaces sa-rx-PID and sa-tx-PID, a veth pair between them
# (RX 10.77.0.1/30, TX 10.77.0.2/30; nothing is added to the host's own
# namespace), a tbf qdisc on both ends at --rate-mbit, then runs
#   semalign rx --bind tcp://10.77.0.1:PORT --link ip --link-rate-bps RATE ...
# in the RX namespace and `semalign tx --connect ...` in the TX namespace, and
# writes logs, tc statistics and the TX's results to --out. Everything is torn
# down on exit, whatever happens (trap). Delay and loss are not emulated here
# (netem is not in every kernel): only the rate is; the TX's budget follows the
# rate reported by the ip backend, set to the tbf rate.
#
# --remote-worker adds a third namespace sa-wk-PID joined to the RX's by its own
# veth pair (RX 10.77.1.1/30, worker 10.77.1.2/30): the RX runs as a front end
# with no local worker (--workers 0 --worker-bind tcp://10.77.1.1:PORT+1), and
# `semalign rx-worker --connect` runs in the worker namespace and serves every
# round; everything is CURVE then (throwaway keys from `semalign keygen` in
# OUT/keys).
#
# --measure replaces the two daemons by a TCP bulk transfer (python3 sockets)
# and prints the measured goodput: a check that the tbf limit is in force.
# Expect about 95 % of the tbf rate (Ethernet/IP/TCP headers count against it).
set -euo pipefail

usage() {
    cat <<'USAGE'
usage: netns-testbed.sh [options]
  --rate-mbit R     tbf rate in Mbit/s (default 170.1: 64-QAM top MCS, 40 MHz at 30 kHz;
                    226.9 for 256-QAM)
  --rounds N        payload rounds (default 9)
  --out DIR         output directory (default runs/netns-YYYYmmdd-HHMMSS)
  --artifacts DIR   RX/TX artifacts; default: `semalign pretrain` into OUT/artifacts
  --dataset NAME    mnist | digits (default digits)
  --config FILE     TOML passed to pretrain and both daemons (e.g. [tx] n_test, deadline_s);
                    the options above win over it
  --port P          RX TCP port (default 5555)
  --timeout-s S     limit for each daemon, s (default 600)
  --remote-worker   the RX as a front end, its one worker in a third namespace (CURVE throughout)
  --measure         only measure the link's TCP goodput (no semalign)
  --measure-s S     duration of that measurement, s (default 2)
  -h, --help        this text
environment: SEMALIGN (command, default "semalign"), PYTHON (default "python3")
USAGE
}

die() { echo "netns-testbed: $*" >&2; exit 2; }

RATE_MBIT=170.1
ROUNDS=9
OUT=""
ARTIFACTS=""
DATASET=digits
CONFIG=""
PORT=5555
TIMEOUT_S=600
MEASURE=0
MEASURE_S=2
REMOTE_WORKER=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --rate-mbit) RATE_MBIT=${2:?--rate-mbit needs a value}; shift 2 ;;
        --rounds) ROUNDS=${2:?--rounds needs a value}; shift 2 ;;
        --out) OUT=${2:?--out needs a value}; shift 2 ;;
        --artifacts) ARTIFACTS=${2:?--artifacts needs a value}; shift 2 ;;
        --dataset) DATASET=${2:?--dataset needs a value}; shift 2 ;;
        --config) CONFIG=${2:?--config needs a value}; shift 2 ;;
        --port) PORT=${2:?--port needs a value}; shift 2 ;;
        --timeout-s) TIMEOUT_S=${2:?--timeout-s needs a value}; shift 2 ;;
        --measure) MEASURE=1; shift ;;
        --remote-worker) REMOTE_WORKER=1; shift ;;
        --measure-s) MEASURE_S=${2:?--measure-s needs a value}; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown option '$1'" ;;
    esac
done

positive_number() { [[ $1 =~ ^[0-9]+([.][0-9]+)?$ ]] && awk -v x="$1" 'BEGIN { exit !(x > 0) }'; }
positive_number "$RATE_MBIT" || die "--rate-mbit must be a positive number, got '$RATE_MBIT'"
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "--rounds must be an integer >= 1, got '$ROUNDS'"
if ! { [[ $PORT =~ ^[1-9][0-9]*$ ]] && (( PORT < 65535 )); }; then
    die "--port must be in 1..65534 (the remote worker uses PORT+1), got '$PORT'"
fi
[[ $TIMEOUT_S =~ ^[1-9][0-9]*$ ]] || die "--timeout-s must be an integer >= 1, got '$TIMEOUT_S'"
positive_number "$MEASURE_S" || die "--measure-s must be a positive number, got '$MEASURE_S'"
[[ $DATASET == mnist || $DATASET == digits ]] || die "--dataset must be mnist or digits, got '$DATASET'"
CONFIG_ARGS=()
if [[ -n $CONFIG ]]; then
    [[ -f $CONFIG ]] || die "--config '$CONFIG' is not a file"
    CONFIG_ARGS=(--config "$(cd "$(dirname "$CONFIG")" && pwd)/$(basename "$CONFIG")")
fi
(( EUID == 0 )) || die "needs root (network namespaces, tc)"
for tool in ip tc timeout awk; do
    command -v "$tool" >/dev/null || die "'$tool' not found (apt-get install iproute2 coreutils gawk)"
done
read -r -a SEMALIGN_CMD <<< "${SEMALIGN:-semalign}"
PYTHON=${PYTHON:-python3}

RATE_BPS=$(awk -v r="$RATE_MBIT" 'BEGIN { printf "%.0f", r * 1e6 }')
# tbf bucket: 1 ms at the rate, at least 16 KiB (ten full frames); tbf splits larger GSO packets.
BURST_B=$(awk -v b="$RATE_BPS" 'BEGIN { x = b / 8 / 1000; if (x < 16384) x = 16384; printf "%.0f", x }')
OUT=${OUT:-runs/netns-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

NS_RX=sa-rx-$$
NS_TX=sa-tx-$$
NS_WK=sa-wk-$$
RX_ADDR=10.77.0.1
TX_ADDR=10.77.0.2
RX_WK_ADDR=10.77.1.1
WK_ADDR=10.77.1.2
BG_PIDS=()

cleanup() {
    local status=$? pid
    for pid in "${BG_PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    ip netns del "$NS_RX" 2>/dev/null || true
    ip netns del "$NS_TX" 2>/dev/null || true
    ip netns del "$NS_WK" 2>/dev/null || true
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- plumbing: two namespaces, one veth pair, tbf on both ends -------------
ip netns add "$NS_RX"
ip netns add "$NS_TX"
ip -n "$NS_TX" link add veth-tx type veth peer name veth-rx netns "$NS_RX"
ip -n "$NS_RX" addr add "$RX_ADDR/30" dev veth-rx
ip -n "$NS_TX" addr add "$TX_ADDR/30" dev veth-tx
for pair in "$NS_RX veth-rx" "$NS_TX veth-tx"; do
    read -r ns dev <<< "$pair"
    ip -n "$ns" link set lo up
    ip -n "$ns" link set "$dev" up
    tc -n "$ns" qdisc add dev "$dev" root tbf rate "${RATE_BPS}bit" burst "$BURST_B" latency 50ms
done
if (( REMOTE_WORKER )); then
    ip netns add "$NS_WK"
    ip -n "$NS_WK" link add veth-wk type veth peer name veth-rxw netns "$NS_RX"
    ip -n "$NS_RX" addr add "$RX_WK_ADDR/30" dev veth-rxw
    ip -n "$NS_WK" addr add "$WK_ADDR/30" dev veth-wk
    ip -n "$NS_WK" link set lo up
    ip -n "$NS_WK" link set veth-wk up
    ip -n "$NS_RX" link set veth-rxw up
fi
{
    echo "rate_mbit=$RATE_MBIT rate_bps=$RATE_BPS burst_bytes=$BURST_B"
    echo "rx=$NS_RX $RX_ADDR:$PORT tx=$NS_TX $TX_ADDR rounds=$ROUNDS dataset=$DATASET"
    if (( REMOTE_WORKER )); then echo "worker=$NS_WK $WK_ADDR front_end=$RX_WK_ADDR:$((PORT + 1))"; fi
} > "$OUT/testbed.txt"

# Children run in the background and are waited for, so that INT/TERM reach the
# trap at once; cleanup signals each `timeout`, which passes the signal on.
start() { "$@" & BG_PIDS+=("$!"); }

save_tc_stats() {
    { tc -n "$NS_TX" -s qdisc show dev veth-tx; tc -n "$NS_RX" -s qdisc show dev veth-rx; } >> "$OUT/testbed.txt"
}

if (( MEASURE )); then
    sink_py='
import socket, sys, time
srv = socket.create_server((sys.argv[1], int(sys.argv[2])))
conn, _ = srv.accept()
n, t0 = 0, None
while chunk := conn.recv(1 << 16):
    t0 = t0 or time.monotonic()
    n += len(chunk)
print(f"{8 * n / (time.monotonic() - t0) / 1e6:.2f}")
'
    source_py='
import socket, sys, time
deadline = time.monotonic() + 5
while True:
    try:
        s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
        break
    except ConnectionRefusedError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.02)
block, end = bytes(1 << 16), time.monotonic() + float(sys.argv[3])
while time.monotonic() < end:
    s.sendall(block)
s.close()
'
    start ip netns exec "$NS_RX" timeout "$TIMEOUT_S" "$PYTHON" -c "$sink_py" "$RX_ADDR" "$PORT" > "$OUT/measure.txt"
    start ip netns exec "$NS_TX" timeout "$TIMEOUT_S" "$PYTHON" -c "$source_py" "$RX_ADDR" "$PORT" "$MEASURE_S"
    wait "${BG_PIDS[1]}"
    wait "${BG_PIDS[0]}"
    save_tc_stats
    echo "measured $(cat "$OUT/measure.txt") Mbit/s TCP goodput over a ${RATE_MBIT} Mbit/s tbf link"
    exit 0
fi

# --- the two daemons over the ip backend -----------------------------------
if [[ -z $ARTIFACTS ]]; then
    ARTIFACTS=$OUT/artifacts
    "${SEMALIGN_CMD[@]}" pretrain --dataset "$DATASET" --d-pre 40 --out "$ARTIFACTS" "${CONFIG_ARGS[@]}" \
        > "$OUT/pretrain.log" 2>&1 \
        || die "pretrain failed, see $OUT/pretrain.log"
fi
[[ -d $ARTIFACTS ]] || die "--artifacts '$ARTIFACTS' is not a directory"

# Plain TCP inside the two private namespaces (explicit --insecure; docs/security.md for CURVE);
# with --remote-worker, CURVE throughout, with throwaway keys.
RX_SEC=(--insecure)
TX_SEC=(--insecure)
if (( REMOTE_WORKER )); then
    KEYS=$OUT/keys
    for name in rx tx-testbed worker-testbed; do
        rm -f "$KEYS/$name.key" "$KEYS/$name.key_secret"
    done
    "${SEMALIGN_CMD[@]}" keygen --out "$KEYS" --name rx > /dev/null
    "${SEMALIGN_CMD[@]}" keygen --out "$KEYS" --name tx-testbed --allow-dir "$KEYS/allow-tx" > /dev/null
    "${SEMALIGN_CMD[@]}" keygen --out "$KEYS" --name worker-testbed --allow-dir "$KEYS/allow-workers" > /dev/null
    RX_SEC=(--curve-secret "$KEYS/rx.key_secret" --curve-allow "$KEYS/allow-tx" --workers 0
            --worker-bind "tcp://$RX_WK_ADDR:$((PORT + 1))" --worker-allow "$KEYS/allow-workers")
    TX_SEC=(--curve-secret "$KEYS/tx-testbed.key_secret" --curve-server-public "$KEYS/rx.key")
fi
start ip netns exec "$NS_RX" timeout "$TIMEOUT_S" "${SEMALIGN_CMD[@]}" rx --bind "tcp://$RX_ADDR:$PORT" "${RX_SEC[@]}" \
    --artifacts "$ARTIFACTS" --link ip --link-rate-bps "$RATE_BPS" --max-rounds "$ROUNDS" "${CONFIG_ARGS[@]}" \
    > "$OUT/rx.log" 2>&1
TX_AT=1
if (( REMOTE_WORKER )); then
    start ip netns exec "$NS_WK" timeout "$TIMEOUT_S" "${SEMALIGN_CMD[@]}" rx-worker \
        --connect "tcp://$RX_WK_ADDR:$((PORT + 1))" --curve-secret "$KEYS/worker-testbed.key_secret" \
        --curve-server-public "$KEYS/rx.key" > "$OUT/worker.log" 2>&1
    TX_AT=2
    # start the TX once the worker is ready (before, the front end would drop its HELLOs: it re-sends them)
    for (( tick = 0; tick < 10 * TIMEOUT_S; tick++ )); do
        grep -q "RX worker 0 ready" "$OUT/rx.log" 2>/dev/null && break
        sleep 0.1
    done
    grep -q "RX worker 0 ready" "$OUT/rx.log" || die "the remote worker did not join, see $OUT/worker.log"
fi
start ip netns exec "$NS_TX" timeout "$TIMEOUT_S" "${SEMALIGN_CMD[@]}" tx --connect "tcp://$RX_ADDR:$PORT" "${TX_SEC[@]}" \
    --artifacts "$ARTIFACTS" --dataset "$DATASET" --rounds "$ROUNDS" --out "$OUT" "${CONFIG_ARGS[@]}" \
    > "$OUT/tx.log" 2>&1
tx_status=0
wait "${BG_PIDS[$TX_AT]}" || tx_status=$?
# The RX exits by itself once it has answered --max-rounds payloads. A TX that
# failed leaves it waiting: stop it (SIGTERM) at once, else after 10 s.
rx_pid=${BG_PIDS[0]}
grace_ticks=0
if (( tx_status == 0 )); then grace_ticks=100; fi
for (( tick = 0; tick < grace_ticks; tick++ )); do
    kill -0 "$rx_pid" 2>/dev/null || break
    sleep 0.1
done
rx_stopped=0
if kill "$rx_pid" 2>/dev/null; then rx_stopped=1; fi
rx_status=0
wait "$rx_pid" || rx_status=$?
save_tc_stats
stopped=""
if (( rx_stopped )); then stopped=" (stopped by the testbed)"; fi
echo "tx exit $tx_status, rx exit $rx_status$stopped; results and logs in $OUT"
(( tx_status == 0 && rx_status == 0 && rx_stopped == 0 ))
