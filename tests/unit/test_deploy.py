"""The Dockerfile, compose.yaml and the systemd unit parse and name real flags of `workmesh start`."""

from __future__ import annotations

import configparser
import json
import re
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml

from workmesh.__main__ import build_parser
from workmesh.node.cli import config_from_args

ROOT = Path(__file__).resolve().parents[2]


def start_args(argv: list[str]):
    """Parse as the program would; a flag the parser does not know fails the test (SystemExit)."""
    assert argv[0] == "start", argv
    args = build_parser().parse_args(argv)
    # Off loopback a node needs a mesh key (or --open-mesh) and a token (the env, in every file here).
    assert args.host in ("127.0.0.1", "::1") or args.mesh_key or args.open_mesh, argv
    if args.mesh_key:  # the files name where the key is mounted; check the values with a real key
        from workmesh.crypto.meshkey import write_mesh_key_file

        key = Path(tempfile.mkdtemp()) / "mesh.key"
        write_mesh_key_file(str(key))
        args.mesh_key = str(key)
    config_from_args(args)  # and the values make a valid configuration
    return args


def dockerfile_instructions() -> dict[str, list[str]]:
    text = (ROOT / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.setdefault(word.upper(), []).append(rest.strip())
    return out


def test_dockerfile_runs_start_with_real_flags_and_exposes_its_ports():
    ins = dockerfile_instructions()
    assert json.loads(ins["ENTRYPOINT"][-1]) == ["workmesh"]
    args = start_args(json.loads(ins["CMD"][-1]))
    assert args.host == "0.0.0.0" and args.data_dir == "/var/lib/workmesh"
    exposed = " ".join(ins["EXPOSE"]).split()
    assert f"{args.p2p_port}/udp" in exposed and f"{args.api_port}/tcp" in exposed
    assert any("/var/lib/workmesh" in v for v in ins["VOLUME"])
    assert ins["USER"] == ["workmesh"]
    # Every folder the wheel maps (pyproject's package-dir) is copied into the image.
    copied = " ".join(ins["COPY"])
    for folder in ("workmesh", "node", "dht", "crypto", "api"):
        assert f"{folder} ./{folder}" in copied, folder


def test_compose_is_a_three_node_mesh_bootstrapped_on_its_own_addresses():
    doc = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = doc["services"]
    assert len(services) == 3
    addresses = {}
    for name, svc in services.items():
        args = start_args(svc["command"])
        ip = svc["networks"]["mesh"]["ipv4_address"]
        assert args.advertise_host == ip
        addresses[name] = f"{ip}:{args.p2p_port}"
        assert svc["volumes"][0].endswith(":" + args.data_dir)
        assert svc["ports"][0].endswith(f":{args.api_port}")
        assert "WORKMESH_API_TOKEN" in svc["environment"]  # 0.0.0.0 needs a token
        assert svc["secrets"] == ["mesh_key"]
    assert doc["secrets"]["mesh_key"]["file"] == "./mesh.key"
    for name, svc in services.items():
        boots = start_args(svc["command"]).bootstrap
        assert all(f"{h}:{p}" in addresses.values() for h, p in boots)
        assert f"{boots[0][0]}:{boots[0][1]}" != addresses[name] if boots else name == "node1"
    subnet = doc["networks"]["mesh"]["ipam"]["config"][0]["subnet"]
    assert all(a.startswith(subnet.rsplit(".", 1)[0] + ".") for a in addresses.values())


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read(ROOT / "deploy" / "workmesh.service")
    return parser


def test_systemd_unit_starts_a_node_with_real_flags():
    u = unit()
    assert {"Unit", "Service", "Install"} <= set(u.sections())
    argv = shlex.split(u["Service"]["ExecStart"])
    assert argv[0].endswith("/workmesh")
    args = start_args(argv[1:])
    assert args.data_dir == "/var/lib/workmesh" and u["Service"]["StateDirectory"] == "workmesh"
    assert u["Service"]["KillSignal"] == "SIGTERM"
    assert "WORKMESH_API_TOKEN" not in u["Service"]["ExecStart"]  # the token comes from the EnvironmentFile


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_finds_nothing_but_the_missing_binary():
    proc = subprocess.run(["systemd-analyze", "verify", str(ROOT / "deploy" / "workmesh.service")],
                          capture_output=True, text=True, timeout=60)
    problems = [line for line in (proc.stdout + proc.stderr).splitlines()
                if line.strip() and "is not executable" not in line and "/opt/workmesh/bin/workmesh" not in line]
    assert not problems, problems
