"""Typed errors of the crypto layer."""


class CryptoError(Exception):
    """Base class for every error raised by :mod:`crypto`."""


class EncodingError(CryptoError):
    """A value cannot be encoded canonically, or bytes are not canonical."""


class BadSignature(CryptoError):
    """A signature does not verify for the given key, domain and message."""
