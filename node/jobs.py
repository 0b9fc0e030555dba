"""The client-facing job operations every node offers: submit, read, cancel, list.

These are what the REST layer calls (``workmesh.contract.JobService``). A node
needs no special role for any of them: it reads and writes the job's facts
on the job's replicas, wherever those are.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

from workmesh.contract import JobView
from workmesh.crypto.identity import Identity
from workmesh.dht.routing import target_node
from workmesh.dht.server import DHTServer
from workmesh.node import facts as F
from workmesh.node import ballots, keyed, lifecycle, placement
from workmesh.node.errors import (
    Conflict,
    IdempotencyKeyReused,
    JobGone,
    JobNotFound,
    QuorumUnavailable,
    UnknownJobType,
    ValidationFailed,
)
from workmesh.node.jobindex import JobIndex
from workmesh.node.proposer import RoundDriver
from workmesh.node.reads import WIDER_READ, read_job
from workmesh.node.signer import TurnSigner
from workmesh.node.watch import JobWatch

# Long-polls re-read the job's replicas with backoff (node/watch.py), one read
# per job for all its waiters: a node that is not a placed replica (nobody
# pushes it changes) from POLL_S_MIN doubling up to POLL_S_MAX; a placed
# replica (pushed every change) only as a safety net for a lost push, from
# POLL_S_REPLICA up to POLL_S_REPLICA_MAX. A short job is seen as soon as
# before (reads at 0.05, 0.15, 0.35, 0.75 s...); a 60 s wait on a non-replica
# costs about 30 reads, where a fixed 0.5 s loop cost 120.
POLL_S_MIN = 0.05
POLL_S_MAX = 2.0
POLL_S_REPLICA = 1.0
POLL_S_REPLICA_MAX = 4.0
# A node that sees fewer nodes than r looks itself up again before placing a
# job, at most this often (a mesh that is really that small pays one lookup
# per interval).
VIEW_REFRESH_S = 5.0
# A cancel of a keyed job received by a node that did not accept it asks at
# most this many contacts whether they did (node/keyed.py).
OWNER_ASKS_MAX = 16


def view(state: lifecycle.JobState, *, history: bool = False) -> JobView:
    spec: F.Submit = state.submit.body
    return JobView(
        id=state.job_id.hex(),
        type=spec.job_type,
        status=state.status,
        attempts=state.attempts,
        max_attempts=spec.max_attempts,
        result=state.result,
        error=state.error,
        worker=state.worker.hex() if state.worker else None,
        submitted_by=state.submit.author_id.hex(),
        created_ms=spec.created_ms,
        last_error=state.last_error,
        history=[_fact_json(f) for f in state.facts] if history else None,
    )


def _fact_json(f: F.Fact) -> dict[str, Any]:
    body = f.body
    out: dict[str, Any] = {
        "kind": f.kind,
        "fact_id": f.fact_id.hex(),
        "author": f.author_id.hex(),
        "attempt": f.attempt,
        "ts_ms": getattr(body, "ts_ms", getattr(body, "created_ms", 0)),
        "raw_b64": base64.b64encode(f.raw).decode(),
    }
    if f.kind == F.GRANT:
        out["action"] = body.action
        out["subject"] = body.subject.hex()
    elif f.kind == F.RESULT:
        out["outcome"] = body.outcome
    elif f.kind == F.BALLOT:
        out["action"] = body.step
        out["round"] = body.round
        out["proposer"] = body.proposer.hex()
        out["subject"] = body.subject.hex()
    return out


class JobOperations:
    def __init__(
        self,
        identity: Identity,
        dht: DHTServer,
        index: JobIndex,
        job_types: frozenset[str],
        *,
        defaults: Any,  # NodeConfig
        wall_ms: Callable[[], int],
        announce: Callable[[F.Fact, F.Fact, frozenset[bytes]], None],
        watch: JobWatch,
        spawn: Callable[[Awaitable[Any], str], asyncio.Future] | None = None,
    ) -> None:
        self.identity = identity
        # Where work that outlives a request runs: the node's own tasks (node/tasks.py).
        self._spawn = spawn or (lambda coro, name: asyncio.ensure_future(coro))
        self.dht = dht
        self.index = index
        self.job_types = job_types
        self.defaults = defaults
        self.wall_ms = wall_ms
        self._announce = announce
        self.watch = watch
        self._largest_mesh = 1
        self._driver: RoundDriver | None = None
        self._widened_at = float("-inf")
        self._widening: asyncio.Future | None = None
        self.expects_peers = False  # set once the node was given bootstrap addresses
        # A local worker slot that claims a new job in the store placing it
        # (the node plugs in its worker pool's ``take_fresh``); None: no slot.
        self.take_fresh: Callable[[F.Fact, F.Fact], Awaitable[Any] | None] = lambda submit, place: None
        self.counters = {
            "submitted": 0, "submit_quorum_missed": 0, "cancels": 0, "reads": 0, "local_reads": 0, "placed_off_closest": 0,
            "view_refreshes_failed": 0, "idempotent_replays": 0, "idempotency_conflicts": 0, "cancels_forwarded": 0,
        }
        # The owners of the keyed jobs this node signed (node/keyed.py): it can
        # cancel them. The node gives it a file (Owners(path=...)) to keep them.
        self.owners = keyed.Owners()

    def derive_local(self, job_id: bytes) -> lifecycle.JobState | None:
        """The state of what the local store holds for a job."""
        return self.dht.records.state(job_id)

    # -- submit -----------------------------------------------------------------
    def mesh_seen(self) -> int:
        """The largest mesh this node has seen: its contacts, the contacts it
        evicted (they may be back), and itself; or the nodes lookups named, if
        more (a thin table after a lossy join must not shrink new jobs)."""
        seen = max(len(self.dht.router) + self.dht.dormant_count(), self.dht.heard_count()) + 1
        self._largest_mesh = max(self._largest_mesh, seen)
        return self._largest_mesh

    def replica_plan(self) -> tuple[int, int]:
        """(replicas, quorum) for a new job: r, or the whole mesh when it is
        smaller. "The mesh" is the largest this node has seen: a node cut off
        from its peers must not shrink new jobs onto itself."""
        cfg = self.defaults.dht
        if self.expects_peers and not (len(self.dht.router) and self.dht.stats["find_node_replies"]):
            # Told to join a mesh but alone, or no lookup was ever answered (a
            # lossy join left one contact, and the table looks like a mesh of
            # two): a job placed from this view would go to too few replicas,
            # one crash from lost. Refuse until the node has joined.
            self.counters["submit_quorum_missed"] += 1
            raise QuorumUnavailable("this node has not joined its mesh yet; retry later")
        mesh = self.mesh_seen()
        if mesh >= cfg.replicas:
            return cfg.replicas, cfg.quorum
        # An odd count: with an even one, two subjects can each get half of
        # the seals and neither a majority.
        size = mesh if mesh % 2 else mesh - 1
        byzantine = self.defaults.byzantine
        if byzantine and size < 3 * byzantine + 1:
            self.counters["submit_quorum_missed"] += 1
            raise QuorumUnavailable(f"--byzantine {byzantine} needs {3 * byzantine + 1} replicas; this mesh has {mesh} nodes")
        return size, ballots.quorum_size(size, byzantine)

    async def _widen_thin_view(self) -> None:
        """Before placing a job from a view of fewer than r nodes, look this
        node up again: a lossy join, or a join while the mesh was still
        booting, can leave a thin routing table in a big mesh, and a job
        placed from it would go to too few replicas (the simulator found
        jobs placed on the accepting node alone in a 12-node mesh at 20%
        loss). Concurrent submits share one lookup; at most one per
        ``VIEW_REFRESH_S``."""
        if not self.expects_peers or self.mesh_seen() >= self.defaults.dht.replicas:
            return
        if self._widening is None:
            now = self.dht.clock.monotonic()
            if now - self._widened_at < VIEW_REFRESH_S:
                return
            self._widened_at = now
            self._widening = self._spawn(self.dht.bootstrap([]), "widen_view")
            self._widening.add_done_callback(lambda _f: setattr(self, "_widening", None))
        try:
            await asyncio.shield(self._widening)
        except Exception:  # the view stays as it was; replica_plan judges it
            self.counters["view_refreshes_failed"] += 1

    async def submit(
        self,
        job_type: str,
        payload: Any,
        *,
        max_attempts: int | None = None,
        lease_seconds: float | None = None,
        timeout_seconds: float | None = None,
        idempotency_key: str | None = None,
    ) -> JobView:
        if job_type not in self.job_types:
            raise UnknownJobType(f"unknown job type {job_type!r}; known: {', '.join(sorted(self.job_types))}")
        payload_json = F.canonical_json(payload)
        if len(payload_json) > F.PAYLOAD_BYTES_MAX:
            raise ValidationFailed(f"payload exceeds {F.PAYLOAD_BYTES_MAX} bytes")
        signer, existing = self.identity, None
        if idempotency_key is not None:
            # One key is one job on every node (node/keyed.py): find it, or
            # sign the very submission any other node would sign for it.
            seed = keyed.owner_seed(idempotency_key)
            signer = Identity.from_seed(seed)
            fingerprint = keyed.fingerprint(job_type, payload, max_attempts, lease_seconds, timeout_seconds)
            existing = await self._keyed_existing(signer, seed, fingerprint)
            if existing is not None and existing.placement is not None:
                return await self._resubmitted(existing)
        await self._widen_thin_view()
        replicas, quorum = self.replica_plan()
        defaults = self.type_defaults(job_type)
        max_attempts = max_attempts or defaults.get("max_attempts") or self.defaults.max_attempts
        lease_ms = int((lease_seconds or self.defaults.lease_s) * 1000)
        timeout_ms = int((timeout_seconds or defaults.get("timeout_seconds") or self.defaults.job_timeout_s) * 1000)
        if idempotency_key is not None:
            nonce = keyed.nonce(signer.public_key, fingerprint)
            created_ms = 0  # the same bytes on every node: no clock reading
        else:
            nonce = hashlib.blake2b(self.identity.node_id + self.wall_ms().to_bytes(8, "big") + payload_json + bytes(self.counters["submitted"].to_bytes(8, "big")), digest_size=F.NONCE_BYTES).digest()
            created_ms = self.wall_ms()
        for _ in range(3):
            if existing is not None:
                submit = existing.submit  # stored before, never placed: place that one
            else:
                try:
                    body = F.Submit(job_type, payload_json, max_attempts, lease_ms, timeout_ms, replicas, quorum, nonce, created_ms)
                    submit = await self._sign(signer, F.SUBMIT, body)
                except F.InvalidFact as exc:
                    raise ValidationFailed(str(exc)) from None
            replicas, quorum = submit.body.replicas, submit.body.quorum
            ids = await self._placement(submit)
            if len(ids) >= replicas or existing is not None:
                break
            if len(ids) < quorum:
                self.counters["submit_quorum_missed"] += 1
                raise QuorumUnavailable(
                    f"only {len(ids)} nodes reachable; a job needs {quorum} of {replicas} replicas. Retry later."
                )
            # Fewer nodes found than planned, but a quorum: place on an odd
            # count of them, unless that would fall below the quorum (then on
            # all of them, with a majority quorum, which two subjects cannot
            # both reach either).
            replicas = len(ids) if len(ids) % 2 or len(ids) - 1 < quorum else len(ids) - 1
            quorum = max(replicas // 2 + 1, min(quorum, replicas))
        if len(ids) < replicas:  # a submission stored before keeps its own r
            self.counters["submit_quorum_missed"] += 1
            raise QuorumUnavailable(f"only {len(ids)} nodes reachable; the job needs {replicas}. Retry later.")
        ids = ids[:replicas]
        place = await self._sign(signer, F.GRANT, F.Grant(submit.job_id, F.PLACE, 0, b"".join(ids), created_ms))
        if idempotency_key is not None:
            self.owners.remember(submit.job_id, seed)
        # With a worker slot free here, the store that places the job also
        # claims it (only for a job nobody has seen: one stored before may be
        # claimed already).
        taking = self.take_fresh(submit, place) if existing is None else None
        placed = await taking if taking is not None else None
        if placed is not None and len(placed.stored_ids) >= quorum:
            stored_ids, claimed = placed.stored_ids, placed.claimed
        else:
            outcome = await self.dht.store(submit.job_id, [submit, place], targets=list(ids), quorum=quorum)
            if outcome.stored_on < quorum:
                self.counters["submit_quorum_missed"] += 1
                raise QuorumUnavailable(
                    f"only {outcome.stored_on} of {outcome.asked} replicas stored the job; {quorum} needed. "
                    "Retry with the same Idempotency-Key."
                )
            stored_ids, claimed = outcome.stored_ids, False
        self.counters["submitted"] += 1
        # A job a quorum let this node claim needs no announcement: no other
        # worker may run it now, and the replicas re-announce it if this
        # node's lease goes stale.
        if not claimed:
            self._announce(submit, place, stored_ids)
        state = self.dht.records.state_of(submit.job_id, [submit, place])
        return view(state)

    def type_defaults(self, job_type: str) -> dict:
        """A handler's own defaults for its jobs (``@workmesh.handler(max_attempts=...,
        timeout_seconds=...)``); the node plugs in its registry's. Empty: the node's."""
        return {}

    async def _keyed_existing(self, owner: Identity, seed: bytes, fingerprint: bytes) -> lifecycle.JobState | None:
        """The job of a key if a replica holds it; 422 when it was made from another request."""
        job_id = F.keyed_job_id(owner.public_key)
        # One search as wide as read_job's last resort: for a new key (the
        # common case) that is the only round; a job found is read in full.
        if self.derive_local(job_id) is None:
            found, _answered = await self.dht.fetch(job_id, replicas=WIDER_READ * self.defaults.dht.replicas, until_found=True)
            if self.dht.records.state_of(job_id, found) is None:
                return None
        existing, _answered = await read_job(self.dht, job_id)
        if existing is None:
            return None
        if keyed.fingerprint_of(existing.submit) != fingerprint:
            self.counters["idempotency_conflicts"] += 1
            raise IdempotencyKeyReused(
                f"Idempotency-Key: already used for job {job_id.hex()} with another request body"
            )
        self.owners.remember(job_id, seed)
        self.counters["idempotent_replays"] += 1
        return existing

    async def _resubmitted(self, existing: lifecycle.JobState) -> JobView:
        """The same keyed request again: the job as it is now. One not yet
        decided is stored again on its replicas, so a submission an earlier
        node left on fewer than a quorum (it answered 503) is accepted now."""
        if existing.status not in lifecycle.TERMINAL:
            spec: F.Submit = existing.submit.body
            outcome = await self.dht.store(
                existing.job_id, [existing.submit, existing.placement], targets=list(existing.replicas), quorum=spec.quorum
            )
            if outcome.stored_on < spec.quorum:
                self.counters["submit_quorum_missed"] += 1
                raise QuorumUnavailable(
                    f"only {outcome.stored_on} of {outcome.asked} replicas hold the job; {spec.quorum} needed. "
                    "Retry with the same Idempotency-Key."
                )
        return view(existing)

    async def _placement(self, submit: F.Fact) -> tuple[bytes, ...]:
        """The replica ids for a new job: the closest nodes to its key that
        answer, among the ``placement.WIDER`` * r closest (node/placement.py)."""
        count = submit.body.replicas
        found = await self.dht.replicas_for(submit.job_id, count=placement.WIDER * count, fresh=True)
        ids = [c.id for c in found]
        fresh_s = self.defaults.placement_fresh_s
        verdicts = {
            c.id: placement.verdict(self.dht.answered_age_s(c.id), self.dht.failures(c.id), fresh_s) for c in found
        }
        trusted = {i for i, v in verdicts.items() if v == placement.TRUSTED}
        asked = set(placement.to_probe(ids, verdicts, count))
        answered = await self.dht.probe(
            [c for c in found if c.id in asked],
            enough=placement.probe_enough(ids, verdicts, count),
            grace_s=self.defaults.placement_probe_wait_s,
            until=lambda answered, pending: placement.settled(ids, trusted | answered, pending, count),
        )
        alive = trusted | answered
        chosen = placement.choose(ids, alive, count)
        if chosen != tuple(ids[:count]):
            self.counters["placed_off_closest"] += 1
        return chosen

    # -- read -------------------------------------------------------------------
    async def read_state(self, job_id: bytes) -> lifecycle.JobState:
        self.counters["reads"] += 1
        local = self.derive_local(job_id)
        if local is not None and local.status in lifecycle.TERMINAL:
            # Decided by a quorum of seals: final, no replica can say otherwise
            # (shown once what decided it here is on disk).
            self.counters["local_reads"] += 1
            await self.dht.durable()
            return local
        read = await read_job(self.dht, job_id)
        state, answered = read
        if state is None and read.gone:
            raise JobGone(f"job {job_id.hex()} was decided and its retention has passed")
        if answered == 0:
            raise QuorumUnavailable("no replica of this job answered in full (an incomplete answer counts as none)")
        if state is None and answered < min(self.defaults.dht.replicas, self.mesh_seen()) // 2 + 1:
            # "Not found" is a definite answer only from a majority of the
            # nodes that would hold the job; fewer may all be the wrong ones.
            raise QuorumUnavailable(f"only {answered} nodes answered; cannot tell whether job {job_id.hex()} exists")
        if state is None:
            raise JobNotFound(f"no replica knows job {job_id.hex()}")
        return state

    async def get(self, job_id: bytes, *, wait_s: float = 0.0, history: bool = False) -> JobView:
        if wait_s <= 0:
            return view(await self.read_state(job_id), history=history)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        me = self.identity.node_id
        # A placed replica hears of every change in its own store (claims, the
        # result and the seals are sent or pushed to it), so its long-poll
        # starts from the local copy and re-reads the other replicas only as a
        # safety net for a push it missed. Others back off (node/watch.py).
        local = self.derive_local(job_id)
        replica = local is not None and local.status not in lifecycle.TERMINAL and local.is_replica(me)
        schedule = (POLL_S_REPLICA, POLL_S_REPLICA_MAX) if replica else (POLL_S_MIN, POLL_S_MAX)
        # Listen before the first read: a change during it must wake us. The
        # watch forgets the job when its last waiter leaves, however it leaves.
        with self.watch.watching(job_id, *schedule) as watched:
            if replica:
                self.counters["local_reads"] += 1
                state = local
            elif watched.state is not None and not self.watch.read_due(watched):
                state = watched.state  # another waiter's read, fresher than the poll interval
            else:
                state = await self.watch.refresh(watched, lambda: self.read_state(job_id))
            while state.status not in lifecycle.TERMINAL and loop.time() < deadline:
                if await self.watch.wait_changed(watched, deadline):
                    local = self.derive_local(job_id)
                    if local is not None and local.status in lifecycle.TERMINAL:
                        state = local
                    elif watched.state is not None:
                        state = watched.state
                elif loop.time() < deadline and self.watch.read_due(watched):
                    state = await self.watch.refresh(watched, lambda: self.read_state(job_id))
        return view(state, history=history)

    # -- cancel -----------------------------------------------------------------
    async def cancel(self, job_id: bytes, reason: str) -> JobView:
        state = await self.read_state(job_id)
        if state.status in lifecycle.TERMINAL:
            raise Conflict(f"job is already {state.status}")
        signer = self._submitter(state)
        if signer is None:
            return await self._cancel_via_submitter(state, reason)
        return await self.cancel_as_submitter(state, reason, signer)

    def _rounds(self) -> RoundDriver:
        if self._driver is None:
            self._driver = RoundDriver(self.identity, self.dht.store, self.wall_ms, read=self._read_facts)
        return self._driver

    async def _read_facts(self, job_id: bytes) -> list[F.Fact]:
        state = await self.read_state(job_id)
        return list(state.facts)

    async def _sign(self, signer: Identity, kind: str, body: F.Body) -> F.Fact:
        """A fact signed by ``signer``: in this turn's batch when it is the node's
        own identity, alone when it is a keyed job's owner (a key of its own)."""
        if signer is self.identity:
            return await TurnSigner.of(signer).sign(kind, body)
        return F.sign(signer, kind, body)

    def _submitter(self, state: lifecycle.JobState) -> Identity | None:
        """The identity that signed the job's submission, if this node holds it:
        its own, or the owner of a keyed job it accepted."""
        if state.submit.author == self.identity.public_key:
            return self.identity
        return self.owners.get(state.job_id)

    async def cancel_as_submitter(self, state: lifecycle.JobState, reason: str, signer: Identity | None = None) -> JobView:
        spec: F.Submit = state.submit.body
        signer = signer or self.identity
        cancel = await self._sign(signer, F.CANCEL, F.Cancel(state.job_id, reason[: F.REASON_CHARS_MAX], self.wall_ms()))
        self.counters["cancels"] += 1
        # Send the submission along: a replica that lost it can still judge the cancel.
        batch = [state.submit, *([state.placement] if state.placement else []), cancel]
        for _ in range(3):
            outcome = await self.dht.store(state.job_id, batch, targets=list(state.replicas) or None, replicas=spec.replicas, quorum=spec.quorum)
            if outcome.stored_on >= spec.quorum:
                break
        if state.replicas:
            # The cancel is decided by the job's consensus: a round at a ballot
            # above the running lease's, proposing the cancel unless a result
            # is certified already (then that result is the outcome).
            decided = await self._rounds().recover(state, own=cancel, extra=[cancel])
            if decided.subject is not None and decided.subject.kind == F.RESULT:
                raise Conflict("job is already " + (lifecycle.DONE if decided.subject.body.outcome == F.OK else lifecycle.FAILED))
        after = await self.read_state(state.job_id)
        if after.status == lifecycle.CANCELLED:
            return view(after)
        if after.status in lifecycle.TERMINAL:
            raise Conflict(f"job is already {after.status}")
        raise QuorumUnavailable("the cancel did not reach a quorum of replicas; try again")

    async def _cancel_via_submitter(self, state: lifecycle.JobState, reason: str) -> JobView:
        """Only the submitter may sign a cancel: ask it to."""
        submitter = state.submit.author_id
        contact = self.dht.router.get(submitter)
        if contact is None:
            found = await self.dht.replicas_for(submitter, count=self.dht.config.k, fresh=True)
            contact = next((c for c in found if c.id == submitter), None)
        if contact is None and F.is_keyed(state.submit.author, state.submit.body):
            return await self._cancel_via_owners(state, reason)
        if contact is None:
            raise QuorumUnavailable("the job's submitter is unreachable; only it can cancel the job")
        reply = await self.dht.call(contact, "cancel_job", [state.job_id, reason[: F.REASON_CHARS_MAX]], timeout_s=5.0)
        if reply is None or len(reply) != 2:
            raise QuorumUnavailable("the job's submitter did not answer the cancel request")
        return await self._cancel_answer(state, reply)

    async def _cancel_via_owners(self, state: lifecycle.JobState, reason: str) -> JobView:
        """A keyed job's owner is no node: the nodes that accepted the job hold
        its key (node/keyed.py). Ask the contacts, at most ``OWNER_ASKS_MAX`` of
        them at once (the closest to the job first); the first that holds it cancels."""
        self.counters["cancels_forwarded"] += 1
        asked = self.dht.router.find_neighbors(target_node(state.job_id), k=OWNER_ASKS_MAX)
        calls = [
            asyncio.ensure_future(self.dht.call(c, "cancel_job", [state.job_id, reason[: F.REASON_CHARS_MAX]], timeout_s=5.0))
            for c in asked
        ]
        try:
            for next_reply in asyncio.as_completed(calls):
                reply = await next_reply
                if reply is not None and len(reply) == 2 and reply[0] in (200, 409):
                    return await self._cancel_answer(state, reply)
        finally:
            for call in calls:
                call.cancel()
        raise QuorumUnavailable(
            f"none of the {len(asked)} nodes asked accepted this job; only a node that accepted a job submitted "
            "with an Idempotency-Key can cancel it (or retry at that node)"
        )

    async def _cancel_answer(self, state: lifecycle.JobState, reply: list) -> JobView:
        status, detail = reply
        if status == 409:
            raise Conflict(str(detail))
        if status != 200:
            raise QuorumUnavailable(f"the submitter could not cancel: {detail}")
        return view(await self.read_state(state.job_id))

    async def rpc_cancel_job(self, env, addr) -> list:
        """A peer asks us, the submitter, to cancel a job we accepted.

        Who may ask: with an API token configured here, only a node holding
        it (``cancel_job`` is one of ``DHTConfig.acting_methods``: the
        protocol drops the request unless its datagram carries the token's
        tag, and the asking node sends it only after its REST layer checked
        the client's bearer token). Without a token (loopback development),
        any peer, as before."""
        job_id, reason = env.args
        if not isinstance(job_id, bytes) or len(job_id) != 20 or not isinstance(reason, str):
            raise ValueError("cancel_job needs a job id and a reason")
        try:
            state = await self.read_state(job_id)
            signer = self._submitter(state)
            if signer is None:
                return [403, "not the submitter"]
            if state.status in lifecycle.TERMINAL:
                return [409, f"job is already {state.status}"]
            await self.cancel_as_submitter(state, reason, signer)
            return [200, "cancelled"]
        except Conflict as exc:
            return [409, str(exc)]
        except (QuorumUnavailable, JobNotFound) as exc:
            return [503, str(exc)]

    # -- list -------------------------------------------------------------------
    def list_jobs(self, status: str | None, limit: int, after: str | None) -> tuple[list[JobView], str | None]:
        after_id = bytes.fromhex(after) if after else None
        page, nxt = self.index.page(status, limit, after_id)
        return [view(s.state) for s in page], (nxt.hex() if nxt else None)
