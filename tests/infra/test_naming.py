"""Stack names -> resource names: valid everywhere, distinct for distinct stacks."""

from __future__ import annotations

import re

import pytest
from infra_harness import ROOT  # noqa: F401  (puts the repository root on sys.path)

from infra.naming import SLUG_MAX, Names, stack_slug

STACKS = ["dev", "Dev", "a_b", "a.b", "a-b", "prod", "feature/login-page", "x" * 40, "x" * 41]


def test_plain_names_stay_readable() -> None:
    assert stack_slug("dev") == "dev"
    assert stack_slug("prod-2") == "prod-2"


@pytest.mark.parametrize("stack", STACKS)
def test_slug_is_short_and_valid(stack: str) -> None:
    slug = stack_slug(stack)
    assert len(slug) <= SLUG_MAX
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", slug)
    names = Names(stack=stack, project="my-project-123456")
    for suffix in ("vm", "gw", "build"):
        assert 6 <= len(names.account_id(suffix)) <= 30
    assert re.fullmatch(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?", names.resource("allow-iap-ssh"))
    assert re.fullmatch(r"[a-zA-Z0-9_.]{3,64}", names.role_id("gateway_start"))
    assert len(names.build_bucket) <= 63


def test_distinct_stacks_get_distinct_slugs() -> None:
    slugs = [stack_slug(s) for s in STACKS]
    assert len(set(slugs)) == len(STACKS)
