"""deploy/: the example configs load with the CLIs' option names and build their backend; unit templates."""

import inspect
from pathlib import Path

import pytest

from semalign.config import load_toml, merged_options
from common.link.sidelink import create_sidelink
from semalign.rx_cli import rx
from semalign.tx_cli import tx

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
CONFIGS = sorted(p for p in DEPLOY.glob("*/*.toml") if p.stem in ("rx", "tx"))  # deploy/flower: Flower's own
CLI_KEYS = {name: set(inspect.signature(fn).parameters) - {"config", "log_level"} for name, fn in
            (("rx", rx), ("tx", tx))}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_example_config_keys_are_cli_options(path):
    role = path.stem
    cfg = load_toml(path)
    assert set(cfg) <= {role, "link"}
    keys = CLI_KEYS[role]
    merged_options(cfg, role, dict.fromkeys(keys), keys)  # raises on unknown keys


@pytest.mark.parametrize("path", sorted(DEPLOY.glob("*/rx.toml")), ids=lambda p: p.parent.name)
def test_example_rx_configs_build_their_backend(path):
    link = load_toml(path)["link"]
    backend = create_sidelink(link.pop("backend"), **link)
    assert backend.name == {"two-host": "ip", "sirius": "sirius"}[path.parent.name]


@pytest.mark.parametrize("role", ["rx", "tx"])
def test_systemd_units(role):
    text = (DEPLOY / "systemd" / f"semalign-{role}.service").read_text()
    assert f"semalign {role} --config /etc/semalign/{role}.toml" in text
    for line in ("Restart=on-failure", "User=semalign", "WantedBy=multi-user.target"):
        assert f"\n{line}\n" in text
