"""workmesh: a peer-to-peer job mesh.

The import name ``workmesh`` holds the whole program: ``workmesh.node``,
``workmesh.dht``, ``workmesh.crypto`` and ``workmesh.api`` (the repository
keeps them as the top-level folders ``node/``, ``dht/``, ``crypto/`` and
``api/``; ``pyproject.toml`` maps them under this package).
"""

__version__ = "0.1.0"
