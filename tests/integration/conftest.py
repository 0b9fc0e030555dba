"""Integration tests drive real node processes through simulations/lib/procmesh.py."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "simulations"))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "simulations" / "lib"))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "simulations" / "instruments"))
