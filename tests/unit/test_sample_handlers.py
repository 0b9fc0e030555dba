"""The pure parts of the sample handlers (node/handlers_*.py)."""

from __future__ import annotations

import hashlib
import io
import json

import pytest
from nacl.signing import SigningKey

from workmesh.node.handlers import HandlerError
from workmesh.node.handlers_media import _parse, resize_images
from workmesh.node.handlers_text import count_words, detect_language, enrich_lines, keywords, words_of
from workmesh.node.handlers_tx import check_all, merkle_root, settle


def sha(b: bytes) -> bytes:
    return hashlib.sha256(b).digest()


def test_merkle_root_by_hand():
    a, b, c = (sha(x.encode()) for x in "abc")
    assert merkle_root([]) == hashlib.sha256(b"").hexdigest()
    assert merkle_root(["a"]) == a.hex()
    assert merkle_root(["a", "b"]) == sha(a + b).hex()
    assert merkle_root(["a", "b", "c"]) == sha(sha(a + b) + sha(c + c)).hex()


def tx(key: SigningKey, tx_id: str, amount, nonce) -> dict:
    body = {"from": key.verify_key.encode().hex(), "to": "00" * 32, "amount": amount, "nonce": nonce}
    sig = key.sign(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).signature.hex()
    return {"id": tx_id, **body, "sig": sig}


def test_checks_run_in_order_and_duplicates_count_only_valid_transfers():
    k = SigningKey(b"\x01" * 32)
    txs = [
        tx(k, "ok", 5, 1),
        dict(tx(k, "forged", 5, 2), sig="ab" * 64),
        tx(k, "zero", 0, 3),
        tx(k, "bool", True, 4),
        tx(k, "dup", 7, 1),
        dict(tx(k, "bad-and-dup", 7, 1), amount=8),  # bad signature wins over duplicate
        tx(k, "reuses-invalid", 1, 3),  # "zero" was invalid: nonce 3 is free
        dict(tx(k, "junk-key", 1, 9), **{"from": "zz"}),
    ]
    result = settle(txs, check_all(txs))
    assert result["valid"] == ["ok", "reuses-invalid"]
    assert result["invalid"] == [
        {"id": "forged", "reason": "bad_signature"},
        {"id": "zero", "reason": "bad_amount"},
        {"id": "bool", "reason": "bad_amount"},
        {"id": "dup", "reason": "duplicate_nonce"},
        {"id": "bad-and-dup", "reason": "bad_signature"},
        {"id": "junk-key", "reason": "bad_signature"},
    ]
    assert result["merkle_root"] == merkle_root(["ok", "reuses-invalid"])


def test_words_language_and_keywords():
    assert words_of("Déjà-vu, x_y 42!") == ["déjà", "vu", "x", "y", "42"]
    assert detect_language(words_of("the cat and the dog")) == "en"
    assert detect_language(words_of("le chat et le chien")) == "fr"
    assert detect_language(words_of("xyzzy plugh")) == "und"
    assert keywords(words_of("the mesh mesh node node node 1234 at"), 2) == ["node", "mesh"]
    assert count_words([b"a b", b"B c"]) == {"a": 1, "b": 2, "c": 1}


def test_enrich_lines_adds_the_fields_and_names_a_bad_line():
    out, n, langs = enrich_lines((b'{"text": "the cat sat", "k": 1}\n\n{"text": ""}\n', 3))
    records = [json.loads(line) for line in out.decode().splitlines()]
    assert n == 2 and langs == {"en": 1, "und": 1}
    assert records[0] == {
        "text": "the cat sat", "k": 1, "words": 3, "language": "en", "keywords": ["cat", "sat"],
        "sha256": hashlib.sha256(b"the cat sat").hexdigest(),
    }
    with pytest.raises(HandlerError, match="line 2"):
        enrich_lines((b'{"text": "x"}\n[1]\n', 3))


def test_resize_gives_each_size_in_the_format_asked():
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGBA", (40, 30), (1, 2, 3, 128)).save(buf, "PNG")
    outs = resize_images((buf.getvalue(), [(10, 5), (80, 60)], "jpeg"))
    for data, size in zip(outs, [(10, 5), (80, 60)]):
        with Image.open(io.BytesIO(data)) as img:
            assert img.format == "JPEG" and img.size == size
    with pytest.raises(HandlerError, match="not an image"):
        resize_images((b"junk", [(1, 1)], "png"))


@pytest.mark.parametrize(
    "payload",
    [None, {"sizes": [[1, 1]]}, {"image": {"blob": "h"}, "sizes": []}, {"image": {"blob": "h"}, "sizes": [[0, 1]]},
     {"image": {"blob": "h"}, "sizes": [[1, 1]], "format": "gif"}, {"image": {"blob": "h"}, "sizes": [[True, 1]]}],
)
def test_resize_payloads_that_are_refused(payload):
    with pytest.raises(HandlerError):
        _parse(payload)
