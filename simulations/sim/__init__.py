"""The deterministic simulator: production nodes on virtual time and an in-memory network.

``run.py`` is the command line; ``driver.simulate(Params(...))`` the library
entry point (see docs/simulation.md).
"""
