"""The test harness's process mesh (simulations/lib/procmesh.py): a node whose
chosen port another process took meanwhile starts again on new ports."""

from __future__ import annotations

import socket

from simulations.lib.procmesh import ProcNode, _free_pair, http


def test_a_node_whose_api_port_was_taken_starts_on_new_ports(tmp_path):
    p2p, api = _free_pair()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", api))
        squatter.listen()
        node = ProcNode(0, tmp_path / "node0", p2p, api)
        try:
            node.start_ready([], timeout_s=20)
            assert node.api_port != api
            code, doc = http("GET", f"{node.url}/status")
            assert code == 200 and doc["p2p"] == node.p2p
            assert "address already in use" in node.log_path.read_text()
        finally:
            node.stop()
