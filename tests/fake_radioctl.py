"""Command-template fake radio: ``python fake_radioctl.py STATE_FILE COMMAND [ARG]``.

COMMAND: ``get-state`` prints STATE_FILE (a JSON object); ``set-mcs N`` stores
``"mcs": N`` in it and appends ``set-mcs N`` to ``STATE_FILE.log``;
``sleep S`` sleeps S seconds; ``fail`` exits 3 with a message on stderr.
"""

import json
import sys
import time


def main(argv: list[str]) -> int:
    state_file, command, *args = argv
    if command == "get-state":
        with open(state_file) as f:
            sys.stdout.write(f.read())
        return 0
    if command == "set-mcs":
        with open(state_file) as f:
            doc = json.load(f)
        doc["mcs"] = int(args[0])
        with open(state_file, "w") as f:
            json.dump(doc, f)
        with open(state_file + ".log", "a") as f:
            f.write(f"set-mcs {args[0]}\n")
        return 0
    if command == "sleep":
        time.sleep(float(args[0]))
        return 0
    sys.stderr.write(f"radioctl: cannot {command}\n")
    return 3


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
