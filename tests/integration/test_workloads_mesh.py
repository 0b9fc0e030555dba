"""The sample handlers (docs/workloads.md) through a mesh of three real node processes."""

from __future__ import annotations

import collections
import hashlib
import io
import json
import os
import random
import re

import pytest
from nacl.signing import SigningKey
from PIL import Image

from procmesh import ProcMesh, http
from workmesh.blobs_client import get_blob, put_blob

pytestmark = pytest.mark.slow
WAIT = "?wait=60"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    with ProcMesh(3, tmp_path_factory.mktemp("workloads"), node_args=["--replicas", "3"]) as m:
        yield m


def run_job(node, job_type: str, payload, timeout_s: float = 120.0) -> dict:
    code, view = http("POST", f"{node.url}/jobs{WAIT}", {"type": job_type, "payload": payload}, timeout_s=timeout_s)
    assert code in (200, 202), view
    if view["status"] not in ("done", "failed", "cancelled"):
        code, view = http("GET", f"{node.url}/jobs/{view['id']}?wait=60", timeout_s=timeout_s)
    assert view["status"] in ("done", "failed", "cancelled"), view
    return view


# -- image.resize ---------------------------------------------------------------
def test_an_image_is_resized_through_the_mesh(mesh):
    img = Image.new("RGB", (300, 200))
    for x in range(300):
        img.putpixel((x, x % 200), (x % 256, 20, 200))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    source = put_blob(mesh.nodes[0].url, buf.getvalue())["hash"]
    sizes = [[64, 48], [17, 31], [300, 200]]
    for i, fmt in enumerate(("png", "jpeg", "webp")):
        view = run_job(mesh.nodes[(i + 1) % 3], "image.resize", {"image": {"blob": source}, "sizes": sizes, "format": fmt})
        assert view["status"] == "done", view
        images = view["result"]["images"]
        assert [[o["width"], o["height"]] for o in images] == sizes
        for out in images:
            data = get_blob(mesh.nodes[i % 3].url, out["blob"])
            with Image.open(io.BytesIO(data)) as got:
                assert got.format == fmt.upper() and got.size == (out["width"], out["height"])


def test_bad_image_input_fails_the_job_cleanly(mesh):
    junk = put_blob(mesh.nodes[0].url, b"not an image at all")["hash"]
    view = run_job(mesh.nodes[1], "image.resize", {"image": {"blob": junk}, "sizes": [[10, 10]], "format": "png"})
    assert view["status"] == "failed" and "not an image" in view["error"]
    code, problem = http("POST", f"{mesh.nodes[1].url}/jobs{WAIT}", {"type": "image.resize", "payload": {"sizes": "big"}})
    assert problem["status"] == "failed" and "image" in problem["error"]


# -- tx.verify -------------------------------------------------------------------
def expected_root(ids: list[str]) -> str:
    """The Merkle rule of the issue, written independently of the handler."""

    def h(b: bytes) -> bytes:
        return hashlib.sha256(b).digest()

    if not ids:
        return h(b"").hex()
    nodes = [h(i.encode()) for i in ids]
    while len(nodes) != 1:
        nodes = [h(nodes[i] + (nodes[i + 1] if i + 1 < len(nodes) else nodes[i])) for i in range(0, len(nodes), 2)]
    return nodes[0].hex()


def signed(key: SigningKey, tx_id: str, to: str, amount, nonce: int, *, signer: SigningKey | None = None) -> dict:
    sender = key.verify_key.encode().hex()
    msg = json.dumps({"from": sender, "to": to, "amount": amount, "nonce": nonce}, sort_keys=True, separators=(",", ":"))
    sig = (signer or key).sign(msg.encode()).signature.hex()
    return {"id": tx_id, "from": sender, "to": to, "amount": amount, "nonce": nonce, "sig": sig}


def planted_batch() -> tuple[list[dict], list[str], list[dict]]:
    rng = random.Random(7)
    keys = [SigningKey(bytes(rng.randrange(256) for _ in range(32))) for _ in range(4)]
    to = keys[3].verify_key.encode().hex()
    txs, bad = [], []
    for n in range(17):  # with the 3 below, an inline payload within 8 KiB
        txs.append(signed(keys[n % 3], f"tx-{n}", to, 10 + n, n))
    txs[4] = signed(keys[1], "tx-4", to, 14, 4, signer=keys[2])  # signed by another key
    txs[9] = dict(txs[9], amount=10_000)  # amount changed after signing
    txs[13] = signed(keys[1], "tx-13", to, 0, 13)  # a zero amount, well signed
    txs.append(signed(keys[0], "tx-reuse", to, 5, 3))  # reuses tx-3's nonce (keys[0], 3)
    txs.append(signed(keys[1], "tx-after-bad", to, 5, 4))  # tx-4 was invalid: its nonce is free
    txs.append(dict(signed(keys[2], "tx-bad-dup", to, 5, 5), sig="00" * 64))  # bad sig beats duplicate
    bad = [
        {"id": "tx-4", "reason": "bad_signature"},
        {"id": "tx-9", "reason": "bad_signature"},
        {"id": "tx-13", "reason": "bad_amount"},
        {"id": "tx-reuse", "reason": "duplicate_nonce"},
        {"id": "tx-bad-dup", "reason": "bad_signature"},
    ]
    bad_ids = {b["id"] for b in bad}
    valid = [t["id"] for t in txs if t["id"] not in bad_ids]
    return txs, valid, bad


def test_tx_verify_finds_exactly_the_planted_failures(mesh):
    txs, valid, bad = planted_batch()
    inline = run_job(mesh.nodes[0], "tx.verify", {"txs": txs})
    assert inline["status"] == "done", inline
    assert inline["result"] == {"valid": valid, "invalid": bad, "merkle_root": expected_root(valid)}
    lines = "\n".join(json.dumps(t) for t in txs).encode()
    blob = put_blob(mesh.nodes[1].url, lines)["hash"]
    from_blob = run_job(mesh.nodes[2], "tx.verify", {"txs": {"blob": blob}})
    assert from_blob["result"] == inline["result"]
    # A batch larger than "chunk" fans out into child jobs, with the same answer.
    fanned = run_job(mesh.nodes[1], "tx.verify", {"txs": {"blob": blob}, "chunk": 8})
    assert fanned["status"] == "done", fanned
    children = fanned["result"].pop("children")
    assert fanned["result"] == inline["result"] and len(children) == 3
    for child in children:
        assert http("GET", f"{mesh.nodes[0].url}/jobs/{child}")[1]["status"] == "done"


def test_tx_verify_of_nothing_and_of_junk(mesh):
    empty = run_job(mesh.nodes[0], "tx.verify", {"txs": []})
    assert empty["result"] == {"valid": [], "invalid": [], "merkle_root": hashlib.sha256(b"").hexdigest()}
    junk = run_job(mesh.nodes[0], "tx.verify", {"txs": [{"id": "x", "from": "zz"}, 5]})
    assert junk["status"] == "failed" and "txs[1]" in junk["error"]


# -- wordcount ---------------------------------------------------------------------
VOCAB = ["alpha", "Beta", "gamma", "déjà", "vu", "naïve", "x_y", "42", "straße", "日本", "the", "end"]


def test_wordcount_over_50_blobs_matches_a_local_count(mesh):
    rng = random.Random(3)
    texts = [" ".join(rng.choice(VOCAB) + rng.choice(["", ",", ".", "!"]) for _ in range(rng.randrange(5, 80))) for _ in range(50)]
    hashes = [put_blob(mesh.nodes[i % 3].url, t.encode())["hash"] for i, t in enumerate(texts)]
    view = run_job(mesh.nodes[0], "wordcount", {"blobs": hashes}, timeout_s=180)
    assert view["status"] == "done", view
    local = collections.Counter(w for t in texts for w in re.findall(r"[^\W_]+", t.lower()))
    assert view["result"]["counts"] == dict(local)
    children = view["result"]["children"]
    assert len(children) == 50 and len(set(children)) == 50
    for i, child in enumerate(children):
        code, doc = http("GET", f"{mesh.nodes[i % 3].url}/jobs/{child}")
        assert code == 200 and doc["status"] == "done" and doc["type"] == "wordcount.map"
        assert doc["result"]["counts"] == dict(collections.Counter(re.findall(r"[^\W_]+", texts[i].lower())))


def test_a_failing_child_fails_the_parent_with_its_error(mesh):
    ok = put_blob(mesh.nodes[0].url, b"one two")["hash"]
    missing = "ab" * 32
    view = run_job(mesh.nodes[1], "wordcount", {"blobs": [ok, missing]})
    assert view["status"] == "failed", view
    assert missing in view["error"]


# -- text.enrich -------------------------------------------------------------------
def test_text_enrich_on_a_json_lines_file(mesh, tmp_path):
    records = [
        {"id": 1, "text": "The cat sat on the mat, and the cat was happy with the mat."},
        {"id": 2, "text": "Le chat est sur le tapis et il est content pour le moment."},
        {"id": 3, "text": "Der Hund ist nicht im Haus und die Katze ist auch nicht da."},
        {"id": 4, "text": "12345 !!!"},
    ]
    path = tmp_path / "records.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    blob = put_blob(mesh.nodes[2].url, path)["hash"]
    view = run_job(mesh.nodes[0], "text.enrich", {"input": {"blob": blob}, "keywords": 2})
    assert view["status"] == "done", view
    assert view["result"]["records"] == 4
    out = [json.loads(line) for line in get_blob(mesh.nodes[1].url, view["result"]["output"]["blob"]).decode().splitlines()]
    assert [r["id"] for r in out] == [1, 2, 3, 4]
    for rec, src in zip(out, records):
        assert rec["text"] == src["text"]
        assert rec["words"] == len(re.findall(r"[^\W_]+", src["text"].lower()))
        assert rec["sha256"] == hashlib.sha256(src["text"].encode()).hexdigest()
    assert [r["language"] for r in out] == ["en", "fr", "de", "und"]
    assert out[0]["keywords"] == ["cat", "mat"]
    assert view["result"]["languages"] == {"en": 1, "fr": 1, "de": 1, "und": 1}

    bad = put_blob(mesh.nodes[2].url, b'{"text": "fine"}\n{"no_text": 1}\n')["hash"]
    failed = run_job(mesh.nodes[0], "text.enrich", {"input": {"blob": bad}})
    assert failed["status"] == "failed" and "line 2" in failed["error"]


# -- the CLI -----------------------------------------------------------------------
def test_cli_upload_download_and_submit_with_a_blob(mesh, tmp_path):
    import subprocess

    from procmesh import workmesh_command

    def cli(*args: str) -> str:
        done = subprocess.run([*workmesh_command(), *args], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout

    source = tmp_path / "data.bin"
    source.write_bytes(os.urandom(300_000))
    digest = cli("upload", "--api", mesh.nodes[0].url, str(source)).strip()
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    copy = tmp_path / "copy.bin"
    cli("download", "--api", mesh.nodes[1].url, digest, "-o", str(copy))
    assert copy.read_bytes() == source.read_bytes()

    photo = tmp_path / "photo.jpg"
    Image.new("RGB", (90, 60), (10, 200, 30)).save(photo, "JPEG")
    view = json.loads(cli("submit", "--api", mesh.nodes[2].url, "image.resize", "--blob", f"image={photo}",
                          '{"sizes": [[30, 20]], "format": "png"}', "--wait", "60"))
    assert view["status"] == "done", view
    out = view["result"]["images"][0]
    with Image.open(io.BytesIO(get_blob(mesh.nodes[0].url, out["blob"]))) as img:
        assert img.format == "PNG" and img.size == (30, 20)
