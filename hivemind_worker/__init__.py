"""hivemind-worker: the worker node of the HiveMind distributed computing platform."""

__version__ = "0.1.0"
