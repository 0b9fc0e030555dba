"""Text handlers: ``text.enrich`` and the ``wordcount`` map/reduce.

``text.enrich``
    Payload ``{"input": {"blob": H}, "keywords": 5}`` (``{"records": {"blob": H}}``
    and a bare ``{"blob": H}`` are accepted too): a JSON-lines blob of records,
    each an object with a string ``text``. Result ``{"output": {"blob": H2},
    "records": n, "languages": {code: count}}``, where H2 is a JSON-lines blob
    of the same records in the same order, each with four fields added:

    * ``words``: the number of words, ``len(re.findall(r"[^\\W_]+", text.lower()))``;
    * ``language``: the code (``en``, ``fr``, ``de``, ``es``, ``it``, ``pt``,
      ``nl``) whose list of common function words (``STOPWORDS``) covers the most
      of the record's words; ``und`` (undetermined) when none matches;
    * ``keywords``: the top ``keywords`` (default 5, at most 50) words by
      frequency, leaving out every language's function words, words shorter
      than 3 characters and numbers; ties go alphabetically;
    * ``sha256``: hex SHA-256 of the text's UTF-8 bytes.

    A line that is not JSON, not an object, or has no string ``text`` fails
    the job with its line number.

``wordcount``
    Payload ``{"blobs": [H, ...], "group": 1}``. The parent submits one child
    job ``wordcount.map`` per ``group`` blobs (default 1) through the mesh, waits
    for them without holding a worker slot (``node/mesh.py``), and adds their
    counts. Result ``{"counts": {word: n}, "children": [child job ids]}``;
    words are ``re.findall(r"[^\\W_]+", text.lower())`` of each blob decoded as
    UTF-8. A child that fails fails the parent with the child's error;
    cancelling the parent cancels its children. When the counts would pass
    the 8 KiB result bound, ``counts`` is ``{"blob": H}``, a JSON object blob.

``wordcount.map``
    Payload ``{"blobs": [H, ...]}``; result ``{"counts": {word: n}}`` (or a blob
    reference as above): the counts of those blobs together.
"""

from __future__ import annotations

import collections
import hashlib
import json
import re
from typing import Any

from workmesh.node.handlers import HandlerError, JobContext

WORD = re.compile(r"[^\W_]+")
INPUT_BYTES_MAX = 512 * 2**20
BLOBS_MAX = 1000
INLINE_RESULT_BYTES = 7_000

STOPWORDS: dict[str, frozenset[str]] = {
    "en": frozenset("the and of to a in is it that for on with as was are be this by not or at from but have his her they you he she we".split()),
    "fr": frozenset("le la les et de des un une est que qui dans pour pas sur au aux du ce il elle nous vous ne avec se son sont".split()),
    "de": frozenset("der die das und ist nicht ein eine zu den mit von sich auf für im dem des auch es sie ich wir er war".split()),
    "es": frozenset("el la los las y de que en un una es por con no para se del al lo como su más pero sus le ya".split()),
    "it": frozenset("il lo la gli le e di che in un una è per con non si del della sono ma al come anche più ho".split()),
    "pt": frozenset("o a os as e de que em um uma é para com não se do da dos das no na por mais mas ao".split()),
    "nl": frozenset("de het een en van is dat in te op niet zijn met voor die er aan ook als bij maar om".split()),
}
ALL_STOPWORDS = frozenset().union(*STOPWORDS.values())


def words_of(text: str) -> list[str]:
    return WORD.findall(text.lower())


def detect_language(words: list[str]) -> str:
    best, best_hits = "und", 0
    for code in sorted(STOPWORDS):
        hits = sum(1 for w in words if w in STOPWORDS[code])
        if hits > best_hits:
            best, best_hits = code, hits
    return best


def keywords(words: list[str], top: int) -> list[str]:
    counts = collections.Counter(w for w in words if len(w) >= 3 and w not in ALL_STOPWORDS and not w.isdigit())
    return [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top]]


def enrich_record(record: dict, top: int) -> dict:
    text = record["text"]
    words = words_of(text)
    return {
        **record,
        "words": len(words),
        "language": detect_language(words),
        "keywords": keywords(words, top),
        "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
    }


def enrich_lines(arg: tuple[bytes, int], _ctx: Any = None) -> tuple[bytes, int, dict]:
    """Pure: the enriched JSON-lines bytes, the record count and languages (runs in the pool)."""
    data, top = arg
    out, languages = [], collections.Counter()
    for n, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise HandlerError(f"line {n}: not JSON") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise HandlerError(f'line {n}: a record is an object with a string "text"')
        enriched = enrich_record(record, top)
        languages[enriched["language"]] += 1
        out.append(json.dumps(enriched, ensure_ascii=False, separators=(",", ":")))
    return ("\n".join(out) + ("\n" if out else "")).encode("utf-8"), len(out), dict(languages)


def _input_blob(payload: Any) -> str:
    if isinstance(payload, dict):
        for ref in (payload.get("input"), payload.get("records"), payload):
            if isinstance(ref, dict) and isinstance(ref.get("blob"), str):
                return ref["blob"]
    raise HandlerError('text.enrich needs {"input": {"blob": H}} (a JSON-lines blob of records with "text")')


async def text_enrich(payload: Any, ctx: JobContext) -> dict:
    digest = _input_blob(payload)
    top = payload.get("keywords", 5)
    if not isinstance(top, int) or isinstance(top, bool) or not 0 <= top <= 50:
        raise HandlerError("keywords: an integer from 0 to 50")
    if ctx.mesh is None:
        raise HandlerError("text.enrich needs a node with blobs")
    data = await ctx.mesh.get_blob(digest, INPUT_BYTES_MAX)
    out, count, languages = await ctx.mesh.run_cpu(enrich_lines, (data, top))
    return {"output": {"blob": await ctx.mesh.put_blob(out)}, "records": count, "languages": languages}


# -- wordcount -------------------------------------------------------------------
def count_words(texts: list[bytes], _ctx: Any = None) -> dict[str, int]:
    """Pure: the word counts of these texts together (runs in the pool)."""
    counts: collections.Counter[str] = collections.Counter()
    for data in texts:
        counts.update(words_of(data.decode("utf-8", errors="replace")))
    return dict(counts)


def _blob_list(payload: Any) -> list[str]:
    blobs = payload.get("blobs") if isinstance(payload, dict) else None
    if not isinstance(blobs, list) or not 1 <= len(blobs) <= BLOBS_MAX or not all(isinstance(b, str) for b in blobs):
        raise HandlerError(f'wordcount needs {{"blobs": [hash, ...]}} with 1 to {BLOBS_MAX} hashes')
    return blobs


async def _counts_out(counts: dict[str, int], ctx: JobContext, extra: int = 0) -> Any:
    if len(json.dumps(counts, ensure_ascii=False, separators=(",", ":")).encode()) + extra <= INLINE_RESULT_BYTES:
        return counts
    return {"blob": await ctx.mesh.put_blob(json.dumps(counts, sort_keys=True).encode())}


async def _counts_in(counts: Any, ctx: JobContext) -> dict[str, int]:
    if isinstance(counts, dict) and set(counts) == {"blob"} and isinstance(counts["blob"], str) and len(counts["blob"]) == 64:
        return json.loads(await ctx.mesh.get_blob(counts["blob"]))
    return counts


async def wordcount_map(payload: Any, ctx: JobContext) -> dict:
    blobs = _blob_list(payload)
    if ctx.mesh is None:
        raise HandlerError("wordcount needs a node with blobs")
    texts = [await ctx.mesh.get_blob(h, INPUT_BYTES_MAX) for h in blobs]
    counts = await ctx.mesh.run_cpu(count_words, texts)
    return {"counts": await _counts_out(counts, ctx)}


async def wordcount(payload: Any, ctx: JobContext) -> dict:
    blobs = _blob_list(payload)
    group = payload.get("group", 1)
    if not isinstance(group, int) or isinstance(group, bool) or group < 1:
        raise HandlerError("group: a positive integer (blobs per child job)")
    if ctx.mesh is None:
        raise HandlerError("wordcount needs a node with blobs")
    children = [("wordcount.map", {"blobs": blobs[i : i + group]}) for i in range(0, len(blobs), group)]
    views = await ctx.mesh.fan_out(ctx, children)
    total: collections.Counter[str] = collections.Counter()
    for view in views:
        total.update(await _counts_in(view.result["counts"], ctx))
    ids = [v.id for v in views]
    counts = await _counts_out(dict(total), ctx, extra=len(json.dumps(ids)) + 32)
    return {"counts": counts, "children": ids}
