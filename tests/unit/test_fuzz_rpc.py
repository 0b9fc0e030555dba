"""Fuzzing every RPC handler a real node registers, over a real loopback UDP socket.

The methods are read from the node itself (``DHTServer._handlers``), so an RPC
added later is fuzzed too. Each request is a correctly authenticated envelope
(the fuzzing peer is a legitimate identity) whose arguments hypothesis picks:
arbitrary lists of canonical values, and each method's valid arguments with
one position replaced by a value of another type or size. Every request must
end one of two ways: a signed reply, or a drop counted as ``bad_arguments``.
No handler task fails, no decoder error is counted, and the node answers a
ping afterwards.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration.test_dht_adversarial import JOB_A, JOB_B
from tests.unit.test_fuzz_datagrams import Harness

# Valid arguments of each method; unknown methods get [].
VALID_ARGS = {
    "ping": [],
    "find_node": [os.urandom(20)],
    "find_records": [JOB_A[0].job_id, b""],
    "store": [JOB_A[0].job_id, [JOB_A[0].raw]],
    "store_many": [[JOB_A[0].job_id, [JOB_A[0].raw]], [JOB_B[0].job_id, [JOB_B[0].raw]]],
    "sync": [JOB_A[0].job_id, b"\x00" * 16],
    "cancel_job": [JOB_B[0].job_id, "fuzz"],
    "announce": [JOB_A[0].job_id, "echo", 2, b"\x01" * 8, [JOB_A[0].raw]],
    "store_chunk": [hashlib.sha256(b"chunk").digest(), b"chunk"],
    "fetch_chunk": [hashlib.sha256(b"chunk").digest()],
    "touch_chunks": [[hashlib.sha256(b"chunk").digest()]],
    "drop_chunks": [[hashlib.sha256(b"chunk").digest()]],
}

leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.text(max_size=40),
    st.binary(max_size=64),
    st.sampled_from([b"", b"\x00" * 8, b"\x00" * 16, os.urandom(20), os.urandom(32), JOB_A[0].job_id, JOB_A[0].raw,
                     JOB_A[1].raw, JOB_B[0].raw, "echo", -1, 0, 17, 2**63]),
)
values = st.recursive(leaves, lambda inner: st.lists(inner, max_size=5), max_leaves=12)


@st.composite
def arguments(draw, method: str) -> list:
    valid = VALID_ARGS.get(method, [])
    how = draw(st.sampled_from(["arbitrary", "one_replaced", "one_missing", "one_extra"]))
    if how == "arbitrary" or not valid:
        return draw(st.lists(values, max_size=6))
    args = list(valid)
    i = draw(st.integers(0, len(args) - 1))
    if how == "one_replaced":
        args[i] = draw(values)
    elif how == "one_missing":
        del args[i]
    else:
        args.insert(i, draw(values))
    return args


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    h = Harness(str(tmp_path_factory.mktemp("fuzz-rpc")))
    reply = h.run(h.peer.request(h.node, "store", [JOB_A[0].job_id, [JOB_A[0].raw]]))
    assert reply is not None and reply.args[0] is True
    h.settle()
    yield h
    h.close()


async def _answered_or_refused(h: Harness, method: str, args: list, timeout_s: float = 5.0) -> str:
    """Send one request over UDP; 'reply' when answered, 'refused' when dropped as bad arguments."""
    data = h.envelope(method, args)
    refused_before = h.proto.dropped["bad_arguments"]
    reply = asyncio.ensure_future(h.peer.request_bytes(data, h.node, timeout_s))
    deadline = time.monotonic() + timeout_s
    while not reply.done():
        if h.proto.dropped["bad_arguments"] > refused_before:
            reply.cancel()
            return "refused"
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.002)
    env = await reply if not reply.cancelled() else None
    assert env is not None, f"{method}{args!r}: neither answered nor counted as bad arguments"
    assert env.sender_id == h.node.identity.node_id
    return "reply"


def test_every_handler_answers_or_refuses_any_arguments(harness):
    methods = sorted(harness.node.dht._handlers)
    assert {"ping", "find_node", "find_records", "store", "sync", "cancel_job", "announce"} <= set(methods)
    outcomes: dict[str, dict[str, int]] = {}
    started = time.monotonic()
    for method in methods:
        seen = outcomes.setdefault(method, {"reply": 0, "refused": 0})

        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
        @given(args=arguments(method))
        def run(args):
            seen[harness.run(_answered_or_refused(harness, method, args))] += 1

        # The valid arguments are answered (positive control of the oracle).
        assert harness.run(_answered_or_refused(harness, method, VALID_ARGS.get(method, []))) == "reply", method
        run()
    harness.settle()
    print(f"{sum(sum(o.values()) for o in outcomes.values())} fuzzed requests in {time.monotonic() - started:.1f}s:",
          outcomes)
    harness.assert_still_serving()
    # The fuzzer really reached the argument checks of the methods that have any.
    for method in VALID_ARGS:
        if VALID_ARGS[method]:
            assert outcomes[method]["refused"] > 0, (method, outcomes[method])
