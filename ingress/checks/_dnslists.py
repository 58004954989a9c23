"""Moved to `pipeline.dnslists` (the blocklist stage uses the same lists); kept for the checks' imports."""
from pipeline.dnslists import *  # noqa: F401,F403
from pipeline.dnslists import __all__  # noqa: F401
