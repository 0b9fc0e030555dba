"""The replica side of a job: what a node does with facts sent to it for storing.

This is the DHT's record policy for job facts. It validates every fact
(``facts.decode``), refuses facts for jobs whose submission it does not hold,
and runs the pure lease rules (``node/leases.py``) on claims, renews, results
and cancels, signing the grants and seals they call for. The local
observations that the lease rules need (when this replica last saw each lease
holder) live here, in memory, per job, bounded.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from workmesh.crypto.identity import Identity
from workmesh.dht.server import Admission
from workmesh.node import facts as F
from workmesh.node import consensus, leases, lifecycle
from workmesh.node.admission import AdmissionChecks
from workmesh.node.ballots import Refusal, refusal_text
from workmesh.node.errors import InvalidFact


_ORDER = {F.SUBMIT: 0, F.GRANT: 2, F.CLAIM: 3, F.RENEW: 4, F.RESULT: 5, F.CANCEL: 6, F.CONFIG: 6}
# Ballot steps after the rest, votes first: a promise names votes, a proposal promises.
_STEP_ORDER = {F.VOTE: 7, F.PROMISE: 8, F.SEAL: 9, F.PREPARE: 10, F.PROPOSE: 11}


def _batch_order(fact: F.Fact) -> int:
    if fact.kind == F.GRANT and fact.body.action == F.PLACE:
        return 1
    if fact.kind == F.BALLOT:
        return _STEP_ORDER[fact.body.step]
    return _ORDER[fact.kind]


class JobReplica:
    def __init__(
        self,
        identity: Identity,
        rules: leases.LeaseRules,
        monotonic: Callable[[], float],
        wall_ms: Callable[[], int],
        on_stored: Callable[[bytes, list[F.Fact]], None],
        observations_max: int = 100_000,
        decoded_max: int = 8192,
        *,
        state_of: Callable[[bytes, list[F.Fact]], lifecycle.JobState | None] | None = None,
    ) -> None:
        self.identity = identity
        self.rules = rules
        self.monotonic = monotonic
        self.wall_ms = wall_ms
        self._on_stored = on_stored
        self._obs: OrderedDict[bytes, leases.Observations] = OrderedDict()
        self._obs_max = observations_max
        self._decoded: OrderedDict[tuple[bytes, bytes], F.Fact] = OrderedDict()
        self._decoded_max = decoded_max
        # state_of(job_id, facts): the state a candidate set of a job's facts
        # decides (the node derives it from its store's: FactStore.state_of).
        self._state_of = state_of or (lambda job_id, facts: lifecycle.derive(facts))
        # Time stamps against our clock, the job's timeout on renews (node/admission.py).
        self.checks = AdmissionChecks()
        # Facts this admission signs, signed together when it ends (admit).
        self._pending: list[tuple[F.Unsigned, F.Fact]] = []
        self._signing_later = 0  # inside one_signature()
        self.counters: dict[str, int] = {
            "grants_issued": 0,
            "claims_refused": 0,
            "renews_accepted": 0,
            "renews_refused": 0,
            "renews_not_extended": 0,
            "seals_issued": 0,
            "votes_issued": 0,
            "promises_issued": 0,
            "ballots_refused": 0,
            "facts_refused": 0,
        }

    # -- the DHT's RecordPolicy --------------------------------------------
    def validate(self, key: bytes, raw: bytes) -> F.Fact:
        """Decode and check a fact. The same bytes arrive again and again (stores,
        fetch replies, repairs, grants inside results): a fact decoded before
        is answered from a bounded memo (facts are immutable and a decode is a
        pure function of (key, bytes)); only facts that decoded are kept."""
        memo_key = (key, raw)
        fact = self._decoded.get(memo_key)
        if fact is not None:
            self._decoded.move_to_end(memo_key)
            return fact
        fact = F.decode(raw, key=key)
        self._decoded[memo_key] = fact
        if len(self._decoded) > self._decoded_max:
            self._decoded.popitem(last=False)
        return fact

    def observations(self, job_id: bytes) -> leases.Observations:
        obs = self._obs.get(job_id)
        if obs is None:
            obs = self._obs[job_id] = leases.Observations()
            while len(self._obs) > self._obs_max:
                self._obs.popitem(last=False)
        else:
            self._obs.move_to_end(job_id)
        return obs

    def admit(self, key: bytes, incoming: list[F.Fact], existing: list[F.Fact], sender_id: bytes) -> Admission:
        """Judge ``incoming`` against ``existing``: what to accept, what this
        replica signs in answer, what it refuses. Everything it signs in one
        admission (a vote and the seal it makes possible, a grant per claim)
        shares one signature, set before this returns (:meth:`_sign_once`)."""
        try:
            return self._admit(key, incoming, existing, sender_id)
        finally:
            if not self._signing_later:
                self._sign_pending()

    @contextmanager
    def one_signature(self) -> Iterator[None]:
        """Admissions inside share one signature, set when the block ends.
        Their products are stand-ins until then (right content and fact id,
        no signature): the block must store nothing they produce, and hand
        nothing out, before it ends (``dht.ingest.LocalWrites.ingest_many``)."""
        self._signing_later += 1
        try:
            yield
        finally:
            self._signing_later -= 1
            if not self._signing_later:
                self._sign_pending()

    def _sign_pending(self) -> None:
        pending, self._pending = self._pending, []
        if pending:
            F.sign_in_place(self.identity, pending)

    def _admit(self, key: bytes, incoming: list[F.Fact], existing: list[F.Fact], sender_id: bytes) -> Admission:
        out = Admission()
        me = self.identity.node_id
        known = {f.fact_id: f for f in existing}
        submit = next((f for f in existing if f.kind == F.SUBMIT), None)
        if submit is None:
            submit = next((f for f in incoming if f.kind == F.SUBMIT), None)
        obs = self.observations(key)
        now = self.monotonic()
        # Facts the replica already holds count as seen now (restart, hand-off).
        if existing and not obs.holder_seen and not obs.error_seen and not obs.grantee:
            leases.observe(obs, existing, me, now)
        placement = lifecycle.placement_of(existing, submit) if submit is not None and existing else None
        has_configs = any(f.kind == F.CONFIG for f in existing) or any(f.kind == F.CONFIG for f in incoming)
        # Order inside a batch: the submission and its placement first, then
        # grants, then the rest, so a batch that carries a job's history is
        # judged as a whole.
        for index, fact in sorted(enumerate(incoming), key=lambda p: _batch_order(p[1])):
            if submit is None:
                out.refused.append((index, refusal_text(Refusal.UNKNOWN_JOB)))
                continue
            try:
                F.check_in_context(submit, fact)
            except InvalidFact as exc:
                out.refused.append((index, str(exc)))
                continue
            if fact.kind == F.GRANT and fact.body.action == F.PLACE:
                if placement is not None and placement != fact:
                    out.refused.append((index, "the job is placed already"))
                    continue
                placement = fact
            replicas = F.placement_ids(placement.body.subject) if placement is not None else ()
            epochs: tuple = ()
            if placement is not None and (has_configs or fact.kind == F.CONFIG):
                # A repaired job: facts count under the replica set of their ballot.
                has_configs = True
                epochs = lifecycle.epochs_of([*known.values(), *incoming], submit, placement)
            why = lifecycle.counts_in(replicas, submit, fact, epochs)
            if why is not None:
                out.refused.append((index, why))
                continue
            if fact.fact_id in known:
                # A retried claim, result or cancel: answer with what we signed for it before.
                out.accept.append(fact)
                if fact.kind in (F.RESULT, F.BALLOT):
                    # Asked again: the acceptor's steps are deterministic
                    # (the same vote, the same seal), and one that was
                    # missing then (no certificate yet) may be due now.
                    answer, _ = self._judge(fact, list(known.values()), obs, now, again=True)
                    for p in answer:
                        known[p.fact_id] = p
                else:
                    answer = self._own_answer(fact, known.values())
                out.produced.extend(answer)
                continue
            if fact.slot is not None and any(
                k.slot == fact.slot and k.version >= fact.version for k in known.values()
            ):
                # A renew dated at or before one stored (the worker's wall clock
                # stepped back, or a replay): it does not extend the lease, and
                # the worker must hear so, not count it as a renewal that held.
                self.counters["renews_not_extended"] += 1
                out.refused.append((index, refusal_text(Refusal.NOT_EXTENDED, "a renew dated at or before the stored one")))
                continue
            reason = self.checks.judge(fact, submit, now, self.wall_ms())
            if reason is None:
                produced, reason = self._judge(fact, list(known.values()), obs, now)
            if reason is not None:
                out.refused.append((index, reason))
                continue
            out.accept.append(fact)
            known[fact.fact_id] = fact
            # Observe only what is new: a grant signed again for a holder that
            # asks again is the same fact, and must not refresh its lease.
            fresh = [p for p in produced if p.fact_id not in known]
            for p in produced:
                out.produced.append(p)
                known[p.fact_id] = p
            leases.observe(obs, [fact, *fresh], me, now)
        self.counters["facts_refused"] += len(out.refused)
        return out

    def _judge(
        self, fact: F.Fact, known: list[F.Fact], obs: leases.Observations, now: float, again: bool = False
    ) -> tuple[list[F.Fact], str | None]:
        """Apply the lease and consensus rules to one new fact: (facts we sign, refusal reason)."""
        me = self.identity.node_id
        if fact.kind in (F.SUBMIT, F.GRANT, F.CANCEL, F.CONFIG):
            return [], None
        state = self._state_of(fact.job_id, known)
        if state is None:
            return [], refusal_text(Refusal.UNKNOWN_JOB)
        if fact.kind == F.CLAIM:
            decision = leases.decide_claim(state, fact, me, obs, now, self.rules)
            if isinstance(decision, str):
                self.counters["claims_refused"] += 1
                return [], decision
            self.counters["grants_issued"] += 1
            grant = self._sign_once(known, F.GRANT, decision)
            return [grant], None
        if fact.kind == F.RENEW:
            if leases.accept_renew(state, fact, me, obs, now):
                self.counters["renews_accepted"] += 1
                return [], None
            self.counters["renews_refused"] += 1
            return [], refusal_text(Refusal.NOT_EXTENDED, "lease not held")
        if not state.is_replica(me):
            return [], None  # a node that only stores the job takes no part in its consensus
        return self._consensus(state, fact, known, obs, now, again)

    def _consensus(
        self, state: lifecycle.JobState, fact: F.Fact, known: list[F.Fact], obs: leases.Observations, now: float, again: bool
    ) -> tuple[list[F.Fact], str | None]:
        """The acceptor's steps (node/consensus.py) for a result or a ballot fact."""
        me = self.identity.node_id
        produced: list[F.Fact] = []
        step = fact.body.step if fact.kind == F.BALLOT else None
        known = [*known, fact]
        state = self._state_of(fact.job_id, known) or state
        if fact.kind == F.RESULT or step == F.PROPOSE:
            if fact.kind == F.RESULT and not lifecycle.is_final_result(state.submit, fact):
                return [], None  # an error that leaves attempts: it only ends its attempt
            answer = consensus.on_proposal(state, fact, me)
            if isinstance(answer, Refusal):
                self.counters["ballots_refused"] += 1
                # A result is kept (the audit trail) even without our vote; a
                # proposal we do not vote for is not.
                return [], None if fact.kind == F.RESULT else refusal_text(answer)
            vote = self._sign_once(known, F.BALLOT, answer)
            if not again:
                self.counters["votes_issued"] += 1
            produced.append(vote)
            state = self._state_of(fact.job_id, [*known, vote]) or state
        elif step == F.PREPARE:
            if (
                not consensus.cancels(state)
                and not consensus.repairing(state)
                and leases.lease_live(state, me, obs, now, self.rules)
            ):
                self.counters["ballots_refused"] += 1
                return [], refusal_text(Refusal.LEASE_LIVE, "the current lease is live")
            answer = consensus.on_prepare(state, fact, me)
            if isinstance(answer, Refusal):
                self.counters["ballots_refused"] += 1
                return [], refusal_text(answer)
            if not again:
                self.counters["promises_issued"] += 1
            return [self._sign_once(known, F.BALLOT, answer)], None
        elif step != F.VOTE:
            return [], None  # promises and seals of other replicas: stored
        seal = consensus.on_votes(state, me)
        if seal is not None:
            signed = self._sign_once(known, F.BALLOT, seal)
            if all(f is not signed for f in known):
                self.counters["seals_issued"] += 1
            produced.append(signed)
        return produced, None

    def _own_answer(self, fact: F.Fact, known) -> list[F.Fact]:
        me = self.identity.node_id
        if fact.kind == F.CLAIM:
            state = self._state_of(fact.job_id, list(known))
            if state is None or leases.current_grant(state, me) != (fact.attempt, fact.author_id):
                return []  # superseded: handing it back would let the worker think it still holds a lease
            want = (F.LEASE, fact.attempt, fact.author_id)
        else:
            return []
        return [
            f
            for f in known
            if f.kind == F.GRANT and f.author_id == me and (f.body.action, f.body.attempt, f.body.subject) == want
        ]

    def _sign_once(self, known: list[F.Fact], kind: str, body: Any) -> F.Fact:
        """Our signed fact for ``body``: the one we signed before if we hold it
        (a replica asked again, or handed the same result twice, answers with
        the very same vote or seal), else a new signature. Format v2's fact id
        is the hash of the unsigned content, so equal content is equal id."""
        prepared = F.prepare(self.identity, kind, body)
        for f in known:
            if f.fact_id == prepared.fact_id:
                return f
        for u, f in self._pending:  # made earlier in this admission
            if u.fact_id == prepared.fact_id:
                return f
        # Signed when the admission ends, with whatever else it signs: the
        # content (and so the fact id) is final now, which is all judging needs.
        fact = F.provisional(self.identity, prepared)
        self._pending.append((prepared, fact))
        return fact

    def worth_repairing(self, fact: F.Fact) -> bool:
        """Read repair copies what decides a job (submission, results, cancels,
        seals); claims, lease grants and renews are per-replica and short-lived."""
        if fact.kind == F.GRANT:
            return fact.body.action == F.PLACE
        if fact.kind == F.BALLOT:
            return fact.body.step in (F.SEAL, F.VOTE)
        return fact.kind in (F.SUBMIT, F.RESULT, F.CANCEL, F.CONFIG)

    def holders(self, facts: list[F.Fact]) -> tuple[bytes, ...]:
        """The job's replicas (after a repair, the current set): republish keeps them supplied too."""
        placement = next((f for f in facts if f.kind == F.GRANT and f.body.action == F.PLACE), None)
        if placement is None:
            return ()
        if any(f.kind == F.CONFIG for f in facts):
            state = self._state_of(placement.job_id, facts)
            return state.replicas if state is not None else ()
        return F.placement_ids(placement.body.subject)

    def stored(self, key: bytes, new: list[F.Fact]) -> None:
        self._on_stored(key, new)

    def statistics(self) -> dict[str, int]:
        return {**self.counters, "observed_jobs": len(self._obs), **self.checks.statistics()}
