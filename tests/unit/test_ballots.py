"""The decision rules (node/ballots.py) and the proposer round (node/rounds.py)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from workmesh.node import ballots as B
from workmesh.node import rounds as R
from workmesh.node.ballots import Acceptor, Ballot, Certificate, Config, Promise, Proposal, Refusal, Vote

IDS = [bytes([i]) * 4 for i in range(1, 6)]
W1, W2, C = b"w1", b"w2", b"cx"
CFG3 = Config(frozenset(IDS[:3]))
CFG5 = Config(frozenset(IDS))


def promises(cfg: Config, ballot: Ballot, ids, accepted=None):
    return frozenset(Promise(i, ballot, accepted) for i in ids)


def cert(ballot: Ballot, subject: bytes, ids) -> Certificate:
    return Certificate(ballot, subject, frozenset(Vote(i, ballot, subject) for i in ids))


def answer(acc: Acceptor, req, cfg: Config):
    if isinstance(req, R.Prepare):
        return B.on_prepare(acc, req.ballot)
    if isinstance(req, Proposal):
        return B.on_propose(acc, req, cfg)
    return B.on_certificate(acc, req, cfg)


def drive(rs, ready, accs, cfg, down=frozenset()):
    """Deliver every request to every live acceptor until the round is over."""
    for _ in range(20):
        if ready.phase.over:
            return rs, ready
        current = ready
        for target in current.to:
            if target in down:
                continue
            accs[target], ans = answer(accs[target], current.send, cfg)
            rs, nxt = R.step(rs, cfg, R.Reply(target, ans))
            if nxt.send is not None and nxt.send != current.send or nxt.phase.over:
                ready = nxt
                break
        else:
            rs, ready = R.step(rs, cfg, R.Tick())
    raise AssertionError("round did not end")


def test_quorum_arithmetic_and_settings():
    assert [B.quorum_size(r) for r in (1, 2, 3, 4, 5, 7)] == [1, 2, 2, 3, 3, 4]
    assert B.quorum_size(4, 1) == 3 and B.quorum_size(5, 1) == 4 and B.quorum_size(7, 2) == 5
    for r in range(1, 17):
        for f in range(0, 6):
            q = B.quorum_size(r, f)
            assert 2 * q - r >= f + 1  # two quorums share an honest acceptor
            if r >= 3 * f + 1:
                assert r - f >= q  # the honest ones alone make a quorum
                B.check_settings(r, f)
            else:
                with pytest.raises(ValueError, match="3F"):
                    B.check_settings(r, f)


def test_refusal_wire_form_round_trips():
    for code in Refusal:
        assert B.refusal_code(B.refusal_text(code, "why: because")) is code
        assert B.refusal_code(code.value) is code
    assert B.refusal_code("lease not held") is None


def test_acceptor_promises_only_upward():
    a = Acceptor(IDS[0])
    a, p = B.on_prepare(a, Ballot(2, 0, W1))
    assert isinstance(p, Promise) and p.accepted is None
    _, r = B.on_prepare(a, Ballot(1, 5, W2))
    assert r is Refusal.PROMISED_HIGHER
    a2, p2 = B.on_prepare(a, Ballot(2, 0, W1))  # asked again: same promise
    assert p2 == p and a2 == a


def test_vote_checks_the_proof_and_votes_once_per_ballot():
    b = Ballot(1, 0, W1)
    proof = promises(CFG3, b, IDS[:2])
    a = Acceptor(IDS[0])
    a, v = B.on_propose(a, Proposal(b, b"A", proof), CFG3)
    assert v == Vote(IDS[0], b, b"A")
    assert B.on_propose(a, Proposal(b, b"B", proof), CFG3)[1] is Refusal.VOTED_OTHER
    assert B.on_propose(a, Proposal(b, b"A", proof), CFG3)[1] == v
    # too few promises, or promises of another ballot
    assert B.on_propose(Acceptor(IDS[1]), Proposal(b, b"A", proof - {next(iter(proof))}), CFG3)[1] is Refusal.BAD_PROOF
    other = promises(CFG3, Ballot(1, 1, W1), IDS[:2])
    assert B.on_propose(Acceptor(IDS[1]), Proposal(b, b"A", other), CFG3)[1] is Refusal.BAD_PROOF
    # strangers' promises do not count
    assert B.on_propose(Acceptor(IDS[1]), Proposal(b, b"A", promises(CFG3, b, [IDS[0], b"zz"])), CFG3)[1] is Refusal.BAD_PROOF


def test_a_proof_reporting_a_certificate_obliges_its_subject():
    old = cert(Ballot(1, 0, W1), b"A", IDS[:2])
    b = Ballot(1, 1, C)
    proof = frozenset({Promise(IDS[0], b, old), Promise(IDS[1], b, None)})
    assert B.on_propose(Acceptor(IDS[2]), Proposal(b, b"cancel", proof), CFG3)[1] is Refusal.WRONG_VALUE
    assert isinstance(B.on_propose(Acceptor(IDS[2]), Proposal(b, b"A", proof), CFG3)[1], Vote)
    # a forged certificate (one vote) is a bad proof
    forged = frozenset({Promise(IDS[0], b, cert(old.ballot, b"X", IDS[:1])), Promise(IDS[1], b, None)})
    assert B.on_propose(Acceptor(IDS[2]), Proposal(b, b"X", forged), CFG3)[1] is Refusal.BAD_PROOF


def test_admissible_limits_a_free_choice():
    b = Ballot(2, 0, W1)
    proof = promises(CFG3, b, IDS[:2])
    only_own = lambda ballot, subject: subject.startswith(b"res2")  # noqa: E731
    assert B.on_propose(Acceptor(IDS[0]), Proposal(b, b"res1", proof), CFG3, only_own)[1] is Refusal.WRONG_VALUE
    assert isinstance(B.on_propose(Acceptor(IDS[0]), Proposal(b, b"res2", proof), CFG3, only_own)[1], Vote)


def test_seal_needs_a_certificate_and_no_higher_promise():
    b = Ballot(1, 0, W1)
    good = cert(b, b"A", IDS[:2])
    a, s = B.on_certificate(Acceptor(IDS[2]), good, CFG3)
    assert s == B.Seal(IDS[2], b, b"A") and a.sealed == good
    assert B.on_certificate(Acceptor(IDS[2]), cert(b, b"A", IDS[:1]), CFG3)[1] is Refusal.BAD_CERTIFICATE
    high, _ = B.on_prepare(Acceptor(IDS[2]), Ballot(2, 0, W2))
    assert B.on_certificate(high, good, CFG3)[1] is Refusal.PROMISED_HIGHER
    # the seal reports in later promises
    _, p = B.on_prepare(a, Ballot(3, 0, W2))
    assert p.accepted == good


def test_split_two_two_one_resolves_by_a_recovery_round():
    """An equivocating worker got A voted by 2 and B by 2, C by 1 replica
    (r = 5): no certificate. A recovery round at a higher ballot decides."""
    b = Ballot(1, 0, W1)
    proof = promises(CFG5, b, IDS[:3])
    accs = {i: Acceptor(i) for i in IDS}
    for i, subj in zip(IDS, [b"A", b"A", b"B", b"B", b"C"]):
        accs[i], v = B.on_propose(accs[i], Proposal(b, subj, proof), CFG5)
        assert isinstance(v, Vote)
    rs, ready = R.start(CFG5, Ballot(1, 1, C), b"cancel")
    rs, ready = drive(rs, ready, accs, CFG5, down={IDS[4]})
    assert ready.phase == R.Phase.DECIDED and ready.decided == (Ballot(1, 1, C), b"cancel")


def test_round_is_preempted_by_refusals_and_gives_up_after_ticks():
    rs, ready = R.start(CFG3, Ballot(1, 0, W1), b"A")
    rs, _ = R.step(rs, CFG3, R.Reply(IDS[0], Refusal.PROMISED_HIGHER, Ballot(2, 0, W2)))
    rs, ready = R.step(rs, CFG3, R.Reply(IDS[1], Refusal.PROMISED_HIGHER, Ballot(2, 1, C)))
    assert ready.phase == R.Phase.PREEMPTED and rs.higher == Ballot(2, 1, C)
    assert R.next_ballot([rs.higher], 1, W1) == Ballot(2, 2, W1)
    rs, ready = R.start(CFG3, Ballot(1, 0, W1), b"A")
    for _ in range(R.RESENDS_MAX):
        rs, ready = R.step(rs, CFG3, R.Tick())
        assert ready.send == R.Prepare(Ballot(1, 0, W1)) and set(ready.to) == set(IDS[:3])
    rs, ready = R.step(rs, CFG3, R.Tick())
    assert ready.phase == R.Phase.GAVE_UP


def test_worker_with_grants_reporting_a_certificate_finishes_that_subject():
    old = cert(Ballot(1, 0, W1), b"A", IDS[:2])
    b = Ballot(2, 0, W2)
    rs, ready = R.propose(CFG3, [Promise(IDS[0], b, old), Promise(IDS[2], b, None)], b"mine")
    assert rs.obliged and ready.send == Proposal(b, b"A", rs.promises)
    rs, ready = R.propose(CFG3, [Promise(IDS[0], b, None), Promise(IDS[2], b, None)], None)
    assert ready.phase == R.Phase.NOTHING


# --------------------------------------------------------------------------
# Hypothesis: a cluster of acceptors under arbitrary interleavings of
# proposers, equivocation, message loss and one byzantine acceptor.

ballots = st.builds(Ballot, st.integers(1, 3), st.integers(0, 3), st.sampled_from([W1, W2, C]))
subjects = st.sampled_from([b"A", b"B", b"cancel"])


class Cluster(RuleBasedStateMachine):
    @initialize(r_f=st.sampled_from([(3, 0), (5, 0), (4, 1), (5, 1)]))
    def setup(self, r_f):
        r, f = r_f
        self.cfg = Config(frozenset(IDS[:r]), f)
        self.liar = IDS[0] if f else None  # signs anything
        self.accs = {i: Acceptor(i) for i in IDS[:r]}
        self.promises: set[Promise] = set()
        self.votes: set[Vote] = set()
        self.seals: set[B.Seal] = set()

    def _ask(self, i, fn, *args):
        if i == self.liar:
            return None
        self.accs[i], ans = fn(self.accs[i], *args)
        return None if isinstance(ans, Refusal) else ans

    @rule(b=ballots, who=st.sets(st.sampled_from(IDS)))
    def prepare(self, b, who):
        for i in sorted(who & self.cfg.replicas):
            p = self._ask(i, B.on_prepare, b)
            if p is not None:
                self.promises.add(p)
        if self.liar:
            self.promises.add(Promise(self.liar, b, None))  # hides what it sealed

    @rule(b=ballots, subj=subjects, other=subjects, who=st.sets(st.sampled_from(IDS)))
    def propose(self, b, subj, other, who):
        proof = frozenset(p for p in self.promises if p.ballot == b)
        cert = B.choose(proof, self.cfg)
        for n, i in enumerate(sorted(who & self.cfg.replicas)):
            s = cert.subject if cert is not None else (subj if n % 2 else other)  # equivocates when free
            v = self._ask(i, B.on_propose, Proposal(b, s, proof), self.cfg)
            if v is not None:
                self.votes.add(v)
        if self.liar:
            self.votes |= {Vote(self.liar, b, s) for s in (subj, other)}

    @rule(who=st.sets(st.sampled_from(IDS)))
    def seal(self, who):
        certs = set()
        for key in {(v.ballot, v.subject) for v in self.votes}:
            c = B.certificate([v for v in self.votes if (v.ballot, v.subject) == key], self.cfg)
            if c is not None:
                certs.add(c)
        for c in sorted(certs, key=lambda c: (c.ballot, c.subject)):
            for i in sorted(who & self.cfg.replicas):
                s = self._ask(i, B.on_certificate, c, self.cfg)
                if s is not None:
                    self.seals.add(s)
            if self.liar:
                self.seals.add(B.Seal(self.liar, c.ballot, c.subject))

    @invariant()
    def one_outcome(self):
        if hasattr(self, "cfg"):
            assert len(B.decided_subjects(self.seals, self.cfg)) <= 1


TestCluster = Cluster.TestCase
TestCluster.settings = settings(max_examples=150, stateful_step_count=25, deadline=None)


@given(st.lists(st.tuples(ballots, subjects), max_size=6))
@settings(max_examples=200, deadline=None)
def test_promised_never_goes_down(ops):
    a = Acceptor(IDS[0])
    top = None
    for b, s in ops:
        a, _ = B.on_prepare(a, b)
        assert a.promised is not None and (top is None or a.promised >= top)
        top = a.promised
