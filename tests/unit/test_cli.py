"""The `workmesh start` flags reach the node they configure."""

from __future__ import annotations

from workmesh.crypto.identity import puzzle_bits
from workmesh.node.cli import build_parser, config_from_args
from workmesh.node.node import Node


def test_a_node_started_with_a_puzzle_gets_a_key_that_solves_it(tmp_path):
    args = build_parser().parse_args(
        ["start", "--data-dir", str(tmp_path), "--p2p-port", "0", "--api-port", "0", "--identity-puzzle-bits", "8"]
    )
    config = config_from_args(args)
    assert config.dht.identity_puzzle_bits == 8
    node = Node(config)
    assert puzzle_bits(node.identity.public_key) >= 8
    # Restarted on the same data dir: the same (solved) key.
    assert Node(config).identity.public_key == node.identity.public_key


def _start(tmp_path, *flags):
    return build_parser().parse_args(["start", "--data-dir", str(tmp_path), *flags])


def test_byzantine_sets_the_quorum_and_refuses_settings_that_cannot_work(tmp_path):
    import pytest

    from workmesh.node.cli import main

    config = config_from_args(_start(tmp_path, "--replicas", "4", "--byzantine", "1"))
    assert (config.byzantine, config.replicas, config.quorum) == (1, 4, 3)
    assert config_from_args(_start(tmp_path, "--replicas", "7", "--byzantine", "2")).quorum == 5
    assert config_from_args(_start(tmp_path, "--replicas", "5")).quorum == 3  # F = 0: a majority
    with pytest.raises(ValueError, match=r"r >= 3F \+ 1"):
        config_from_args(_start(tmp_path, "--replicas", "3", "--byzantine", "1"))
    with pytest.raises(ValueError, match="below"):
        config_from_args(_start(tmp_path, "--replicas", "4", "--byzantine", "1", "--quorum", "2"))
    assert main(["start", "--data-dir", str(tmp_path), "--replicas", "3", "--byzantine", "1"]) == 2


def _start_config(*flags: str):
    return config_from_args(build_parser().parse_args(["start", "--data-dir", "d", *flags]))


def test_rest_limit_flags_reach_the_limits():
    from workmesh.app import rest_limits

    limits = rest_limits(_start_config())
    assert limits.rate_per_s is None and limits.remote_rate_per_s == 100.0 and limits.rate_burst == 100
    assert (limits.long_polls_max, limits.long_polls_per_client_max) == (1000, 100)
    assert set(limits.hosts) == {"localhost", "127.0.0.1", "::1"}, "a loopback node checks Host by default"
    limits = rest_limits(_start_config(
        "--rate-limit", "7", "--remote-rate-limit", "0", "--rate-burst", "9", "--long-polls-max", "11",
        "--long-polls-per-client", "3", "--connections-max", "500",
        "--allowed-host", "mesh.example,other.example", "--allowed-host", "third.example",
    ))
    assert (limits.rate_per_s, limits.remote_rate_per_s, limits.rate_burst) == (7.0, 0.0, 9)
    assert (limits.long_polls_max, limits.long_polls_per_client_max, limits.connections_max) == (11, 3, 500)
    assert limits.hosts == ("localhost", "127.0.0.1", "::1", "mesh.example", "other.example", "third.example")
    assert rest_limits(_start_config("--host", "0.0.0.0", "--api-token", "t")).hosts == (), "off loopback: no check"
    named = rest_limits(_start_config("--host", "0.0.0.0", "--api-token", "t", "--allowed-host", "mesh.example"))
    assert named.hosts == ("mesh.example",)


def test_bad_rest_limits_refuse_to_start(capsys):
    from workmesh.node.cli import main

    assert main(["start", "--data-dir", "d", "--long-polls-max", "0"]) == 2
    assert main(["start", "--data-dir", "d", "--rate-limit", "0"]) == 2
    assert "workmesh:" in capsys.readouterr().err


def test_reannounce_max_caps_the_reannounce_waits():
    default = _start_config()
    assert (default.reannounce_first_s, default.reannounce_max_s) == (10.0, 30.0)
    assert (_start_config("--reannounce-max", "2m").reannounce_first_s, _start_config("--reannounce-max", "2m").reannounce_max_s) == (10.0, 120.0)
    short = _start_config("--reannounce-max", "2s")
    assert (short.reannounce_first_s, short.reannounce_max_s) == (2.0, 2.0)
