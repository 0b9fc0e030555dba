"""The authenticated RPC envelope: pure encoding, decoding and replay detection.

Every datagram is ``canonical_pack([version, kind, msg_id, sender_key, ts_ms,
target_id, method, args, auth])``. ``auth`` (domain ``workmesh/rpc/v1``)
covers every other field. It is either

* a 64-byte Ed25519 signature by ``sender_key``: used when the sender does
  not know the recipient's key yet (the first ping of a bootstrap address), or
* a 16-byte MAC under the *pair key* of sender and recipient (X25519 of their
  identity keys, see ``Identity.pair_key``): only the holders of those two
  private keys can compute it, so it proves the sender's identity to the
  recipient as a signature would, for the cost of a hash instead of a
  signature and a verification (about 120 us a message). Facts stay signed
  with Ed25519; they are verified by third parties, envelopes never are.

Either way:

* the sender's key is proven by the signature and its node id is derived
  from it, never taken from an argument;
* ``target_id`` names the node the message is meant for, so a signed message
  cannot be redirected to another node (empty only for a first ping). A
  MAC'd envelope carries only its first ``TARGET_HINT_BYTES`` (4): the pair
  key already names the recipient, and the hint lets a node that took over a
  departed peer's address drop it as misdirected without deriving a key;
* ``ts_ms`` and ``msg_id`` let the receiver drop stale and repeated messages;
* a reply carries the request's ``msg_id`` and is accepted only when signed by
  the key of the node that was asked, from the address that was asked.
"""

from __future__ import annotations

import socket
from collections import OrderedDict
from collections.abc import Callable
from typing import Annotated, Any

import msgpack
import msgspec

from workmesh.crypto import domains
from workmesh.crypto.canonical import canonical_pack, canonical_unpack, check_canonical_items
from workmesh.crypto.errors import BadSignature, EncodingError
from workmesh.crypto.identity import (
    MAC_BYTES,
    NODE_ID_BYTES,
    PUBLIC_KEY_BYTES,
    SIGNATURE_BYTES,
    Identity,
    node_id_of,
    verify_bytes,
)

VERSION = 1
REQUEST = 0
REPLY = 1
MSG_ID_BYTES = 16
TARGET_HINT_BYTES = 4  # a MAC'd envelope's target: the recipient id's first bytes (see seal)
METHOD_CHARS_MAX = 32
_ARRAY9 = b"\x99"  # msgpack fixarray header of 9 elements
_RPC_DOMAIN = msgpack.packb(domains.RPC, use_bin_type=True)


class EnvelopeError(Exception):
    """A datagram that is not a valid signed envelope. ``reason`` is a counter name."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Envelope(msgspec.Struct, frozen=True):
    """An opened datagram (a struct: built on every datagram, for a fifth of a frozen dataclass's cost)."""

    kind: int
    msg_id: bytes
    sender_key: bytes
    sender_id: bytes
    ts_ms: int
    target_id: bytes
    method: str
    args: list
    # Carried a valid tag of the API token's key (crypto/tokenauth.py), checked by the receiver.
    authorized: bool = False


def seal(
    identity: Identity,
    kind: int,
    msg_id: bytes,
    ts_ms: int,
    target_id: bytes,
    method: str,
    args: list | tuple,
    peer_key: bytes | None = None,
) -> bytes:
    """Encode and authenticate one envelope: a MAC when the recipient's key is known."""
    if peer_key is None or not target_id:
        fields = [VERSION, kind, msg_id, identity.public_key, ts_ms, target_id, method, list(args)]
        return canonical_pack([*fields, identity.sign(domains.RPC, fields)])
    # A MAC'd envelope's pair key names its recipient (no other node can
    # check it), so the target is cut to a hint of TARGET_HINT_BYTES: enough
    # for a node that now holds a departed peer's address to drop the
    # envelope as misdirected without deriving a pair key, 16 bytes shorter.
    fields = [VERSION, kind, msg_id, identity.public_key, ts_ms, target_id[:TARGET_HINT_BYTES], method, list(args)]
    # Checked and packed once: the 8 fields' bytes are shared by the MAC's input
    # ([domain, *fields]) and the datagram ([*fields, auth]); both are 9-arrays.
    body = canonical_pack(fields)[1:]  # without the 8-array's one-byte header
    auth = identity.mac_bytes(peer_key, _ARRAY9 + _RPC_DOMAIN + body)
    return _ARRAY9 + body + _WIRE_ENCODER.encode(auth)


class _Wire(msgspec.Struct, array_like=True, forbid_unknown_fields=True, frozen=True):
    """The datagram's fields, typed: what a field must be on its own is checked in C while decoding."""

    version: int
    kind: int
    msg_id: Annotated[bytes, msgspec.Meta(min_length=MSG_ID_BYTES, max_length=MSG_ID_BYTES)]
    key: Annotated[bytes, msgspec.Meta(min_length=PUBLIC_KEY_BYTES, max_length=PUBLIC_KEY_BYTES)]
    ts_ms: Annotated[int, msgspec.Meta(ge=0)]
    target: Annotated[bytes, msgspec.Meta(max_length=NODE_ID_BYTES)]
    method: Annotated[str, msgspec.Meta(max_length=METHOD_CHARS_MAX)]
    args: list
    auth: Annotated[bytes, msgspec.Meta(min_length=MAC_BYTES, max_length=SIGNATURE_BYTES)]


_WIRE_DECODER = msgspec.msgpack.Decoder(_Wire)
_WIRE_ENCODER = msgspec.msgpack.Encoder()
_DECODE_ERRORS = (msgspec.DecodeError, msgspec.ValidationError, EncodingError, RecursionError)


def _target_fits(target: bytes, auth: bytes) -> bool:
    """A MAC'd envelope names its recipient by a hint of TARGET_HINT_BYTES;
    a signed one by the whole id, or not at all (a first ping)."""
    if len(auth) == MAC_BYTES:
        return len(target) == TARGET_HINT_BYTES
    return len(auth) == SIGNATURE_BYTES and len(target) in (0, NODE_ID_BYTES)


def _typed_fields(data: bytes) -> tuple | None:
    """The nine fields of a well-formed datagram, or None (then the checked path tells what is wrong).

    Accepts exactly what ``canonical_unpack`` and the field checks of
    :func:`open_envelope` accept: ``args`` holds only canonical types (the
    checks of crypto/canonical.py), and encoding the fields again gives back
    the datagram's exact bytes (the canonical-form rule).
    """
    try:
        w = _WIRE_DECODER.decode(data)
        check_canonical_items(w.args, 1)
    except _DECODE_ERRORS:
        return None
    if (
        w.version != VERSION
        or w.kind not in (REQUEST, REPLY)
        or not _target_fits(w.target, w.auth)
        or _WIRE_ENCODER.encode(w) != data
    ):
        return None
    return w.version, w.kind, w.msg_id, w.key, w.ts_ms, w.target, w.method, w.args, w.auth


def _checked_fields(data: bytes, datagram_bytes_max: int) -> tuple:
    """The nine fields of a datagram, checked one at a time; raise :class:`EnvelopeError` naming what is wrong."""
    try:
        outer = canonical_unpack(data, max_len=datagram_bytes_max)
    except EncodingError:
        raise EnvelopeError("malformed") from None
    if not isinstance(outer, list) or len(outer) != 9:
        raise EnvelopeError("malformed")
    version, kind, msg_id, key, ts_ms, target, method, args, signature = outer
    if version != VERSION:
        raise EnvelopeError("bad_version")
    if (
        kind not in (REQUEST, REPLY)
        or not isinstance(msg_id, bytes)
        or len(msg_id) != MSG_ID_BYTES
        or not isinstance(key, bytes)
        or len(key) != PUBLIC_KEY_BYTES
        or not isinstance(ts_ms, int)
        or isinstance(ts_ms, bool)
        or ts_ms < 0
        or not isinstance(target, bytes)
        or not isinstance(method, str)
        or len(method) > METHOD_CHARS_MAX
        or not isinstance(args, list)
        or not isinstance(signature, bytes)
        or not _target_fits(target, signature)
    ):
        raise EnvelopeError("malformed")
    return outer


def open_envelope(
    data: bytes,
    *,
    datagram_bytes_max: int,
    identity: Identity | None = None,
    afford: Callable[[], bool] | None = None,
    authorized: bool = False,
) -> Envelope:
    """Decode and authenticate a datagram; raise :class:`EnvelopeError` with a reason.

    ``identity`` (the receiver) is needed to check MAC-authenticated envelopes.
    ``afford`` is asked before an expensive check (an Ed25519 verification, or
    a MAC under a pair key not derived yet); when it says no, the envelope is
    dropped unchecked with reason ``verify_budget``.
    """
    if len(data) > datagram_bytes_max:
        raise EnvelopeError("oversized")
    fields = _typed_fields(data) if type(data) is bytes else None
    if fields is None:
        fields = _checked_fields(data, datagram_bytes_max)
    _, kind, msg_id, key, ts_ms, target, method, args, signature = fields
    # The bytes ``auth`` covers, taken from the datagram instead of re-encoded:
    # it is canonical, so it is the 9-array header, the 8 fields' bytes, then
    # ``auth`` as bin 8 (2 header bytes); swap ``auth`` for the domain in front.
    message = _ARRAY9 + _RPC_DOMAIN + data[1 : len(data) - len(signature) - 2]
    if afford is not None and (
        len(signature) == SIGNATURE_BYTES or (identity is not None and not identity.knows_pair(key))
    ) and not afford():
        raise EnvelopeError("verify_budget")
    try:
        if len(signature) == SIGNATURE_BYTES:
            verify_bytes(key, message, signature, domains.RPC)
        elif identity is None or target != identity.node_id[:TARGET_HINT_BYTES]:
            raise EnvelopeError("misdirected")
        else:
            identity.check_mac_bytes(key, message, signature, domains.RPC)
            target = identity.node_id  # the pair key named it: no one else could check the MAC
    except BadSignature:
        raise EnvelopeError("bad_signature") from None
    return Envelope(kind, msg_id, key, node_id_of(key), ts_ms, target, method, args, authorized)


class ReplayGuard:
    """Drops envelopes outside the time window or seen before.

    Remembers ``(sender, msg_id)`` for the window; the memory is bounded, and
    what falls out of it is older than anything still inside the window in
    the common case. ``now_ms`` is the receiver's wall clock.
    """

    def __init__(self, window_s: float, size_max: int) -> None:
        self._window_ms = int(window_s * 1000)
        self._size_max = size_max
        self._seen: OrderedDict[tuple[bytes, bytes], int] = OrderedDict()

    def check(self, env: Envelope, now_ms: int, *, remember: bool = True) -> str | None:
        """``None`` if fresh (and remember it, unless told not to), else the drop reason."""
        if abs(env.ts_ms - now_ms) > self._window_ms:
            return "stale"
        key = (env.sender_id, env.msg_id)
        if key in self._seen:
            return "replayed"
        if not remember:
            return None
        self._seen[key] = now_ms
        while self._seen:
            oldest_key, oldest_ms = next(iter(self._seen.items()))
            if len(self._seen) > self._size_max or now_ms - oldest_ms > self._window_ms:
                del self._seen[oldest_key]
            else:
                break
        return None


CONTACT_V4_BYTES = PUBLIC_KEY_BYTES + 4 + 2
CONTACT_V6_BYTES = PUBLIC_KEY_BYTES + 16 + 2


def pack_contact(public_key: bytes, ip: str, port: int) -> bytes | None:
    """A contact as a ``find_node`` reply names it: ``public_key || ip || port``
    (the packed IPv4 or IPv6 address, the port in two bytes, big-endian);
    38 or 50 bytes. The node id is not sent: it is the hash of the key, so
    the receiver derives it and no peer can pair a key with an id it made
    up. None for an address that has no packed form here (a host name, an
    IPv6 address with a scope: meaningless to another host)."""
    try:
        packed = socket.inet_pton(socket.AF_INET6 if ":" in ip else socket.AF_INET, ip)
    except (OSError, ValueError):
        return None
    if not 0 < port < 65536:
        return None
    return public_key + packed + port.to_bytes(2, "big")


def check_contact(entry: Any) -> tuple[bytes, str, int, bytes] | None:
    """A contact learned from a third party (:func:`pack_contact`'s bytes):
    ``(node_id, ip, port, public_key)``, the id derived from the key; None for
    anything else (a wrong length, port 0)."""
    if type(entry) is not bytes or len(entry) not in (CONTACT_V4_BYTES, CONTACT_V6_BYTES):
        return None
    key, addr, port = entry[:PUBLIC_KEY_BYTES], entry[PUBLIC_KEY_BYTES:-2], int.from_bytes(entry[-2:], "big")
    if port == 0:
        return None
    ip = socket.inet_ntop(socket.AF_INET if len(addr) == 4 else socket.AF_INET6, addr)
    return node_id_of(key), ip, port, key
