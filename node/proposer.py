"""Driving one round of a job's consensus over the DHT: the thin shell around :mod:`node.rounds`.

The round itself is a pure state machine (``rounds.step``); this driver only
moves bytes. It maps the round's requests onto signed facts (a prepare fact;
a result or a propose fact with the promises that prove it; the votes that
make a certificate), stores them on the replicas the round names, and feeds
every replica's answer back as a :class:`rounds.Reply`:

* a promise, vote or seal fact the replica produced, at the round's ballot;
* a typed refusal (``node/ballots.Refusal``), read from the refusal's code;
* a replica that stored the request but produced nothing for it refused it
  (a result is kept for the audit trail even when the replica does not vote
  for it, because it promised a higher ballot).

A replica that answered nothing is asked again on the next tick, up to the
round's resend budget. Who runs a round: a worker after its handler
(:meth:`node.claims.Claims.file`, starting from its lease grants), the
submitter's node for a cancel (:mod:`node.jobs`), and a replica that finds a
job undecided with votes or a cancel for too long (:mod:`node.node`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from workmesh.crypto.identity import Identity
from workmesh.dht.quorum import StoreOutcome
from workmesh.node import ballots as B
from workmesh.node import consensus
from workmesh.node import facts as F
from workmesh.node import rounds
from workmesh.node.ballots import Ballot, Refusal, refusal_code
from workmesh.node.lifecycle import JobState

STEPS_MAX = 12  # stores one round may make (requests and resends)

Store = Callable[..., Awaitable[StoreOutcome]]
Read = Callable[[bytes], Awaitable[list[F.Fact]]]


@dataclass(slots=True)
class Outcome:
    phase: rounds.Phase
    decided: tuple[Ballot, bytes] | None = None
    seals: list[F.Fact] = field(default_factory=list)  # the seal facts of the decision
    subject: F.Fact | None = None  # the decided result or cancel
    higher: Ballot | None = None


class RoundDriver:
    """Runs rounds for ``identity`` through ``store`` (``DHTServer.store``)."""

    def __init__(self, identity: Identity, store: Store, wall_ms: Callable[[], int], read: Read | None = None) -> None:
        self.identity = identity
        self.store = store
        self.wall_ms = wall_ms
        self.read = read
        self.counters = {"rounds": 0, "rounds_decided": 0, "rounds_preempted": 0, "rounds_gave_up": 0, "rounds_nothing": 0}

    async def run(
        self,
        state: JobState,
        *,
        ballot: Ballot | None = None,
        own: F.Fact | None = None,
        extra: list[F.Fact] = (),
        grants: list[F.Fact] | None = None,
        local_first: bool = False,
    ) -> Outcome:
        """One round for ``state``'s job.

        With ``grants`` (a worker's quorum of lease grants, its promises at
        ``(n, 0, worker)``) the round starts at its proposal of ``own`` (the
        worker's final result); otherwise at a prepare at ``ballot``, ``own``
        being what this proposer chooses when nothing certified binds it (a
        cancel, a result; None: it only finishes what is certified).
        ``extra`` facts go with every request (a cancel the replicas must hold).
        ``local_first``: this node is a replica; store each request here
        first and send its answer along (a quorum of 2 then forms at each other
        replica at once)."""
        self.counters["rounds"] += 1
        cfg = consensus.config(state)
        me = self.identity.node_id
        by_id: dict[bytes, F.Fact] = {f.fact_id: f for f in state.facts}
        for f in (*extra, *([own] if own is not None else [])):
            by_id[f.fact_id] = f
        context = [state.submit, *([state.placement] if state.placement is not None else [])]
        answers: dict[tuple[bytes, str], F.Fact] = {}  # (replica, step) -> its answer fact at this round's ballot
        if grants is not None:
            assert own is not None and own.kind == F.RESULT
            b = consensus.ballot_of(own)
            rs, ready = rounds.propose(cfg, [B.Promise(g.author_id, b, None) for g in grants], own.fact_id)
        else:
            assert ballot is not None
            rs, ready = rounds.start(cfg, ballot, own.fact_id if own is not None else None)
        prepare_fact: F.Fact | None = None
        propose_fact: F.Fact | None = None
        with_context = grants is None
        for _ in range(STEPS_MAX):
            if ready.phase.over:
                break
            if ready.send is None:
                rs, ready = rounds.step(rs, cfg, rounds.Tick())
                continue
            request = ready.send
            if isinstance(request, rounds.Prepare):
                if prepare_fact is None:
                    prepare_fact = F.sign(
                        self.identity, F.BALLOT, consensus.step_body(state.job_id, F.PREPARE, rs.ballot, ts_ms=self.wall_ms())
                    )
                batch = [*extra, prepare_fact]
            elif isinstance(request, B.Proposal):
                subject = by_id[request.subject]
                if subject.kind == F.RESULT and rs.ballot == consensus.ballot_of(subject) and grants is not None:
                    batch = [*extra, subject]  # the worker's result is its own proposal
                else:
                    promise_facts = [answers[(p.acceptor, F.PROMISE)] for p in request.proof]
                    votes = [by_id[r] for p in promise_facts for r in p.body.refs if r in by_id]
                    if propose_fact is None or propose_fact.body.subject != request.subject:
                        propose_fact = F.sign(
                            self.identity,
                            F.BALLOT,
                            consensus.step_body(
                                state.job_id,
                                F.PROPOSE,
                                rs.ballot,
                                request.subject,
                                tuple(sorted(p.fact_id for p in promise_facts)),
                                self.wall_ms(),
                            ),
                        )
                    batch = [*extra, subject, *votes, *promise_facts, propose_fact]
            else:  # a certificate: its votes, and the subject so every replica can read the outcome
                votes = [answers[(v.acceptor, F.VOTE)] for v in request.votes if (v.acceptor, F.VOTE) in answers]
                batch = [*extra, by_id[request.subject], *votes]
            if with_context:
                batch = [*context, *batch]
            targets = list(ready.to)
            outcome = await self._send(state, batch, targets, cfg, local_first and me in targets and len(targets) > 1)
            await self._learn(outcome, by_id, answers, rs.ballot, state)
            before = rs
            sent_phase = rs.phase
            for rid in targets:
                # Refusals (and silence after storing) answer the request sent;
                # answer facts in hand may also answer a later phase's.
                reply = self._reply(rid, outcome, answers, rs, cfg, by_id, infer=rs.phase == sent_phase)
                if reply is not None:
                    rs, ready = rounds.step(rs, cfg, reply)
                    if rs.phase != before.phase and not rs.phase.over:
                        # A phase moved on: answers already in hand for the
                        # new request (a seal sent along with a vote) count now.
                        for other in targets:
                            again = self._reply(other, outcome, answers, rs, cfg, by_id, infer=False)
                            if again is not None:
                                rs, ready = rounds.step(rs, cfg, again)
                        before = rs
            if any(refusal_code(r) is Refusal.UNKNOWN_JOB for rs_ in outcome.refusals.values() for _, r in rs_):
                with_context = True
            if rs.phase == before.phase and not rs.phase.over and ready.send is None:
                rs, ready = rounds.step(rs, cfg, rounds.Tick())
        result = Outcome(rs.phase, higher=rs.higher)
        if rs.phase == rounds.Phase.DECIDED:
            result.decided = B.decided(rs.seals, cfg)
            if result.decided is not None:
                result.subject = by_id.get(result.decided[1])
            result.seals = [answers[(s.acceptor, F.SEAL)] for s in rs.seals if (s.acceptor, F.SEAL) in answers]
            self.counters["rounds_decided"] += 1
        elif rs.phase == rounds.Phase.PREEMPTED:
            self.counters["rounds_preempted"] += 1
        elif rs.phase == rounds.Phase.NOTHING:
            self.counters["rounds_nothing"] += 1
        else:
            self.counters["rounds_gave_up"] += 1
        return result

    async def _send(self, state: JobState, batch: list[F.Fact], targets: list[bytes], cfg: B.Config, local_first: bool) -> StoreOutcome:
        need = max(1, min(len(targets), cfg.quorum))
        if not local_first:
            return await self.store(state.job_id, batch, targets=targets, quorum=need)
        me = self.identity.node_id
        here = await self.store(state.job_id, batch, targets=[me], quorum=1)
        own = [p for p in here.produced if p.kind == F.BALLOT and p.author_id == me]
        others = [t for t in targets if t != me]
        there = await self.store(state.job_id, [*batch, *own], targets=others, quorum=max(1, min(len(others), need - 1)))
        return here.merged(there)

    async def _learn(
        self, outcome: StoreOutcome, by_id: dict[bytes, F.Fact], answers: dict, ballot: Ballot, state: JobState
    ) -> None:
        """Keep the answer facts at ``ballot``; fetch the votes promises name that we lack."""
        missing: set[bytes] = set()
        for p in outcome.produced:
            if p.kind != F.BALLOT or consensus.ballot_of(p) != ballot:
                continue
            by_id[p.fact_id] = p
            answers.setdefault((p.author_id, p.body.step), p)
            if p.body.step == F.PROMISE:
                missing.update(r for r in p.body.refs if r not in by_id)
        if missing and self.read is not None:
            for f in await self.read(state.job_id):
                by_id.setdefault(f.fact_id, f)

    async def recover(self, state: JobState, *, own: F.Fact | None = None, extra: list[F.Fact] = (), tries: int = 3) -> Outcome:
        """Decide an undecided job: a round at a ballot above every one its
        facts show, proposing ``own`` (default: what :func:`consensus.free_choice`
        picks) unless a certified subject binds it; after a preemption, read the
        job again and go above what it shows."""
        me = self.identity.node_id
        outcome = Outcome(rounds.Phase.GAVE_UP)
        for _ in range(tries):
            top = consensus.top_ballot(state)
            if outcome.higher is not None and (top is None or outcome.higher > top):
                top = outcome.higher
            ballot = Ballot(top.attempt, top.round + 1, me) if top is not None else Ballot(0, 1, me)
            choice = own if own is not None else consensus.free_choice(state)
            outcome = await self.run(state, ballot=ballot, own=choice, extra=extra, local_first=me in state.replicas)
            if outcome.phase != rounds.Phase.PREEMPTED or self.read is None:
                break
            facts = await self.read(state.job_id)
            fresh = consensus.derive_again(state, facts)
            if fresh is None or fresh.terminal:
                break
            state = fresh
        if outcome.decided is not None:
            await self.tell(state, outcome)
        return outcome

    async def tell(self, state: JobState, outcome: Outcome) -> None:
        """Store the decision (its subject and seals) on every replica, this
        node's own first (a client waiting here learns at once)."""
        if not outcome.seals:
            return
        me = self.identity.node_id
        batch = [*([outcome.subject] if outcome.subject is not None else []), *outcome.seals]
        if me in state.replicas:
            await self.store(state.job_id, batch, targets=[me], quorum=1)
        others = [i for i in state.replicas if i != me]
        if others:
            await self.store(state.job_id, batch, targets=others, quorum=max(1, min(len(others), state.spec.quorum)))

    def _reply(
        self,
        rid: bytes,
        outcome: StoreOutcome,
        answers: dict,
        rs: rounds.RoundState,
        cfg: B.Config,
        by_id: dict,
        infer: bool = True,
    ) -> rounds.Reply | None:
        phase = rs.phase
        step = {rounds.Phase.PREPARE: F.PROMISE, rounds.Phase.VOTE: F.VOTE, rounds.Phase.SEAL: F.SEAL}.get(phase)
        if step is None:
            return None
        fact = answers.get((rid, step))
        if fact is not None:
            if step == F.PROMISE:
                promise = consensus.promise_of(fact, by_id, cfg)
                return rounds.Reply(rid, promise if promise is not None else Refusal.BAD_PROOF)
            if step == F.VOTE:
                return rounds.Reply(rid, consensus.vote_of(fact))
            return rounds.Reply(rid, consensus.seal_of(fact))
        if not infer:
            return None
        refusals = outcome.refusals.get(rid)
        if refusals:
            codes = [refusal_code(r) for _, r in refusals]
            if any(c is Refusal.UNKNOWN_JOB for c in codes):
                return None  # it lacks the job: asked again with its context
            code = next((c for c in codes if c is not None), Refusal.INVALID)
            return rounds.Reply(rid, code)
        if rid in outcome.stored_ids:
            return rounds.Reply(rid, Refusal.PROMISED_HIGHER)  # stored, and did not answer in kind
        return None
