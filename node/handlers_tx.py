"""``tx.verify``: check a batch of simulated blockchain transfers.

Payload: ``{"txs": [tx, ...]}`` or ``{"txs": {"blob": H}}`` (a JSON-lines
blob, one tx per line). A tx is ``{"id": str, "from": hex Ed25519 public key,
"to": hex key, "amount": int, "nonce": int, "sig": hex}``; the signature
covers the UTF-8 bytes of ``json.dumps({"from", "to", "amount", "nonce"},
sort_keys=True, separators=(",", ":"))``.

Checks, in this order, each tx failing at the first that fails:

1. ``bad_signature``: ``sig`` verifies under ``from`` (a key or signature
   that is not hex of the right length fails here too);
2. ``bad_amount``: ``amount`` is a positive integer (not a bool);
3. ``duplicate_nonce``: the pair (``from``, ``nonce``) repeats that of an
   earlier *valid* tx in the batch.

Result: ``{"valid": [ids in input order], "invalid": [{"id", "reason"}],
"merkle_root": hex}``. When the lists would pass the 8 KiB result bound,
``valid`` and ``invalid`` are ``{"blob": H}`` references to JSON documents
holding them. The Merkle root: leaves are SHA-256 of each valid id's UTF-8
bytes, each parent the SHA-256 of its two children concatenated, an odd last
node paired with itself; one leaf is its own root; no valid id gives
SHA-256 of the empty string.

A batch of more than ``chunk`` txs (payload option, default 10,000) fans out:
the parent writes each slice as a JSON-lines blob and submits one child
``tx.verify`` job per slice with ``"stage": "check"`` (steps 1 and 2, the
costly ones, in parallel across the mesh); the children answer
``{"reasons": {"blob": H}}`` (a JSON list, ``null`` for a tx that passed);
the parent applies step 3 in input order and computes the root.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from workmesh.node.handlers import HandlerError, JobContext

BAD_SIGNATURE, BAD_AMOUNT, DUPLICATE_NONCE = "bad_signature", "bad_amount", "duplicate_nonce"
CHUNK_DEFAULT = 10_000
TXS_MAX = 1_000_000
INPUT_BYTES_MAX = 512 * 2**20
INLINE_RESULT_BYTES = 7_000  # past this, the lists go to blobs (results are at most 8 KiB)


def signed_message(tx: dict) -> bytes:
    body = {"from": tx["from"], "to": tx["to"], "amount": tx["amount"], "nonce": tx["nonce"]}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8")


def merkle_root(ids: list[str]) -> str:
    level = [hashlib.sha256(i.encode("utf-8")).digest() for i in ids]
    if not level:
        return hashlib.sha256(b"").hexdigest()
    while len(level) > 1:
        if len(level) % 2:
            level.append(level[-1])
        level = [hashlib.sha256(level[i] + level[i + 1]).digest() for i in range(0, len(level), 2)]
    return level[0].hex()


def check_one(tx: dict) -> str | None:
    """Steps 1 and 2 for one tx: its reason, or None."""
    from nacl.exceptions import BadSignatureError
    from nacl.signing import VerifyKey

    try:
        key = bytes.fromhex(tx["from"])
        sig = bytes.fromhex(tx["sig"])
        VerifyKey(key).verify(signed_message(tx), sig)
    except (BadSignatureError, KeyError, TypeError, ValueError, AttributeError):
        return BAD_SIGNATURE
    except Exception:  # nacl's own errors for keys of the wrong length
        return BAD_SIGNATURE
    amount = tx.get("amount")
    if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
        return BAD_AMOUNT
    return None


def check_all(txs: list[dict], _ctx: Any = None) -> list[str | None]:
    """Steps 1 and 2 for a slice (runs in the pool)."""
    return [check_one(tx) for tx in txs]


def settle(txs: list[dict], reasons: list[str | None]) -> dict:
    """Step 3 over the batch in input order, then the result."""
    seen: set[tuple[str, Any]] = set()
    valid, invalid = [], []
    for tx, reason in zip(txs, reasons):
        if reason is None:
            pair = (str(tx["from"]).lower(), json.dumps(tx.get("nonce"), sort_keys=True))
            if pair in seen:
                reason = DUPLICATE_NONCE
            else:
                seen.add(pair)
        if reason is None:
            valid.append(tx["id"])
        else:
            invalid.append({"id": tx["id"], "reason": reason})
    return {"valid": valid, "invalid": invalid, "merkle_root": merkle_root(valid)}


def parse_lines(data: bytes) -> list[Any]:
    out = []
    for n, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except ValueError:
                raise HandlerError(f"line {n} is not JSON") from None
    return out


def check_shape(txs: Any) -> list[dict]:
    if not isinstance(txs, list) or len(txs) > TXS_MAX:
        raise HandlerError(f"txs: a list of at most {TXS_MAX} transfers, or a JSON-lines blob")
    for n, tx in enumerate(txs):
        if not isinstance(tx, dict) or not isinstance(tx.get("id"), str):
            raise HandlerError(f"txs[{n}]: a transfer is an object with a string id")
    return txs


async def load_txs(payload: Any, ctx: JobContext) -> list[dict]:
    if not isinstance(payload, dict) or "txs" not in payload:
        raise HandlerError('tx.verify needs {"txs": [tx, ...]} or {"txs": {"blob": H}}')
    txs = payload["txs"]
    if isinstance(txs, dict):
        if not isinstance(txs.get("blob"), str) or ctx.mesh is None:
            raise HandlerError('txs: a list, or {"blob": "<hash>"} of a JSON-lines blob')
        try:
            txs = parse_lines(await ctx.mesh.get_blob(txs["blob"], INPUT_BYTES_MAX))
        except HandlerError as exc:
            raise HandlerError(f"txs blob: {exc}") from None
    return check_shape(txs)


async def _fits(result: dict, ctx: JobContext) -> dict:
    size = len(json.dumps(result, separators=(",", ":")))
    if size <= INLINE_RESULT_BYTES or ctx.mesh is None:
        return result
    for name in ("valid", "invalid"):
        result[name] = {"blob": await ctx.mesh.put_blob(json.dumps(result[name]).encode())}
    return result


async def tx_verify(payload: Any, ctx: JobContext) -> dict:
    txs = await load_txs(payload, ctx)
    chunk = payload.get("chunk", CHUNK_DEFAULT)
    if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 1:
        raise HandlerError("chunk: a positive integer (txs per child job)")
    run = ctx.mesh.run_cpu if ctx.mesh is not None else (lambda fn, arg: _inline(fn, arg))
    if payload.get("stage") == "check":
        reasons = await run(check_all, txs)
        return {"reasons": {"blob": await ctx.mesh.put_blob(json.dumps(reasons).encode())}}
    if len(txs) <= chunk or ctx.mesh is None:
        return await _fits(settle(txs, await run(check_all, txs)), ctx)
    children = []
    for i in range(0, len(txs), chunk):
        lines = "\n".join(json.dumps(tx, separators=(",", ":")) for tx in txs[i : i + chunk]).encode()
        children.append(("tx.verify", {"txs": {"blob": await ctx.mesh.put_blob(lines)}, "stage": "check"}))
    views = await ctx.mesh.fan_out(ctx, children)
    reasons: list[str | None] = []
    for view in views:
        reasons.extend(json.loads(await ctx.mesh.get_blob(view.result["reasons"]["blob"])))
    result = settle(txs, reasons)
    result["children"] = [v.id for v in views]
    return await _fits(result, ctx)


async def _inline(fn, arg):
    return fn(arg)
