"""The datagram shell: signed requests and replies over an injected transport.

This replaces ``rpcudp``. Differences that matter:

* only methods registered by name are callable from the network (rpcudp
  exposes every ``rpc_*`` attribute and turns any missing attribute into an
  outgoing call);
* every message is a signed envelope (``dht/envelope.py``); a reply is matched
  by message id *and* the address asked *and* the key of the node asked;
* messages to one address in one event-loop turn leave in as few datagrams as
  the datagram bound allows (``dht/coalesce.py``): a lone message as it is,
  more in a bundle, and only to an address that has answered us (so an
  unproven, perhaps spoofed, address never gets a datagram larger than any
  message, as the anti-amplification guard wants); the receiver takes each
  message of a bundle through the path of a lone datagram (rate limits,
  envelope, replay guard, the anti-amplification guard), so a bundle buys
  nothing its messages would not;
* replies and requests are bounded in size, requests in flight are bounded,
  and every task is tracked and reaped (rpcudp drops its ``ensure_future``s);
* anything malformed, oversized, unsigned, wrongly signed, stale, replayed or
  misdirected is dropped and counted, and never raises out of
  ``datagram_received``;
* in a private mesh (``DHTConfig.mesh_keys``) every datagram carries a MAC
  under the mesh key, checked before anything else: a stranger's datagram
  costs one keyed hash, is dropped (``dropped_not_member``) and answered by
  nothing, so strangers never enter a routing table;
* per-source limits (``dht/peerlimit.py``): a token bucket per source address
  and one per /24 or /48 prefix, before decoding; a source whose envelopes
  keep failing authentication is shut out for a while; expensive checks
  (signatures, new pair keys) have a node-wide budget; a reply larger than its
  request only to an address that proved itself; no exchange at all with a
  key that fails the identity puzzle.

The transport is anything with ``sendto(data, addr)`` and ``close()``: a UDP
transport in production, the simulator's in-memory network in simulation.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from workmesh.crypto.identity import Identity, puzzle_bits
from workmesh.crypto.meshkey import MeshKeyring
from workmesh.crypto.tokenauth import TokenTagger, split
from workmesh.dht.coalesce import BUNDLE_MESSAGES_MAX, BundleError, is_bundle, pack
from workmesh.dht.coalesce import split as split_bundle
from workmesh.dht.config import DHTConfig
from workmesh.dht.envelope import MSG_ID_BYTES, REPLY, REQUEST, Envelope, EnvelopeError, ReplayGuard, open_envelope, seal
from workmesh.dht.peerlimit import Offenders, PeerBuckets, ProvenAddresses, SourceKeys

# Canonical envelopes start [fixarray(9), version 1, kind, bin8(16) msg_id ...]:
# where a reply's message id sits, to exempt replies to our requests from the
# per-peer rate limit without decoding them.
_REPLY_PREFIX = bytes([0x99, 0x01, REPLY, 0xC4, MSG_ID_BYTES])
_MSG_ID_AT = slice(len(_REPLY_PREFIX), len(_REPLY_PREFIX) + MSG_ID_BYTES)


class Clock(Protocol):
    """Monotonic time for timers and leases; wall time only for envelopes and audit."""

    def monotonic(self) -> float: ...

    def wall_ms(self) -> int: ...


class Transport(Protocol):
    def sendto(self, data: bytes, addr: tuple[str, int]) -> None: ...

    def close(self) -> None: ...


class RemoteError(Exception):
    """The peer answered with an error status."""


class RPCProtocol(asyncio.DatagramProtocol):
    def __init__(
        self,
        identity: Identity,
        config: DHTConfig,
        clock: Clock,
        new_msg_id: Callable[[], bytes],
        on_request: Callable[[Envelope, tuple[str, int]], Awaitable[list | None]],
        on_error: Callable[[str, BaseException], None],
    ) -> None:
        self.identity = identity
        self.config = config
        self.clock = clock
        self._new_msg_id = new_msg_id
        self._on_request = on_request
        self._on_error = on_error
        self._replay = ReplayGuard(config.replay_window_s, config.seen_ids_max)
        # msg_id -> (future, address asked, node id expected or None)
        self._outstanding: dict[bytes, tuple[asyncio.Future, tuple[str, int], bytes | None]] = {}
        # (address, node id) -> the reply future of the latest request to that pair: what a
        # proof of the pair's address may wait for, found without scanning every request.
        self._to_pair: dict[tuple[tuple[str, int], bytes], asyncio.Future] = {}
        self._tasks: set[asyncio.Task] = set()
        # Requests being served: what the in-flight bound counts (not this node's
        # own background tasks: pings, probes, repairs, lookups).
        self._serving = 0
        self.transport: Transport | None = None
        self.dropped: Counter[str] = Counter()
        self.counters: Counter[str] = Counter()
        self._peer_buckets = (
            PeerBuckets(config.peer_datagrams_per_s, config.peer_datagram_burst, config.peer_buckets_max)
            if config.peer_datagrams_per_s > 0
            else None
        )
        self._prefix_buckets = (
            PeerBuckets(config.prefix_datagrams_per_s, config.prefix_datagram_burst, config.peer_buckets_max)
            if config.prefix_datagrams_per_s > 0
            else None
        )
        self._offenders = Offenders(
            config.auth_failures_per_s, config.auth_failure_burst, config.shutout_s, config.peer_buckets_max
        )
        self._source_keys = SourceKeys()
        self._expensive = PeerBuckets(config.expensive_checks_per_s, config.expensive_check_burst, 1)
        self.mesh = MeshKeyring(config.mesh_keys[0], config.mesh_keys[1:]) if config.mesh_keys else None
        self.token = TokenTagger(config.token_keys) if config.token_keys else None
        self._proven = ProvenAddresses(config.proven_addresses_max)
        self._proving: dict[tuple[tuple[str, int], bytes], asyncio.Future] = {}
        self._proof_pings: set[bytes] = set()  # msg ids of pings that only prove an address
        self._puzzle = config.identity_puzzle_bits
        # Messages sent this loop turn, per address, and the flush that sends them.
        self._outbox: dict[tuple[str, int], list[bytes]] = {}
        self._flush_handle: asyncio.Handle | None = None

    # -- asyncio.DatagramProtocol ----------------------------------------
    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def error_received(self, exc: Exception) -> None:  # ICMP errors and the like
        self.counters["transport_errors"] += 1

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.counters["datagrams_in"] += 1
        self.counters["bytes_in"] += len(data)
        if self.mesh is not None:
            # Before anything else: a stranger's datagram costs this one keyed hash.
            body = self.mesh.open(data)
            if body is None:
                self.dropped["not_member"] += 1
                return
            data = body
        now = self.clock.monotonic()
        source, prefix = self._source_keys(addr)
        if self._offenders.is_shut_out(source, now):
            self.dropped["shut_out"] += 1
            return
        data, tagged = split(data)
        authorized = tagged is not None and self.token is not None and self.token.check(tagged) is not None
        if not is_bundle(data):
            self._message_received(data, addr, source, prefix, authorized, now)
            return
        try:
            messages = split_bundle(data, self.config.datagram_bytes_max, BUNDLE_MESSAGES_MAX)
        except BundleError as exc:
            if self._rate_allows(source, prefix, now):  # a bad bundle draws on the buckets as garbage does
                self.dropped[exc.reason] += 1
            return
        except Exception as exc:  # a decoder bug must not take the node down
            self.dropped["decoder_error"] += 1
            self._on_error("decode", exc)
            return
        self.counters["bundles_in"] += 1
        # The tags covered the whole bundle: each message is as authenticated as a lone one.
        for i, message in enumerate(messages):
            if i and self._offenders.is_shut_out(source, now):  # shut out by an earlier message
                self.dropped["shut_out"] += len(messages) - i
                return
            self._message_received(message, addr, source, prefix, authorized, now)

    def _rate_allows(self, source: Any, prefix: str | None, now: float) -> bool:
        """Take one token of the source's and the prefix's buckets; False (and counted) if either is empty."""
        if self._peer_buckets is not None and not self._peer_buckets.allow(source, now):
            self.dropped["rate_limited"] += 1
            return False
        if self._prefix_buckets is not None and prefix is not None:
            if not self._prefix_buckets.allow(prefix, now):
                self.dropped["prefix_rate_limited"] += 1
                return False
        return True

    def _message_received(
        self, data: bytes, addr: tuple[str, int], source: Any, prefix: str | None, authorized: bool, now: float
    ) -> None:
        """One message (a lone datagram, or one of a bundle), its tags checked: limits, envelope, dispatch."""
        self.counters["messages_in"] += 1
        if not self._answers_us(data, addr) and not self._rate_allows(source, prefix, now):
            return
        try:
            env = open_envelope(
                data,
                datagram_bytes_max=self.config.datagram_bytes_max,
                identity=self.identity,
                afford=lambda: self._expensive.allow(None, now),
                authorized=authorized,
            )
        except EnvelopeError as exc:
            self.dropped[exc.reason] += 1
            if exc.reason == "bad_signature" and self._offenders.charge(source, now):
                self.counters["sources_shut_out"] += 1
            return
        except Exception as exc:  # a decoder bug must not take the node down
            self.dropped["decoder_error"] += 1
            self._on_error("decode", exc)
            return
        if env.sender_id == self.identity.node_id:
            self.dropped["from_self"] += 1
            return
        if self._puzzle and puzzle_bits(env.sender_key) < self._puzzle:
            self.dropped["puzzle_unsolved"] += 1
            return
        if env.target_id not in (b"", self.identity.node_id) or (env.kind == REPLY and not env.target_id):
            self.dropped["misdirected"] += 1
            return
        # A reply is accepted once (its request's entry goes with it), so a
        # replayed one is dropped there: only requests are remembered, or a
        # node reading hard would hold every reply it got for the window.
        reason = self._replay.check(env, self.clock.wall_ms(), remember=env.kind != REPLY)
        if reason is not None:
            self.dropped[reason] += 1
            return
        if env.kind == REPLY:
            self._accept_reply(env, addr)
        else:
            self._accept_request(env, addr, len(data))

    def _answers_us(self, data: bytes, addr: tuple[str, int]) -> bool:
        """Does ``data`` look like a reply, from the address asked, to a request of ours?"""
        if not data.startswith(_REPLY_PREFIX):
            return False
        pending = self._outstanding.get(data[_MSG_ID_AT])
        return pending is not None and pending[1] == addr

    # -- replies ----------------------------------------------------------
    def _accept_reply(self, env: Envelope, addr: tuple[str, int]) -> None:
        pending = self._outstanding.get(env.msg_id)
        if pending is None:
            self.dropped["unexpected_reply"] += 1
            return
        future, asked_addr, expected_id = pending
        if addr != asked_addr or (expected_id is not None and env.sender_id != expected_id):
            self.dropped["reply_from_wrong_peer"] += 1
            return
        if self.token is not None and not env.authorized and env.msg_id not in self._proof_pings:
            # A node without the API token: as if it had not answered (never a contact, replica or
            # source of facts). It still proves its address (anti-amplification is about addresses,
            # not rights), so the small routing and read requests it may make are answered in full.
            self._proven.add(addr, env.sender_id)
            self.dropped["unauthorized_reply"] += 1
            return
        del self._outstanding[env.msg_id]
        self.counters["replies_in"] += 1
        self._proven.add(addr, env.sender_id)  # it holds its key at the address we asked
        if not future.done():
            future.set_result(env)

    # -- requests ---------------------------------------------------------
    def _accept_request(self, env: Envelope, addr: tuple[str, int], size: int) -> None:
        if self.token is not None and not env.authorized and env.method in self.config.acting_methods:
            # Only the operator's nodes (holders of the API token) may make this node act.
            self.dropped["unauthorized"] += 1
            self.counters[f"unauthorized_{env.method}"] += 1
            return
        if self._serving >= self.config.inflight_requests_max:
            self.dropped["overloaded"] += 1
            return
        self.counters["requests_in"] += 1
        self._serving += 1
        self.spawn(self._serve(env, addr, size), "serve").add_done_callback(self._served)

    def _served(self, _task: asyncio.Task) -> None:
        self._serving -= 1

    async def _serve(self, env: Envelope, addr: tuple[str, int], size: int) -> None:
        reply_args = await self._on_request(env, addr)
        if reply_args is None:
            return
        key = env.sender_key
        data = seal(self.identity, REPLY, env.msg_id, self.clock.wall_ms(), env.sender_id, env.method, reply_args, key)
        if len(data) > self.config.datagram_bytes_max:
            self.counters["reply_too_large"] += 1
            data = seal(self.identity, REPLY, env.msg_id, self.clock.wall_ms(), env.sender_id, "error", ["reply_too_large"], key)
        if len(data) > size and self.config.amplification_guard and not await self._prove(addr, env):
            # Say so in a short error (the requester stops waiting, and does not count a lost
            # reply against us), or, when even that would outgrow the request, stay silent.
            self.dropped["unproven_large_reply"] += 1
            data = seal(self.identity, REPLY, env.msg_id, self.clock.wall_ms(), env.sender_id, "error", ["unproven"], key)
            if len(data) > size:
                return
        self._send(data, addr)

    def is_proven(self, addr: tuple[str, int], node_id: bytes) -> bool:
        """Has ``node_id`` answered a request of ours sent to ``addr`` (so it holds its key there)?"""
        return (addr, node_id) in self._proven

    async def _prove(self, addr: tuple[str, int], env: Envelope) -> bool:
        """Has ``env``'s sender proved it receives at ``addr``? If not yet, ping it there
        (one ping per pair at a time; the ping is no larger than any request)."""
        pair = (addr, env.sender_id)
        if pair in self._proven:
            return True
        pending = self._proving.get(pair)
        if pending is None:
            if len(self._proving) >= self.config.pending_verifications_max:
                return False
            pending = self._proving[pair] = self.spawn(self._ping_to_prove(addr, env), "prove_address")
            pending.add_done_callback(lambda _: self._proving.pop(pair, None))
        self.counters["proofs_awaited"] += 1
        await asyncio.shield(pending)
        return pair in self._proven

    async def _ping_to_prove(self, addr: tuple[str, int], env: Envelope) -> None:
        """Two quick chances (a lost ping must not cost the requester its reply). A
        request already on its way to the pair (the owner verifying a new sender)
        counts as the first, so an unproven address is not sent pings twice over."""
        pair, attempts = (addr, env.sender_id), 2
        future = self._to_pair.get(pair)
        if future is not None:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(future), self.config.rpc_timeout_s / 2)
            if pair in self._proven:
                return
            attempts = 1
        for _ in range(attempts):
            reply = await self.request(
                addr, "ping", [], expect_id=env.sender_id, peer_key=env.sender_key,
                timeout_s=self.config.rpc_timeout_s / 4, proof_only=True,
            )
            if reply is not None:
                return

    def spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task:
        """Run ``coro`` in a tracked task whose exception is reported, never lost."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._reap(t, name))
        return task

    def _reap(self, task: asyncio.Task, name: str) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self.counters["task_errors"] += 1
            self._on_error(name, exc)

    # -- outgoing ---------------------------------------------------------
    def _send(self, data: bytes, addr: tuple[str, int]) -> None:
        """Queue one message for ``addr``; what one loop turn queued leaves in one flush."""
        if self.transport is None:
            return
        self.counters["messages_out"] += 1
        if not self.config.coalesce:
            self._transmit(data, addr)
            return
        pending = self._outbox.get(addr)
        if pending is None:
            self._outbox[addr] = [data]
        else:
            pending.append(data)
        if self._flush_handle is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop turn to wait for
                self.flush()
                return
            self._flush_handle = loop.call_soon(self.flush)

    def flush(self) -> None:
        """Send what is queued: per address, as few datagrams as the bound allows."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        outbox, self._outbox = self._outbox, {}
        for addr, messages in outbox.items():
            if len(messages) > 1 and not self._proven.has_address(addr):
                # Anti-amplification, datagram by datagram: an address that never answered us
                # (perhaps a spoofed source) gets nothing larger than what it sent, so one
                # datagram per message, as it would have without coalescing.
                self.counters["unproven_not_coalesced"] += 1
                for data in messages:
                    self._transmit(data, addr)
                continue
            for data in pack(messages, self.config.datagram_bytes_max, BUNDLE_MESSAGES_MAX):
                if is_bundle(data):
                    self.counters["bundles_out"] += 1
                self._transmit(data, addr)

    def _transmit(self, data: bytes, addr: tuple[str, int]) -> None:
        """One datagram: tagged, sealed by the mesh key, sent."""
        if self.transport is None:
            return
        self.counters["datagrams_out"] += 1
        if self.token is not None:
            data = self.token.tag(data)
        if self.mesh is not None:
            data = self.mesh.seal(data)
        self.counters["bytes_out"] += len(data)
        try:
            self.transport.sendto(data, addr)
        except OSError:
            self.counters["send_errors"] += 1

    async def request(
        self,
        addr: tuple[str, int],
        method: str,
        args: list,
        *,
        expect_id: bytes | None,
        peer_key: bytes | None = None,
        timeout_s: float | None = None,
        proof_only: bool = False,
    ) -> Envelope | None:
        """Send a request; the verified reply envelope, or ``None`` on timeout.

        With ``peer_key`` (the recipient's public key) the envelope carries a
        pair MAC; without it (a first ping by address), a signature.
        ``proof_only``: the reply only proves the peer's address (anti-
        amplification), so it is taken from a node without the API token too.
        """
        if len(self._outstanding) >= self.config.outstanding_max:
            self.counters["outstanding_full"] += 1
            return None
        if self._puzzle and peer_key is not None and puzzle_bits(peer_key) < self._puzzle:
            self.counters["puzzle_unsolved_skipped"] += 1
            return None
        msg_id = self._new_msg_id()
        data = seal(self.identity, REQUEST, msg_id, self.clock.wall_ms(), expect_id or b"", method, args, peer_key)
        if len(data) > self.config.datagram_bytes_max:
            raise ValueError(f"request of {len(data)} bytes exceeds the datagram bound")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._outstanding[msg_id] = (future, addr, expect_id)
        pair = (addr, expect_id) if expect_id is not None else None
        if pair is not None:
            self._to_pair[pair] = future
        if proof_only:
            self._proof_pings.add(msg_id)
        self.counters["requests_out"] += 1
        self._send(data, addr)
        # A timer on the reply's own future (None when it fires), not
        # asyncio.wait_for: one handle per request instead of a second future
        # and its callbacks, on the path of every RPC.
        timer = loop.call_later(timeout_s or self.config.rpc_timeout_s, self._time_out, future)
        try:
            return await future
        finally:
            timer.cancel()
            self._outstanding.pop(msg_id, None)
            self._proof_pings.discard(msg_id)
            if pair is not None and self._to_pair.get(pair) is future:
                del self._to_pair[pair]

    def _time_out(self, future: asyncio.Future) -> None:
        if not future.done():
            self.counters["timeouts"] += 1
            future.set_result(None)

    def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for future, _, _ in self._outstanding.values():
            if not future.done():
                future.cancel()
        self._outstanding.clear()
        self._to_pair.clear()
        self.flush()  # replies already made still leave
        if self.transport is not None:
            self.transport.close()
            self.transport = None

    def statistics(self) -> dict[str, int]:
        stats = dict(self.counters)
        stats.update({f"dropped_{k}": v for k, v in self.dropped.items()})
        stats["dropped_total"] = sum(self.dropped.values())
        # Membership: mesh keys accepted (0 = an open mesh), token authorization on (1) or off.
        stats["mesh_keys"] = len(self.mesh.keys) if self.mesh is not None else 0
        stats["token_auth"] = int(self.token is not None)
        stats["sources_shut_out_now"] = len(self._offenders)
        stats["inflight_requests"] = self._serving
        stats["tasks"] = len(self._tasks)
        stats["outstanding_requests"] = len(self._outstanding)
        return stats
