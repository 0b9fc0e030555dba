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
