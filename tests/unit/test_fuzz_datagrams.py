"""Fuzzing the datagram path of a real node: ``RPCProtocol.datagram_received``.

A real :class:`node.node.Node` (its DHTServer, protocol and every registered
RPC) listens on a loopback UDP socket. Hypothesis feeds its protocol arbitrary
bytes and valid envelopes that were truncated, extended or had bytes flipped.
For every datagram, exactly one of three things happens: it is dropped and the
drop is counted in ``protocol.dropped``, or it is accepted as a request, or it
is accepted as a reply. Nothing raises out of ``datagram_received``, no
decoder error is counted, no handler task fails, memory stops growing once
the bounded caches are full, and the node still answers a real ping over UDP
afterwards.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
import tracemalloc
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workmesh.dht.coalesce import BundleError, bundle, is_bundle
from workmesh.dht.coalesce import split as split_bundle
from workmesh.dht.config import DHTConfig
from workmesh.dht.envelope import REPLY, REQUEST, seal
from workmesh.node.config import NodeConfig
from workmesh.node.node import Node
from tests.integration.test_dht_adversarial import JOB_A, RawPeer

FUZZ_SETTINGS = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)


class Harness:
    """A started node and a raw peer on one private event loop, driven from sync tests."""

    def __init__(self, data_dir: str, dht: DHTConfig | None = None) -> None:
        self.loop = asyncio.new_event_loop()
        config = NodeConfig(data_dir=data_dir, workers=0, reannounce_first_s=3600.0)
        # The fuzzing peer sends forged signatures by the thousand: shutting it out
        # (dht/peerlimit.py Offenders, tested in test_membership_udp.py) would stop the
        # fuzzing itself, so the harness lets it keep failing.
        dht = replace(dht or replace(config.dht, rpc_timeout_s=0.3), auth_failure_burst=10**9,
                      expensive_check_burst=10**9)
        self.node = Node(replace(config, dht=dht))
        self.run(self.node.start())
        self.peer = RawPeer()
        # Answer what a node may ask back while handling a fuzzed request, so nothing waits for a timeout.
        self.peer.handlers.update(
            find_node=lambda a: [], find_records=lambda a: [False, []], store=lambda a: [False, [], []],
            sync=lambda a: [True, []], announce=lambda a: [], cancel_job=lambda a: [503, "no"],
        )
        self.run(self.peer.__aenter__())
        self.proto = self.node.dht.protocol
        self.errors: list[tuple[str, BaseException]] = []
        self.node.dht.protocol._on_error = lambda name, exc: self.errors.append((name, exc))
        self.baseline_tasks = len(self.proto._tasks)

    def run(self, coro):
        return self.loop.run_until_complete(coro)

    def ts(self) -> int:
        return int(time.time() * 1000)

    def envelope(self, method: str, args: list, *, kind: int = REQUEST, mac: bool = True) -> bytes:
        return self.peer.envelope(self.node, method, args, kind=kind, mac=mac)

    def counts(self) -> tuple[int, int, int]:
        stats = self.proto.statistics()
        return stats["dropped_total"], stats.get("requests_in", 0), stats.get("replies_in", 0)

    def settle(self, timeout_s: float = 5.0) -> None:
        """Wait until every request handler the fuzzing started has finished."""

        async def wait() -> None:
            deadline = time.monotonic() + timeout_s
            while len(self.proto._tasks) > self.baseline_tasks:
                if time.monotonic() > deadline:
                    import io
                    out = io.StringIO()
                    for t in self.proto._tasks:
                        if "_serve" in t.get_coro().__qualname__:
                            t.print_stack(file=out)
                    running = out.getvalue()
                    raise AssertionError(f"handler tasks still running: {running}")
                await asyncio.sleep(0.005)

        self.run(wait())

    def feed(self, data: bytes) -> tuple[int, int, int]:
        """One datagram into the protocol, from inside the loop, as the loop would
        deliver it; returns how it was accounted (dropped, requests, replies)."""

        async def deliver() -> tuple[int, int, int]:
            before = self.counts()
            self.proto.datagram_received(data, self.peer.addr)  # must not raise
            return tuple(a - b for a, b in zip(self.counts(), before))

        return self.run(deliver())

    def assert_still_serving(self) -> None:
        reply = self.run(self.peer.request(self.node, "ping", [], timeout_s=5.0))
        assert reply is not None and reply.method == "ping", "the node stopped answering pings"
        assert self.proto.dropped.get("decoder_error", 0) == 0
        assert self.proto.counters.get("task_errors", 0) == 0, self.errors
        assert not self.errors, self.errors

    def close(self) -> None:
        self.run(self.peer.__aexit__(None, None, None))
        self.run(self.node.stop())
        self.run(asyncio.sleep(0.05))  # let the cancelled background loops unwind
        self.loop.close()


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    h = Harness(str(tmp_path_factory.mktemp("fuzz-datagrams")))
    # Positive control: the peer can store a submission, so valid envelopes really are accepted.
    reply = h.run(h.peer.request(h.node, "store", [JOB_A[0].job_id, [JOB_A[0].raw]]))
    assert reply is not None and reply.args[0] is True
    h.settle()
    yield h
    h.close()


def _messages(h: Harness, data: bytes) -> int:
    """How many messages the node must account for: each of a bundle that splits, else the datagram."""
    if not is_bundle(data):
        return 1
    try:
        return len(split_bundle(data, h.node.config.dht.datagram_bytes_max))
    except BundleError:
        return 1


def _accounted_once(h: Harness, data: bytes) -> tuple[int, int, int]:
    delta = h.feed(data)
    assert sum(delta) == _messages(h, data), f"datagram accounted {delta} (dropped, requests, replies)"
    return delta


@FUZZ_SETTINGS
@given(data=st.binary(max_size=2048))
def test_arbitrary_bytes_are_dropped_and_counted(harness, data):
    delta = _accounted_once(harness, data)
    assert delta[1:] == (0, 0)


# Valid envelopes of every method, request and reply, signed and MAC'd.
_METHODS = ["ping", "find_node", "find_records", "store", "sync", "cancel_job", "announce", "nope"]


@st.composite
def mutated_envelopes(draw) -> bytes:
    h = _HARNESS_FOR_STRATEGY[0]
    method = draw(st.sampled_from(_METHODS))
    kind = draw(st.sampled_from([REQUEST, REPLY]))
    args = draw(st.lists(st.one_of(st.binary(max_size=40), st.integers(0, 2**32), st.text(max_size=20)), max_size=4))
    data = bytearray(h.envelope(method, args, kind=kind, mac=draw(st.booleans())))
    ops = draw(st.lists(st.tuples(st.sampled_from("tfid"), st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=4))
    for op, pos, byte in ops:
        if not data:
            break
        pos %= len(data)
        if op == "t":
            del data[pos:]
        elif op == "f":
            data[pos] ^= byte or 1
        elif op == "i":
            data.insert(pos, byte)
        else:
            del data[pos]
    return bytes(data)


_HARNESS_FOR_STRATEGY: list[Harness] = []


def test_mutated_envelopes_are_dropped_or_served_never_raise(harness):
    _HARNESS_FOR_STRATEGY[:] = [harness]
    seen = {"dropped": 0, "accepted": 0}

    @FUZZ_SETTINGS
    @given(data=mutated_envelopes())
    def run(data):
        delta = _accounted_once(harness, data)
        seen["dropped" if delta[0] else "accepted"] += 1

    run()
    harness.settle()
    assert seen["dropped"] > 0
    harness.assert_still_serving()


def test_bundles_of_mutated_envelopes_account_for_each_message_never_raise(harness):
    """Coalesced datagrams (dht/coalesce.py): each message of a bundle is accounted
    as a lone datagram would be, and a frame that does not split is dropped once."""
    _HARNESS_FOR_STRATEGY[:] = [harness]
    seen = {"split": 0, "refused": 0}

    @FUZZ_SETTINGS
    @given(items=st.lists(mutated_envelopes(), min_size=2, max_size=5), cut=st.integers(0, 40), flip=st.integers(0, 300))
    def run(items, cut, flip):
        data = bytearray(bundle(items))
        if cut:  # sometimes truncated
            del data[len(data) - cut:]
        if flip < len(data) and flip % 3 == 0:  # sometimes a byte of the frame flipped
            data[flip] ^= 0x5A
        _accounted_once(harness, bytes(data))
        seen["split" if _messages(harness, bytes(data)) > 1 else "refused"] += 1

    run()
    harness.settle()
    assert seen["split"] > 0 and seen["refused"] > 0
    harness.assert_still_serving()


def test_valid_requests_of_every_method_are_accepted_positive_control(harness):
    """The accounting above could pass by dropping everything: show valid input is served."""
    for method in _METHODS[:-1]:
        assert _accounted_once(harness, harness.envelope(method, [])) == (0, 1, 0)
    assert _accounted_once(harness, harness.envelope("nope", [])) == (0, 1, 0)  # dropped later: unknown_method
    harness.settle()
    assert harness.proto.dropped["unknown_method"] >= 1
    harness.assert_still_serving()


def _random_datagram(rng: random.Random, h: Harness) -> bytes:
    choice = rng.random()
    if choice < 0.4:
        return rng.randbytes(rng.randrange(1, 1500))
    method = rng.choice(_METHODS)
    args = [rng.randbytes(rng.randrange(0, 64)) for _ in range(rng.randrange(0, 4))]
    data = bytearray(h.envelope(method, args, mac=rng.random() < 0.8))
    if choice < 0.8:
        data[rng.randrange(len(data))] ^= 1 + rng.randrange(255)
    elif choice < 0.9:
        del data[rng.randrange(1, len(data)):]
    return bytes(data)  # else: a valid request with random arguments


def test_memory_stays_bounded_over_thousands_of_bad_datagrams(tmp_path):
    # Small bounds on the caches, so they fill during the warm-up and the
    # measurement sees only what leaks.
    h = Harness(str(tmp_path / "mem"), dht=DHTConfig(rpc_timeout_s=0.3, seen_ids_max=100))
    try:
        rng = random.Random(6)
        for _ in range(1500):  # warm-up: caches, interned strings, counters
            h.feed(_random_datagram(rng, h))
        h.settle()
        # Built before measuring: the sender's own signatures are not the receiver's memory.
        first = [_random_datagram(rng, h) for _ in range(2000)]
        second = [_random_datagram(rng, h) for _ in range(3000)]

        def deliver(batch: list[bytes]) -> None:
            for i, data in enumerate(batch):
                h.feed(data)
                if i % 200 == 199:
                    h.settle()
            h.settle()

        tracemalloc.start()
        try:
            start, _ = tracemalloc.get_traced_memory()
            started = time.monotonic()
            deliver(first)
            after_first = tracemalloc.get_traced_memory()[0] - start
            deliver(second)
            after_second = tracemalloc.get_traced_memory()[0] - start
        finally:
            tracemalloc.stop()
        elapsed = time.monotonic() - started
        print(f"5000 datagrams in {elapsed:.2f}s under tracemalloc; heap +{after_first / 1024:.0f} KiB after 2000, "
              f"+{after_second / 1024:.0f} KiB after 5000")
        # Bounded caches churn but do not grow: 3000 more datagrams may not add 32 bytes each.
        assert after_second - after_first < 3000 * 32, (after_first, after_second)
        h.assert_still_serving()
    finally:
        h.close()
