"""The sample handlers every node runs (docs/workloads.md): their registry entries."""

from __future__ import annotations

from workmesh.node.handlers import Handler
from workmesh.node.handlers_media import image_resize
from workmesh.node.handlers_text import text_enrich, wordcount, wordcount_map
from workmesh.node.handlers_tx import tx_verify

SAMPLE_HANDLERS = (
    Handler("image.resize", image_resize),
    Handler("tx.verify", tx_verify),
    Handler("text.enrich", text_enrich),
    Handler("wordcount", wordcount),
    Handler("wordcount.map", wordcount_map),
)
