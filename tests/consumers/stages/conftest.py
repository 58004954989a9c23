"""The real NSD of the SMTP-time check tests, for the blocklist stage's DNS lists."""
from tests.ingress.checks.conftest import dead_resolver, nsd, resolver  # noqa: F401
