"""The routing table: kademlia's buckets, with the defects fixed.

We keep ``kademlia.routing``'s bucket tree (splitting, replacement lists) and
``kademlia.node.Node``'s XOR metric, and change three behaviours:

* ``find_neighbors`` returns the true closest contacts. The library walks
  buckets outward from the target's bucket and stops after ``k`` contacts,
  which can miss closer contacts in buckets it has not reached.
* a contact is evicted only after ``evict_after_failures`` consecutive lost
  replies (the library evicts after one, so at 5% loss live nodes are evicted
  by the hundreds).
* a full bucket does not start an orphan ``ensure_future`` ping; it asks the
  owner (``on_full``) to check the bucket's head, in a task the owner tracks.

Contacts carry the public key they proved, so we can hand them to others with
the key that lets the receiver check the id.
"""

from __future__ import annotations

import heapq
import ipaddress
from collections.abc import Callable, Iterable

from kademlia.node import Node
from kademlia.routing import KBucket, RoutingTable

from workmesh.dht.envelope import pack_contact


class Contact(Node):
    """A peer: id, address, and the public key whose hash the id is."""

    def __init__(self, node_id: bytes, ip: str, port: int, public_key: bytes) -> None:
        super().__init__(node_id, ip, port)
        self.public_key = public_key

    @property
    def addr(self) -> tuple[str, int]:
        return (self.ip, self.port)

    def to_wire(self) -> bytes | None:
        """This contact as a ``find_node`` reply names it (``envelope.pack_contact``);
        None for an address with no packed form."""
        return pack_contact(self.public_key, self.ip, self.port)

    def __repr__(self) -> str:
        return f"Contact({self.id.hex()[:8]}@{self.ip}:{self.port})"


def target_node(key: bytes) -> Node:
    """A kademlia ``Node`` standing for a key, to measure distances to it."""
    return Node(key)


def _prefix(ip: str) -> str:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    bits = 24 if addr.version == 4 else 48
    return str(ipaddress.ip_network(f"{ip}/{bits}", strict=False))


class WorkmeshRoutingTable(RoutingTable):
    """kademlia's table with exact neighbour search and tolerant eviction."""

    def __init__(
        self,
        own: Node,
        ksize: int,
        *,
        evict_after_failures: int = 3,
        contacts_per_prefix_max: int = 0,
        on_full: Callable[[Contact], None] | None = None,
    ) -> None:
        self._evict_after = evict_after_failures
        self._per_prefix_max = contacts_per_prefix_max
        self._on_full = on_full
        self._failures: dict[bytes, int] = {}
        self.evictions = 0
        self.prefix_refusals = 0
        super().__init__(protocol=None, ksize=ksize, node=own)

    # -- queries ----------------------------------------------------------
    def contacts(self) -> list[Contact]:
        return [c for bucket in self.buckets for c in bucket.nodes.values()]

    def get(self, node_id: bytes) -> Contact | None:
        return self.get_bucket(Node(node_id)).nodes.get(node_id)

    def __len__(self) -> int:
        return sum(len(b) for b in self.buckets)

    def find_neighbors(self, node: Node, k: int | None = None, exclude: Node | None = None) -> list[Contact]:
        """The ``k`` contacts closest to ``node`` over the whole table, the node
        itself included when it is a contact (a lookup of a node id must be
        able to find that node)."""
        k = k or self.ksize
        target = node.long_id
        candidates = (
            c for bucket in self.buckets for c in bucket.nodes.values() if exclude is None or not c.same_home_as(exclude)
        )
        # The k smallest without sorting the whole table (a heap of k).
        return heapq.nsmallest(k, candidates, key=lambda c: c.long_id ^ target)

    def wants(self, node: Contact, spares: int = 2) -> bool:
        """Would a new contact be used: its bucket has room, can split, or
        holds fewer than ``spares`` replacements? A sender the table would only
        file as one more spare is not worth proving with a ping (in a large
        mesh most senders fall in full far buckets)."""
        bucket = self.get_bucket(node)
        if node.id in bucket.nodes or len(bucket) < self.ksize or len(bucket.replacement_nodes) < spares:
            return True
        return bucket.has_in_range(self.node) or bucket.depth() % 5 != 0

    def get_bucket(self, node: Node) -> KBucket:
        return self.buckets[self.get_bucket_for(node)]

    # -- updates ----------------------------------------------------------
    def add_contact(self, node: Contact) -> None:
        """Add or refresh a contact that has proved its key and address."""
        self._failures.pop(node.id, None)
        index = self.get_bucket_for(node)
        bucket: KBucket = self.buckets[index]
        if self._per_prefix_max and node.id not in bucket.nodes:
            prefix = _prefix(node.ip)
            same = sum(1 for c in bucket.nodes.values() if _prefix(c.ip) == prefix)
            if same >= self._per_prefix_max:
                self.prefix_refusals += 1
                return
        if bucket.add_node(node):
            return
        if bucket.has_in_range(self.node) or bucket.depth() % 5 != 0:
            self.split_bucket(index)
            self.add_contact(node)
        elif self._on_full is not None:
            self._on_full(bucket.head())

    def failures(self, node_id: bytes) -> int:
        """Lost replies in a row from a contact (0 once it answers again)."""
        return self._failures.get(node_id, 0)

    def record_success(self, node_id: bytes) -> None:
        self._failures.pop(node_id, None)

    def record_failure(self, contact: Node) -> bool:
        """Count a lost reply; evict after the threshold. True if evicted.

        A contact whose bucket has a replacement waiting goes after
        ``evict_after_failures`` lost replies in a row; one without goes only
        after three times as many. On a lossy network a small mesh would
        otherwise evict live peers it has no one to replace with, shrink its
        table and place new jobs on too few nodes."""
        count = self._failures.get(contact.id, 0) + 1
        bucket = self.buckets[self.get_bucket_for(contact)]
        limit = self._evict_after if bucket.replacement_nodes else 3 * self._evict_after
        if count < limit:
            self._failures[contact.id] = count
            return False
        self._failures.pop(contact.id, None)
        if self.get(contact.id) is not None:
            self.evictions += 1
        self.remove_contact(contact)
        return True

    def replace_all(self, contacts: Iterable[Contact]) -> None:
        for c in contacts:
            self.add_contact(c)
