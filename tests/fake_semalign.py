"""Stand-in for the ``semalign`` CLI in netns-testbed tests: checks the plumbing, not the protocol.

``pretrain --out DIR`` creates DIR; ``rx --bind tcp://A:P`` accepts one TCP
connection and prints how many bytes came; ``tx --connect tcp://A:P`` sends
``hello`` there and exits with ``$FAKE_SEMALIGN_TX_EXIT`` (default 0). Each call
appends its argv as a JSON line to ``$FAKE_SEMALIGN_LOG``.
"""

import json
import os
import socket
import sys
import time


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("tcp://").rsplit(":", 1)
    return host, int(port)


def main(argv: list[str]) -> int:
    with open(os.environ["FAKE_SEMALIGN_LOG"], "a") as log:
        log.write(json.dumps(argv) + "\n")
    command = argv[0]
    if command == "pretrain":
        os.makedirs(option(argv, "--out"))
    elif command == "rx":
        with socket.create_server(address(option(argv, "--bind"))) as server:
            conn, _ = server.accept()
            with conn:
                print(f"rx got {len(conn.makefile('rb').read())} bytes")
    elif command == "tx":
        deadline = time.monotonic() + 5
        while True:
            try:
                conn = socket.create_connection(address(option(argv, "--connect")), timeout=5)
                break
            except ConnectionRefusedError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        with conn:
            conn.sendall(b"hello")
        return int(os.environ.get("FAKE_SEMALIGN_TX_EXIT", "0"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
