"""The CI-sized model check of the decision rules (simulations/modelcheck.py).

The full run (``python -m simulations.modelcheck``) explores the
configurations of docs/guarantees.md; here complete searches of a few
thousand states each, and broken rules that the search must catch (a check
that cannot fail proves nothing).
"""

from __future__ import annotations

import pytest

from simulations import modelcheck as M


@pytest.mark.parametrize("setup", M.QUICK, ids=lambda s: s.label())
def test_every_reachable_state_is_safe_and_can_decide(setup):
    report = M.explore(setup)
    assert report.complete
    assert report.decided_states > 0 and report.split_states > 0  # it did reach decisions and splits
    print(report.line())


def test_an_acceptor_voting_twice_per_ballot_is_caught():
    setup = M.Setup(replicas=3, attempts=1, tries=((M.W1, 1),), equivocate=True, broken="vote_twice")
    with pytest.raises(M.Violation, match="decided"):
        M.explore(setup)


def test_a_lying_replica_with_crash_quorums_is_caught():
    """With F = 0 quorums (r = 3, quorum 2) one lying replica decides two outcomes."""
    setup = M.Setup(replicas=3, byzantine=0, attempts=1, tries=((M.W1, 1),), equivocate=True, liar=True)
    with pytest.raises(M.Violation, match="decided"):
        M.explore(setup)


def test_the_symmetry_reduction_reaches_every_class_of_states():
    """The reduced search keeps one state per renaming of the replicas: it must
    meet every class the full search meets, and nothing else."""
    import itertools

    setup = M.Setup(replicas=3, attempts=1, tries=((M.W1, 1),), equivocate=True, crash="loss")
    sym = M.Symmetry(setup.ids, None, len(setup.tries))

    def orbit(st):
        renamings = set()
        for order in itertools.permutations(range(3)):
            perm = {old: new for old, new in enumerate(order)}
            names = {setup.ids[old]: setup.ids[new] for old, new in perm.items() if old != new}
            renamings.add(sym._rename(sym.intern(st, None), perm) if names else sym.intern(st, None))
        return frozenset(renamings)

    full: list = []
    reduced: list = []
    assert M.explore(M.replace(setup, symmetry=False), visit=full.append).complete
    assert M.explore(setup, visit=reduced.append).complete
    assert len(reduced) < len(full) / 3  # it does reduce
    assert {orbit(st) for st in reduced} == {orbit(st) for st in full}


@pytest.mark.parametrize(
    "setup",
    [
        M.Setup(replicas=3, attempts=1, tries=((M.W1, 1), (M.CX, 1)), crash="restart"),
        M.Setup(replicas=3, attempts=1, tries=((M.W1, 1),), equivocate=True, crash="loss"),
        M.Setup(replicas=3, attempts=2, tries=((M.W1, 1), (M.W2, 1))),
        M.Setup(replicas=4, byzantine=1, attempts=1, tries=((M.W1, 1),), equivocate=True, liar=True),
    ],
    ids=lambda s: s.label(),
)
def test_leaving_refusals_undelivered_and_ending_stuck_rounds_reaches_every_replica_state(setup):
    """The two reductions that change what a round holds (no refusals
    delivered; a round only refusals can answer ended) must reach exactly
    the replica states, facts and decisions the plain search reaches."""

    def part(st):
        return (st.accs, st.down, st.crashes, st.seals, st.votes, st.filed)

    plain: set = set()
    reduced: set = set()
    full = M.explore(M.replace(setup, symmetry=False, refusals=True, settle=False), visit=lambda st: plain.add(part(st)))
    less = M.explore(M.replace(setup, symmetry=False), visit=lambda st: reduced.add(part(st)))
    assert full.complete and less.complete
    assert less.states < full.states  # it does reduce
    assert reduced == plain
