"""The sample uses of workmesh on a local mesh of real node processes.

    ./simulations/demo.sh --workload images      # or tx, enrich, wordcount, all

Starts 3 ``workmesh start`` processes on 127.0.0.1, runs one sample workload
(docs/workloads.md) through them, checks the answer, prints what happened
and stops the mesh. Exits 1 when a check failed.

* ``images``: the CLI uploads a generated photo and submits ``image.resize``
  in one step (``workmesh submit image.resize --blob image=photo.jpg``); the
  outputs are downloaded from another node (``workmesh download``) and opened.
* ``tx``: 60 signed transfers with planted faults, as a JSON-lines blob,
  verified by ``tx.verify`` fanned out into child jobs of 20; the Merkle root
  is checked against one computed here.
* ``enrich``: a JSON-lines file of records in three languages through ``text.enrich``.
* ``wordcount``: 20 text blobs on different nodes counted by ``wordcount``
  (one child job per blob), checked against a local count.
* ``blob``: a 50 MiB file uploaded to one node, a replica holding its chunks
  SIGKILLed, the file downloaded from another node and compared.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import io
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "lib"))

from procmesh import ProcMesh, http, workmesh_command  # noqa: E402

from workmesh.blobs_client import get_blob, put_blob  # noqa: E402

WORKLOADS = ("images", "tx", "enrich", "wordcount", "blob")


def say(text: str = "") -> None:
    print(text, flush=True)


def job(node, job_type: str, payload) -> dict:
    code, view = http("POST", f"{node.url}/jobs?wait=60", {"type": job_type, "payload": payload}, timeout_s=120)
    while code < 400 and view["status"] not in ("done", "failed", "cancelled"):
        code, view = http("GET", f"{node.url}/jobs/{view['id']}?wait=60", timeout_s=120)
    if code >= 400:
        raise SystemExit(f"submit failed: {view}")
    return view


def cli(*args: str) -> str:
    out = subprocess.run([*workmesh_command(), *args], check=True, capture_output=True, text=True)
    return out.stdout


def demo_images(mesh: ProcMesh, work: Path) -> bool:
    from PIL import Image, ImageDraw

    photo = work / "photo.jpg"
    img = Image.new("RGB", (800, 600), (30, 60, 90))
    draw = ImageDraw.Draw(img)
    for i in range(0, 800, 40):
        draw.ellipse((i, i * 0.6, i + 120, i * 0.6 + 90), fill=(i % 255, 200 - i % 200, 120))
    img.save(photo, "JPEG", quality=90)
    say(f"made {photo.name}: 800x600 JPEG, {photo.stat().st_size} bytes")
    sizes = [[320, 240], [128, 128], [64, 48]]
    ok = True
    for i, fmt in enumerate(("webp", "png", "jpeg")):
        via = mesh.nodes[i % 3]
        say(f"$ workmesh submit --api {via.url} image.resize --blob image=photo.jpg "
            f"'{{\"sizes\": {json.dumps(sizes)}, \"format\": \"{fmt}\"}}' --wait 60")
        view = json.loads(cli("submit", "--api", via.url, "image.resize", "--blob", f"image={photo}",
                              json.dumps({"sizes": sizes, "format": fmt}), "--wait", "60"))
        say(f"  job {view['id'][:12]} {view['status']} on worker {str(view['worker'])[:12]}")
        if view["status"] != "done":
            say(f"  error: {view['error']}")
            return False
        for out in view["result"]["images"]:
            target = work / f"out-{out['width']}x{out['height']}.{fmt}"
            reader = mesh.nodes[(i + 1) % 3]
            cli("download", "--api", reader.url, out["blob"], "-o", str(target))
            with Image.open(target) as got:
                good = got.format == fmt.upper() and got.size == (out["width"], out["height"])
            ok &= good
            say(f"  {out['blob'][:12]} -> {target.name}: {got.format} {got.size[0]}x{got.size[1]}, "
                f"{target.stat().st_size} bytes {'ok' if good else 'WRONG'}")
    return ok


def merkle(ids: list[str]) -> str:
    level = [hashlib.sha256(i.encode()).digest() for i in ids]
    if not level:
        return hashlib.sha256(b"").hexdigest()
    while len(level) > 1:
        level = [hashlib.sha256(level[i] + level[min(i + 1, len(level) - 1)]).digest() for i in range(0, len(level), 2)]
    return level[0].hex()


def demo_tx(mesh: ProcMesh, work: Path) -> bool:
    from nacl.signing import SigningKey

    keys = [SigningKey.generate() for _ in range(5)]

    def tx(n: int, key, amount: int, nonce: int, signer=None) -> dict:
        body = {"from": key.verify_key.encode().hex(), "to": keys[4].verify_key.encode().hex(), "amount": amount, "nonce": nonce}
        sig = (signer or key).sign(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).signature.hex()
        return {"id": f"tx{n:03d}", **body, "sig": sig}

    txs = [tx(n, keys[n % 4], 1 + n, n) for n in range(60)]
    planted = {"tx007": "bad_signature", "tx023": "bad_amount", "tx041": "duplicate_nonce", "tx052": "bad_signature"}
    txs[7] = tx(7, keys[3], 8, 7, signer=keys[0])
    txs[23] = tx(23, keys[3], 0, 23)
    txs[41] = tx(41, keys[1], 5, 1)  # keys[1] used nonce 1 in tx001
    txs[52] = dict(txs[52], amount=10**9)
    blob = put_blob(mesh.nodes[0].url, "\n".join(json.dumps(t) for t in txs).encode())["hash"]
    say(f"60 transfers as a JSON-lines blob {blob[:12]}; planted: {planted}")
    view = job(mesh.nodes[1], "tx.verify", {"txs": {"blob": blob}, "chunk": 20})
    if view["status"] != "done":
        say(f"  error: {view['error']}")
        return False
    result = view["result"]
    say(f"  job {view['id'][:12]} done; child jobs: {[c[:12] for c in result.get('children', [])]}")
    found = {i["id"]: i["reason"] for i in result["invalid"]}
    say(f"  invalid: {found}")
    valid = [t["id"] for t in txs if t["id"] not in planted]
    say(f"  valid: {len(result['valid'])}; merkle root {result['merkle_root']}")
    good = found == planted and result["valid"] == valid and result["merkle_root"] == merkle(valid)
    say(f"  root computed here {merkle(valid)}: {'match' if good else 'MISMATCH'}")
    return good


def demo_enrich(mesh: ProcMesh, work: Path) -> bool:
    texts = [
        "The quick brown fox jumps over the lazy dog, and the dog sleeps in the sun.",
        "Le renard brun saute par-dessus le chien et le chien dort dans le jardin.",
        "Der schnelle Fuchs springt über den faulen Hund und der Hund schläft.",
        "El zorro marrón salta sobre el perro y el perro duerme en la casa.",
        "Workmesh stores blobs as chunks; chunks replicate; blobs survive.",
    ]
    path = work / "records.jsonl"
    path.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts)))
    blob = put_blob(mesh.nodes[2].url, path)["hash"]
    say(f"{len(texts)} records in {path.name} -> blob {blob[:12]}")
    view = job(mesh.nodes[0], "text.enrich", {"input": {"blob": blob}, "keywords": 3})
    if view["status"] != "done":
        say(f"  error: {view['error']}")
        return False
    out = get_blob(mesh.nodes[1].url, view["result"]["output"]["blob"]).decode().splitlines()
    say(f"  job {view['id'][:12]} done: {view['result']['records']} records, languages {view['result']['languages']}")
    ok = len(out) == len(texts)
    for line in out:
        rec = json.loads(line)
        say(f"  #{rec['id']} {rec['language']} words={rec['words']} keywords={rec['keywords']} sha256={rec['sha256'][:12]}")
        ok &= rec["sha256"] == hashlib.sha256(rec["text"].encode()).hexdigest()
    return ok


def demo_wordcount(mesh: ProcMesh, work: Path) -> bool:
    rng = random.Random(1)
    vocab = "mesh node job blob chunk lease quorum replica worker result".split()
    texts = [" ".join(rng.choice(vocab) for _ in range(rng.randrange(50, 500))) for _ in range(20)]
    hashes = [put_blob(mesh.nodes[i % 3].url, t.encode())["hash"] for i, t in enumerate(texts)]
    say(f"20 text blobs uploaded across 3 nodes ({sum(len(t) for t in texts)} bytes)")
    started = time.monotonic()
    view = job(mesh.nodes[0], "wordcount", {"blobs": hashes})
    if view["status"] != "done":
        say(f"  error: {view['error']}")
        return False
    result = view["result"]
    say(f"  job {view['id'][:12]} done in {time.monotonic() - started:.2f} s with {len(result['children'])} child jobs")
    workers = collections.Counter(http("GET", f"{mesh.nodes[0].url}/jobs/{c}")[1]["worker"][:12] for c in result["children"])
    say(f"  children ran on workers: {dict(workers)}")
    local = collections.Counter(w for t in texts for w in re.findall(r"[^\W_]+", t.lower()))
    say(f"  top words: {sorted(result['counts'].items(), key=lambda kv: -kv[1])[:5]}")
    good = result["counts"] == dict(local)
    say(f"  local count {'matches' if good else 'DIFFERS'}")
    return good


def demo_blob(mesh: ProcMesh, work: Path, size_mib: int = 50) -> bool:
    path = work / "big.bin"
    with open(path, "wb") as f:
        for _ in range(size_mib):
            f.write(os.urandom(2**20))
    started = time.monotonic()
    doc = put_blob(mesh.nodes[0].url, path)
    up = size_mib / (time.monotonic() - started)
    say(f"uploaded {size_mib} MiB to node0: {doc['hash'][:12]}, {up:.1f} MiB/s")
    held = {n.index: http("GET", f"{n.url}/status")[1]["blobs"]["chunks"] for n in mesh.nodes}
    say(f"  chunks held per node: {held}")
    victim = max(mesh.nodes[1:], key=lambda n: held[n.index])
    victim.kill()
    say(f"  SIGKILLed node{victim.index}")
    reader = next(n for n in mesh.nodes[1:] if n is not victim)
    out = work / "copy.bin"
    started = time.monotonic()
    get_blob(reader.url, doc["hash"], out)
    down = size_mib / (time.monotonic() - started)
    same = hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(path.read_bytes()).digest()
    say(f"  downloaded from node{reader.index}: {down:.1f} MiB/s, {'byte-identical' if same else 'DIFFERENT'}")
    return same


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", choices=[*WORKLOADS, "all"], default="all")
    args = parser.parse_args()
    chosen = WORKLOADS[:-1] if args.workload == "all" else (args.workload,)
    base = Path(tempfile.mkdtemp(prefix="workmesh-workloads-"))
    mesh = ProcMesh(3 if args.workload != "blob" else 4, base / "mesh", node_args=["--replicas", "3"])
    say(f"starting {len(mesh.nodes)} nodes under {base} ...")
    mesh.start()
    failed = []
    try:
        for name in chosen:
            say(f"\n== {name}")
            if not globals()[f"demo_{name}"](mesh, base):
                failed.append(name)
    finally:
        mesh.stop()
    say(f"\n{'all workloads ended as expected' if not failed else 'FAILED: ' + ', '.join(failed)} (logs in {base})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
