"""Mesh keys (crypto/meshkey.py) and the commands that make and load them."""

from __future__ import annotations

import os
import stat

import pytest

from workmesh.crypto.errors import CryptoError
from workmesh.crypto.meshkey import (
    MESH_KEY_BYTES,
    MESH_TAG_BYTES,
    MeshKeyring,
    load_mesh_keyring,
    new_mesh_key,
    write_mesh_key_file,
)
from workmesh.node.cli import build_parser, config_from_args, main


def test_a_sealed_datagram_opens_with_the_same_key_only():
    k1, k2 = new_mesh_key(), new_mesh_key()
    sealed = MeshKeyring(k1).seal(b"body")
    assert len(sealed) == len(b"body") + MESH_TAG_BYTES
    assert MeshKeyring(k1).open(sealed) == b"body"
    assert MeshKeyring(k2).open(sealed) is None
    # Any changed byte, tag or body, and it no longer opens.
    for i in range(len(sealed)):
        tampered = bytearray(sealed)
        tampered[i] ^= 1
        assert MeshKeyring(k1).open(bytes(tampered)) is None
    assert MeshKeyring(k1).open(sealed[:MESH_TAG_BYTES]) is None
    assert MeshKeyring(k1).open(b"") is None


def test_a_rotating_ring_accepts_both_keys_and_sends_with_the_current_one():
    old, new = new_mesh_key(), new_mesh_key()
    # Step 1: every node accepts the new key besides the old one, still sends with the old.
    step1 = MeshKeyring(old, [new])
    # Step 2: the new key is current, the old one still accepted.
    step2 = MeshKeyring(new, [old])
    # Step 3: the old key is gone.
    step3 = MeshKeyring(new)
    assert step1.open(step2.seal(b"x")) == b"x" and step2.open(step1.seal(b"x")) == b"x"
    assert step2.open(step3.seal(b"x")) == b"x" and step3.open(step2.seal(b"x")) == b"x"
    assert step3.open(MeshKeyring(old).seal(b"x")) is None
    assert MeshKeyring(old).open(step1.seal(b"x")) == b"x"  # step 1 still speaks to a node not yet told


def test_the_key_file_is_new_private_and_never_overwritten(tmp_path):
    path = tmp_path / "mesh.key"
    key = write_mesh_key_file(path)
    assert len(key) == MESH_KEY_BYTES
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_mesh_keyring(path).current == key
    with pytest.raises(FileExistsError):
        write_mesh_key_file(path)
    assert load_mesh_keyring(path).current == key


def test_a_key_file_with_a_second_line_accepts_that_key_too(tmp_path):
    k1, k2 = new_mesh_key(), new_mesh_key()
    path = tmp_path / "ring.key"
    path.write_text(f"{k1.hex()}\n# next key\n{k2.hex()}\n")
    ring = load_mesh_keyring(path)
    assert ring.keys == (k1, k2)
    for bad in ("", "zz\n", "abcd\n"):
        path.write_text(bad)
        with pytest.raises(CryptoError):
            load_mesh_keyring(path)
    with pytest.raises(CryptoError):
        load_mesh_keyring(tmp_path / "missing")


def test_workmesh_mesh_key_writes_a_key_and_refuses_to_overwrite(tmp_path, capsys):
    path = tmp_path / "k"
    assert main(["mesh-key", str(path)]) == 0
    key = path.read_text()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert main(["mesh-key", str(path)]) == 1
    assert path.read_text() == key
    assert "never overwritten" in capsys.readouterr().err


def test_start_flags_and_env_reach_the_dht_config(tmp_path, monkeypatch):
    path = tmp_path / "k"
    key = write_mesh_key_file(path)
    base = ["start", "--data-dir", str(tmp_path), "--p2p-port", "0", "--api-port", "0"]
    config = config_from_args(build_parser().parse_args([*base, "--mesh-key", str(path), "--contacts-per-prefix-max", "2"]))
    assert config.dht.mesh_keys == (key,) and config.dht.contacts_per_prefix_max == 2
    monkeypatch.setenv("WORKMESH_MESH_KEY_FILE", str(path))
    assert config_from_args(build_parser().parse_args(base)).dht.mesh_keys == (key,)
    assert key.hex() not in repr(config)  # key material never printed with the config


def test_a_node_off_loopback_refuses_to_start_without_a_mesh_key(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("WORKMESH_MESH_KEY_FILE", raising=False)
    argv = ["start", "--host", "0.0.0.0", "--api-token", "t", "--data-dir", str(tmp_path), "--p2p-port", "0", "--api-port", "0"]
    assert main(argv) == 2
    assert "--mesh-key" in capsys.readouterr().err
    # A bad key file is refused as clearly.
    bad = tmp_path / "bad.key"
    bad.write_text("nothex\n")
    assert main([*argv, "--mesh-key", str(bad)]) == 2
    assert "not a hex mesh key" in capsys.readouterr().err
