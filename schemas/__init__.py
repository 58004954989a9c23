"""Event types (versioned), stage result details and their exported JSON Schema."""
from schemas.events import *  # noqa: F401,F403
from schemas.events import __all__  # noqa: F401
