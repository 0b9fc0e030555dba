"""``image.resize``: one image blob in, one blob per requested size out (Pillow).

Payload::

    {"image": {"blob": H}, "sizes": [[w, h], ...], "format": "png" | "jpeg" | "webp"}

Each size is the exact output size in pixels (the image is stretched to it;
crop or pad before if the aspect ratio matters). ``format`` defaults to
``png``. Result, in the order asked::

    {"images": [{"width": w, "height": h, "blob": H2}, ...]}

Bad input (not an image Pillow reads, a size out of range, an unknown
format, an image over ``PIXELS_MAX``) fails the job with a clear message.
The decoding and encoding run in the node's process pool.
"""

from __future__ import annotations

import io
from typing import Any

from workmesh.node.handlers import HandlerError, JobContext

FORMATS = {"png": "PNG", "jpeg": "JPEG", "jpg": "JPEG", "webp": "WEBP"}
SIZES_MAX = 32
SIDE_MAX = 10_000
PIXELS_MAX = 50_000_000  # of the input image
INPUT_BYTES_MAX = 256 * 2**20


def _parse(payload: Any) -> tuple[str, list[tuple[int, int]], str]:
    if not isinstance(payload, dict):
        raise HandlerError('image.resize needs {"image": {"blob": H}, "sizes": [[w, h], ...], "format": ...}')
    image = payload.get("image")
    if not isinstance(image, dict) or not isinstance(image.get("blob"), str):
        raise HandlerError('image: must be {"blob": "<hash>"}')
    sizes = payload.get("sizes")
    if not isinstance(sizes, list) or not 1 <= len(sizes) <= SIZES_MAX:
        raise HandlerError(f"sizes: a list of 1 to {SIZES_MAX} [width, height] pairs")
    pairs = []
    for size in sizes:
        if (
            not isinstance(size, list)
            or len(size) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= SIDE_MAX for v in size)
        ):
            raise HandlerError(f"sizes: each size is [width, height], integers from 1 to {SIDE_MAX}; got {size!r}")
        pairs.append((size[0], size[1]))
    fmt = payload.get("format", "png")
    if fmt not in FORMATS:
        raise HandlerError(f"format: one of png, jpeg, webp; got {fmt!r}")
    return image["blob"], pairs, fmt


def resize_images(arg: tuple[bytes, list[tuple[int, int]], str], _ctx: Any = None) -> list[bytes]:
    """Pure: the image bytes resized to each size, encoded in ``fmt`` (runs in the pool)."""
    from PIL import Image, UnidentifiedImageError

    data, sizes, fmt = arg
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > PIXELS_MAX:
                raise HandlerError(f"image: {img.width}x{img.height} is over {PIXELS_MAX} pixels")
            img.load()
            source = img.copy()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise HandlerError(f"image: not an image Pillow can read ({type(exc).__name__})") from None
    kind = FORMATS[fmt]
    if kind == "JPEG" and source.mode not in ("RGB", "L"):
        source = source.convert("RGB")
    elif kind != "JPEG" and source.mode not in ("RGB", "RGBA", "L", "LA", "P"):
        source = source.convert("RGBA")
    out = []
    for width, height in sizes:
        buf = io.BytesIO()
        source.resize((width, height), Image.Resampling.LANCZOS).save(buf, format=kind)
        out.append(buf.getvalue())
    return out


async def image_resize(payload: Any, ctx: JobContext) -> dict:
    digest, sizes, fmt = _parse(payload)
    if ctx.mesh is None:
        raise HandlerError("image.resize needs a node with blobs")
    data = await ctx.mesh.get_blob(digest, INPUT_BYTES_MAX)
    encoded = await ctx.mesh.run_cpu(resize_images, (data, sizes, fmt))
    images = []
    for (width, height), blob in zip(sizes, encoded):
        images.append({"width": width, "height": height, "blob": await ctx.mesh.put_blob(blob)})
    return {"images": images}
