"""The DHT's settings, each with its default and its unit in the name."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class DHTConfig:
    # Kademlia bucket size: contacts kept per bucket.
    k: int = 20
    # Parallel queries per lookup round.
    alpha: int = 3
    # How long a lookup round waits for its slowest reply before the next
    # round starts (a late reply still counts): a dead contact costs this, not
    # a whole rpc_timeout_s.
    lookup_patience_s: float = 0.25
    # Replicas per key, and how many must store before a write counts.
    replicas: int = 5
    quorum: int = 3
    # How long to wait for one reply.
    rpc_timeout_s: float = 1.0
    # Consecutive lost replies before a contact is evicted (the library: 1).
    evict_after_failures: int = 3
    # Largest datagram we send or accept (loopback UDP carries 65,507).
    datagram_bytes_max: int = 60_000
    # Coalescing (dht/coalesce.py): the messages sent to one address in one
    # event-loop turn leave together, in as few datagrams as datagram_bytes_max
    # allows (a lone message as before). Off: one datagram per message, sent at once.
    coalesce: bool = True
    # Signed envelopes older or newer than this (sender clock vs ours) are dropped.
    replay_window_s: float = 60.0
    # Message ids remembered for replay detection.
    seen_ids_max: int = 200_000
    # Requests being handled at once; more are dropped and counted.
    inflight_requests_max: int = 2048
    # Outgoing requests waiting for replies at once.
    outstanding_max: int = 8192
    # Republish to their current replicas (only what they lack) the keys that
    # changed here since the last round, every this often...
    republish_interval_s: float = 60.0
    # ...and every key at least this often: a slice of the unchanged ones each
    # round (a decided job does not change, and checking every held key every
    # round cost a sync round trip per key and replica: dht/upkeep.py).
    republish_full_interval_s: float = 600.0
    # Refresh buckets nobody looked up for this long.
    refresh_interval_s: float = 600.0
    # ...but this often while the table holds fewer than k contacts: in a
    # small mesh, or after a lossy join, a lookup of our own id is cheap and
    # finds the nodes the table is missing.
    refresh_thin_interval_s: float = 15.0
    # Hand-off of keys to new neighbours: queued keys at most, and syncs per second.
    handoff_queue_max: int = 10_000
    handoff_per_s: float = 200.0
    # Contacts asked to prove their address at once (ping-back of new senders).
    pending_verifications_max: int = 256
    # Routing-table contacts per /24 (IPv4) or /48 (IPv6) prefix per bucket; 0 = no limit.
    # Off by default: it counts every address, and loopback or LAN meshes (and the
    # simulator's 10.x network) put every node in one prefix. Set it (2 is usual)
    # for a mesh on the internet, where it bounds what one network can place near a key.
    contacts_per_prefix_max: int = 0
    # Datagrams accepted per second from one source address (token bucket of
    # peer_datagram_burst), checked before decoding; 0 = no limit. Replies to our
    # own requests are exempt. Buckets kept at most (least recently seen forgotten).
    peer_datagrams_per_s: float = 5000.0
    peer_datagram_burst: int = 10_000
    peer_buckets_max: int = 10_000
    # Anti-amplification: a reply larger than its request goes only to an
    # (address, node id) that answered a request of ours at that address; an
    # unproven sender is pinged first (a ping is never larger than a request).
    amplification_guard: bool = True
    proven_addresses_max: int = 65_536
    # Identity puzzle: a peer's key must give this many leading zero bits of
    # BLAKE2b(person="workmesh-puzzle", public key), or we neither answer it nor
    # ask it anything, so it never enters the routing table. 0 = off. Each bit
    # doubles the cost of making an identity (16 bits: about 65,000 key pairs).
    identity_puzzle_bits: int = 0
    # Private mesh (crypto/meshkey.py): the current mesh key first, then keys
    # also accepted during a rotation. Empty = an open mesh. Every datagram is
    # checked against them before anything else; a stranger's is dropped.
    mesh_keys: tuple[bytes, ...] = field(default=(), repr=False)
    # Keys derived from the API token (crypto/tokenauth.py; NodeConfig fills it
    # from api_token). Empty = no token: nothing is tagged or required. Else
    # requests of acting_methods, and every reply, are accepted only from
    # token holders: a node without the token is answered (it may route) but
    # never becomes a contact, a replica, or a source of facts.
    token_keys: tuple[bytes, ...] = field(default=(), repr=False)
    acting_methods: frozenset[str] = frozenset({"store", "store_many", "sync", "announce", "cancel_job"})
    # Cheap rejection (dht/peerlimit.py). Datagrams per second from one /24
    # (IPv4) or /48 (IPv6) prefix, on top of the per-address bucket (loopback
    # is exempt: a loopback mesh is one machine); 0 = no prefix limit.
    prefix_datagrams_per_s: float = 20_000.0
    prefix_datagram_burst: int = 40_000
    # A source whose envelopes fail authentication (bad signature or MAC) more
    # than auth_failure_burst times, refilled at auth_failures_per_s, is shut
    # out (its datagrams dropped before decoding) for shutout_s.
    auth_failures_per_s: float = 2.0
    auth_failure_burst: int = 20
    shutout_s: float = 60.0
    # Expensive envelope checks (an Ed25519 verification, or the X25519 of a key
    # not met before) per second, all sources together; over it they are
    # dropped unchecked ("verify_budget"), so a flood of forged signatures
    # costs at most this many verifications a second (about 90 us each).
    expensive_checks_per_s: float = 2000.0
    expensive_check_burst: int = 4000

    def __post_init__(self) -> None:
        if not 1 <= self.quorum <= self.replicas:
            raise ValueError("quorum must be between 1 and replicas")
        if self.replicas > self.k:
            raise ValueError("replicas cannot exceed the bucket size k")
        if not 0 <= self.identity_puzzle_bits <= 64:
            raise ValueError("identity_puzzle_bits must be between 0 and 64")
