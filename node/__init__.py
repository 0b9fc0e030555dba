"""The workmesh node: job facts, leases, gossip, workers, CLI."""

__version__ = "0.1.0"
