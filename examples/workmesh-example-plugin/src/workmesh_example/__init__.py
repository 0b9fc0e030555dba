"""Example workmesh job handlers (see handlers.py)."""
