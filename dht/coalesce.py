"""Coalescing: many envelopes to one peer in one datagram. Pure: no I/O, no clock.

The datagram shell (``dht/protocol.py``) queues what it sends in one event-loop
turn per address and hands each address's queue to :func:`pack` once per turn.
:func:`pack` returns the datagrams to send, in order:

* a lone envelope goes out exactly as before (no frame, no byte added);
* consecutive envelopes go out together in a *bundle* while the bundle stays
  within the datagram bound and :data:`BUNDLE_MESSAGES_MAX` envelopes::

      bundle = 0xC1 || canonical msgpack array (2..64 items) of bin (each a whole envelope)

``0xC1`` is the one byte msgpack never uses, so a bundle is told from an
envelope (``0x99``) and from a token tag (``0xA7``, crypto/tokenauth.py) by its
first byte. The mesh tag and the token tag wrap the whole datagram once (a
bundle's tags cover every envelope in it, as a lone envelope's cover it), and
every envelope inside keeps its own signature or pair MAC, so the receiver
(:func:`split`) hands each one to the path a lone datagram takes.

:func:`split` refuses, with a :class:`BundleError` whose ``reason`` is a drop
counter: a frame that does not decode, is truncated, or is not in canonical
form, or holds an item that is not an envelope (``bad_bundle``); an item that
is itself a bundle (``nested_bundle``); more items than the bound or fewer than two
(``bundle_count``); a frame over the datagram bound (``oversized``).
"""

from __future__ import annotations

import msgspec

BUNDLE_MARK = 0xC1
BUNDLE_MARK_BYTE = bytes([BUNDLE_MARK])
# Envelopes per bundle at most. A wire constant (not a setting): a sender and a
# receiver must agree on it, as on the envelope format.
BUNDLE_MESSAGES_MAX = 64
# The first byte of every envelope (dht/envelope.py: a fixarray of 9 fields).
_ENVELOPE_FIRST = 0x99

_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(list[bytes])


class BundleError(Exception):
    """A datagram that starts as a bundle but is not a valid one. ``reason`` is a counter name."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _bin_header(size: int) -> int:
    return 2 if size < 0x100 else 3 if size < 0x10000 else 5


def _array_header(count: int) -> int:
    return 1 if count < 16 else 3


def is_bundle(data: bytes) -> bool:
    return data[:1] == BUNDLE_MARK_BYTE


def bundle(messages: list[bytes]) -> bytes:
    """The frame of two or more envelopes (no check of the bounds: see :func:`pack`)."""
    return BUNDLE_MARK_BYTE + _ENCODER.encode(messages)


def pack(messages: list[bytes], bytes_max: int, count_max: int = BUNDLE_MESSAGES_MAX) -> list[bytes]:
    """The datagrams that carry ``messages`` in order, as few as the bounds allow going in order.

    Greedy: each datagram takes the next messages while the bundle stays
    within ``bytes_max`` and ``count_max``; a group of one is the message
    itself. A message too large to share a datagram goes alone (the sender
    checked every message against the bound already).
    """
    if len(messages) == 1:
        return list(messages)
    out: list[bytes] = []
    group: list[bytes] = []
    payload = 0  # the group's items with their bin headers
    for message in messages:
        item = _bin_header(len(message)) + len(message)
        if group and (
            len(group) >= count_max or 1 + _array_header(len(group) + 1) + payload + item > bytes_max
        ):
            out.append(group[0] if len(group) == 1 else bundle(group))
            group, payload = [], 0
        group.append(message)
        payload += item
    if group:
        out.append(group[0] if len(group) == 1 else bundle(group))
    return out


def split(data: bytes, bytes_max: int, count_max: int = BUNDLE_MESSAGES_MAX) -> list[bytes]:
    """The envelopes of a bundle (``data`` starts with :data:`BUNDLE_MARK`); raise :class:`BundleError`."""
    if len(data) > bytes_max:
        raise BundleError("oversized")
    # The count is read from the array header before anything is decoded.
    head = data[1:2]
    if not head:
        raise BundleError("bad_bundle")
    first = head[0]
    if 0x90 <= first <= 0x9F:
        count = first & 0x0F
    elif first == 0xDC and len(data) >= 4:
        count = int.from_bytes(data[2:4], "big")
    else:
        raise BundleError("bad_bundle")
    if not 2 <= count <= count_max:
        raise BundleError("bundle_count")
    body = data[1:]
    try:
        messages = _DECODER.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        raise BundleError("bad_bundle") from None
    if _ENCODER.encode(messages) != body:  # one encoding per bundle: headers no longer than needed
        raise BundleError("bad_bundle")
    for message in messages:
        if not message or message[0] != _ENVELOPE_FIRST:
            raise BundleError("nested_bundle" if message[:1] == BUNDLE_MARK_BYTE else "bad_bundle")
    return messages
