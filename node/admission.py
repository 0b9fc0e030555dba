"""Replica-side checks of new claims, renews, results and cancels. Pure: the
clocks are passed in.

These are the checks a replica makes before the lease rules (node/leases.py)
judge a fact it has not stored before; ``node/replica.py`` calls
:meth:`AdmissionChecks.judge` in one place.

* **Time stamps against the replica's own clock.** A fact's ``ts_ms`` is the
  author's wall clock. No new fact may be further ahead of the replica's
  wall clock than ``window_ms`` (the same window as a datagram's, see
  ``DHTConfig.replay_window_s``). A grant takes its ``ts_ms`` from the claim
  and the newest grant of an attempt wins, so a claim stamped 2^53 ms would
  otherwise pin the lease to its author for ever. A stamp in the past pins
  nothing (an older grant loses), and facts legitimately arrive late
  (repair, hand-off), so the past is not bounded here.
* **The job's timeout, enforced by replicas.** A replica remembers, on its
  own monotonic clock, when it first saw each attempt's claim (or, after a
  restart, its first renew). It refuses renews once the attempt has run
  longer than the job's ``timeout_ms`` plus one lease (the worker's own
  timeout fires first; the lease is its time to report): the lease then goes
  stale and the attempt ends, so no worker holds a job hostage by renewing.

* **Per-author bounds.** New facts a replica stores per author per second,
  and new jobs (submissions) per author per second, each a token bucket of
  the fact's signing key: one key cannot make a node store without end, even
  in an open mesh whose nodes hold no API token. Generous enough for a busy
  honest submitter (and for the hand-off of a neighbour's keys, about
  ``handoff_per_s`` x 6 facts a second); refused facts are counted.

Bounded: at most ``attempts_max`` attempts remembered, oldest forgotten first
(a forgotten attempt starts its clock again at its next renew: at worst one
more timeout).
"""

from __future__ import annotations

from collections import OrderedDict

from workmesh.dht.peerlimit import PeerBuckets
from workmesh.node import facts as F

WINDOW_MS = 60_000
FACTS_PER_AUTHOR_PER_S = 10_000.0
FACT_BURST_PER_AUTHOR = 50_000
SUBMITS_PER_AUTHOR_PER_S = 2_000.0
SUBMIT_BURST_PER_AUTHOR = 10_000
AUTHORS_MAX = 10_000


class AdmissionChecks:
    def __init__(
        self,
        window_ms: int = WINDOW_MS,
        attempts_max: int = 100_000,
        facts_per_author_per_s: float = FACTS_PER_AUTHOR_PER_S,
        submits_per_author_per_s: float = SUBMITS_PER_AUTHOR_PER_S,
    ) -> None:
        self.window_ms = window_ms
        self.attempts_max = attempts_max
        self._started: OrderedDict[tuple[bytes, int, bytes], float] = OrderedDict()
        burst = FACT_BURST_PER_AUTHOR * facts_per_author_per_s / FACTS_PER_AUTHOR_PER_S
        self._facts = PeerBuckets(facts_per_author_per_s, max(1, int(burst)), AUTHORS_MAX)
        burst = SUBMIT_BURST_PER_AUTHOR * submits_per_author_per_s / SUBMITS_PER_AUTHOR_PER_S
        self._submits = PeerBuckets(submits_per_author_per_s, max(1, int(burst)), AUTHORS_MAX)
        self.counters = {"refused_future_ts": 0, "refused_past_timeout": 0, "refused_author_rate": 0}

    def judge(self, fact: F.Fact, submit: F.Fact, now_s: float, wall_ms: int) -> str | None:
        """``None`` if ``fact`` (new to this replica) may go on to the lease rules, else why not."""
        ts = getattr(fact.body, "ts_ms", None)
        if fact.kind == F.SUBMIT:
            ts = fact.body.created_ms
        if ts is not None and ts > wall_ms + self.window_ms:
            self.counters["refused_future_ts"] += 1
            return f"ts_ms is {ts - wall_ms} ms ahead of this replica's clock (at most {self.window_ms})"
        if not self._facts.allow(fact.author, now_s) or (
            fact.kind == F.SUBMIT and not self._submits.allow(fact.author, now_s)
        ):
            self.counters["refused_author_rate"] += 1
            return "this author stores facts faster than this replica admits; retry later"
        if fact.kind not in (F.CLAIM, F.RENEW):
            return None
        spec: F.Submit = submit.body
        key = (submit.job_id, fact.attempt, fact.author_id)
        started = self._started.get(key)
        if started is None:
            self._started[key] = started = now_s
            while len(self._started) > self.attempts_max:
                self._started.popitem(last=False)
        if fact.kind == F.RENEW and now_s - started > (spec.timeout_ms + spec.lease_ms) / 1000.0:
            self.counters["refused_past_timeout"] += 1
            return f"attempt {fact.attempt} ran past the job's timeout of {spec.timeout_ms / 1000:g} s"
        return None

    def statistics(self) -> dict[str, int]:
        return {**self.counters, "attempts_timed": len(self._started)}
