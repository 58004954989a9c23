"""The checks of the auth stage: SPF (RFC 7208), DKIM (RFC 6376), DMARC (RFC 7489) and the
Authentication-Results header (RFC 8601). Every DNS lookup goes through `pipeline.dns.Resolver`."""
