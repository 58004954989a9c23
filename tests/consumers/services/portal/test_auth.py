"""Sign-in against the real slapd of the demo school: the bind, and who is an admin (cn=admins)."""
from __future__ import annotations

import pytest

from consumers.services.portal.auth import DirectoryAccounts
from pipeline.settings import ConfigError

ADMINS = "cn=admins,ou=groups,dc=school,dc=test"


async def test_the_demo_admin_is_an_admin_and_nobody_else(directory) -> None:
    accounts = DirectoryAccounts(directory, ADMINS)
    admin = await accounts.authenticate("it.admin", "Admin2026!")
    anna = await accounts.authenticate("anna.schmidt@school.test", "Anna2026!")
    assert admin is not None and anna is not None
    assert await accounts.is_admin(admin) and not await accounts.is_admin(anna)
    assert await accounts.authenticate("it.admin", "wrong") is None
    assert await accounts.authenticate("old.student", "Old2026!") is None  # disabled
    assert not await DirectoryAccounts(directory, "").is_admin(admin)  # no admin group: no admins


def test_the_admin_group_must_be_a_group_dn(directory) -> None:
    with pytest.raises(ConfigError, match="admin_group"):
        DirectoryAccounts(directory, "admins@school.test")
