"""One config dataclass for a node, every default documented, units in names."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from workmesh.dht.config import DHTConfig
from workmesh.dht.records import StorageLimits
from workmesh.node.leases import LeaseRules


@dataclass(frozen=True, slots=True)
class NodeConfig:
    # Where to listen. Loopback by default; any other host requires api_token for writes.
    host: str = "127.0.0.1"
    p2p_port: int = 0
    api_port: int = 0
    # The address other peers should use to reach us (defaults to host).
    advertise_host: str | None = None
    data_dir: str = "./workmesh-data"
    bootstrap: tuple[tuple[str, int], ...] = ()
    # Worker slots; 0 = a node that stores and routes but runs no jobs.
    workers: int = 2
    api_token: str | None = None
    dht: DHTConfig = field(default_factory=DHTConfig)
    leases: LeaseRules = field(default_factory=LeaseRules)
    # Replicas per job that may lie (--byzantine F): quorums are
    # ceil((r + F + 1) / 2) so that two share F + 1 replicas; needs r >= 3F + 1
    # (node/ballots.py checks it). 0: replicas may crash but do not lie.
    byzantine: int = 0
    # Defaults of a job when the client gives none.
    lease_s: float = 10.0
    max_attempts: int = 3
    job_timeout_s: float = 300.0
    # Gossip: peers each announcement goes to, and hops it travels at most.
    # Two hops reach at most fanout + fanout**2 = 20 nodes whatever the mesh's
    # size: a pending job needs one free worker to hear of it, not every node
    # (four hops flooded up to 340, and per-job reads grew with the mesh); a
    # receiver with a free slot for the job keeps it and does not forward it.
    gossip_fanout: int = 4
    gossip_ttl: int = 2
    gossip_seen_max: int = 100_000
    # A new job is placed on the closest nodes that answer (node/placement.py):
    # a candidate that answered one of our requests this recently (and none
    # went unanswered since) is named without a ping; others are pinged first.
    placement_fresh_s: float = 2.0
    # ...and once enough candidates answered, a closer one that has not is
    # waited for this long at most, then passed over.
    placement_probe_wait_s: float = 0.25
    # Jobs a worker remembers as runnable, at most.
    runnable_max: int = 20_000
    # A replica re-announces a pending job after this delay (times its rank
    # among the job's replicas, so one replica speaks first), doubling up to the max.
    reannounce_first_s: float = 10.0
    reannounce_max_s: float = 30.0
    # A pending job due at a lease deadline (a retry after an error, a split
    # vote) is due at the same moment on every replica; each re-announces it
    # this long per rank after that, so one replica speaks and one claim
    # follows (more than a re-announced claim's settle time plus a few rank
    # steps, node/rendezvous.py). A running job's stale holder is not staggered.
    reannounce_rank_step_s: float = 1.0
    # An undecided job's replicas run a recovery round after this long (0: a
    # lease and its margin, node/deciding.py).
    decide_after_s: float = 0.0
    # A placed replica silent this long is replaced (node/repairs.py); checked every repair_check_s.
    repair_after_s: float = 180.0
    repair_check_s: float = 10.0
    # Re-announcements a replica sends per second: at least the min, plus this
    # many per free worker slot of its own (slots neither busy nor holding a
    # queued offer), at most reannounce_per_s; multiplied by a factor that
    # halves each second this node's RPCs time out (down to backoff_min) and
    # recovers when they stop. Bounded by capacity, not by the backlog.
    reannounce_per_s: float = 100.0
    reannounce_min_per_s: float = 2.0
    reannounce_per_free_slot_s: float = 10.0
    reannounce_backoff_min: float = 1 / 16
    # A decided job's facts are dropped by every node that holds them this
    # long after it saw the decision (node/retention.py; CLI --retention, 7d).
    retention_s: float = 7 * 86_400.0
    # The store's budgets, checked before a replica stores (and so before it
    # promises) anything; and how many dropped keys it remembers as gone (410).
    store_limits: StorageLimits = field(default_factory=StorageLimits)
    tombstones_max: int = 100_000
    # Durability: every stored fact is on disk (fsync) before anything that
    # depends on it is answered. With group commit the writes of one event-loop
    # turn share one transaction and one fsync, in a writer thread; without it
    # each write commits on its own (docs/performance.md has both costs).
    group_commit: bool = True
    # Jobs whose facts a node keeps in its local job index (for listing), at most.
    job_index_max: int = 200_000
    # Blobs (node/blobs.py): bytes per blob at most (1 GiB), and chunk bytes
    # this node keeps on disk at most (10 GiB; shown in /status as disk_bytes_budget).
    blob_bytes_max: int = 2**30
    blob_disk_bytes: int = 10 * 2**30
    # REST protection (api/limits.py). Requests per second per client for
    # every client, loopback too, when set; otherwise clients off loopback get
    # remote_rate_limit_per_s (0: none) and loopback clients no limit.
    max_body_bytes: int = 65_536
    rate_limit_per_s: float | None = None
    remote_rate_limit_per_s: float = 100.0
    rate_burst: int = 100
    # Open long polls (?wait=) at once: on the node (more get 503), and per
    # rate-limited client (more get 429).
    long_polls_max: int = 1000
    long_polls_per_client_max: int = 100
    # Open HTTP connections at once; more get a canned 503 (GET /healthz: 200).
    connections_max: int = 4096
    # Host header names the API answers to besides its loopback names (a
    # node bound to loopback); a node bound elsewhere answers to any name
    # unless some are given. ("*",): any.
    allowed_hosts: tuple[str, ...] = ()
    log_format: str = "auto"  # "json", "console" or "auto" (json unless on a terminal)
    log_level: str = "info"

    def __post_init__(self) -> None:
        # The API token also authorizes this node inside the protocol (crypto/tokenauth.py).
        from workmesh.crypto.tokenauth import token_key

        keys = (token_key(self.api_token),) if self.api_token else ()
        if self.dht.token_keys != keys:
            object.__setattr__(self, "dht", replace(self.dht, token_keys=keys))

    @property
    def replicas(self) -> int:
        return self.dht.replicas

    @property
    def quorum(self) -> int:
        return self.dht.quorum
