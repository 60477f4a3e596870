"""Secrets stay in their scope (contract §12): which references a bot may resolve, judged before any read."""

from __future__ import annotations

import pytest

from crm_push.config import SecretRef, load_bot_config
from crm_push.secrets import ReferencePrefixes, SecretUnavailable, check_reference_scope, scoped_resolver

SECRETS = "post-call-push/"
PARAMETERS = "/post-call-push/"
SM_ARN = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:"
SSM_ARN = "arn:aws:ssm:eu-west-1:123456789012:parameter"


def refused(ref: SecretRef, scope: str = "tenant-a") -> SecretUnavailable:
    with pytest.raises(SecretUnavailable) as raised:
        check_reference_scope(ref, scope, SECRETS, PARAMETERS)
    return raised.value


@pytest.mark.parametrize(
    "ref",
    [
        SecretRef(secret="post-call-push/tenant-a/bot-1/credentials", key="token"),
        SecretRef(secret="post-call-push/tenant-a/x"),
        SecretRef(parameter="/post-call-push/tenant-a/bot-1/api-key"),
        SecretRef(secret=SM_ARN + "post-call-push/tenant-a/bot-1/credentials-AbC12z"),  # complete ARN
        SecretRef(secret=SM_ARN + "post-call-push/tenant-a/bot-1/credentials"),  # partial ARN
        SecretRef(secret=SM_ARN + "post-call-push/tenant-a/token-abcdef"),  # partial, name ends like a suffix
        SecretRef(secret="arn:aws-cn:secretsmanager:cn-north-1:123456789012:secret:post-call-push/tenant-a/k-Q1w2E3"),
        SecretRef(parameter=SSM_ARN + "/post-call-push/tenant-a/bot-1/api-key"),
        SecretRef(parameter="/post-call-push/tenant-a/bot-1/api-key:3"),  # a version selector
    ],
    ids=["name-key", "name", "parameter", "full-arn", "partial-arn", "suffix-like-name", "cn-arn", "ssm-arn", "ver"],
)
def test_a_reference_under_the_bots_scope_passes(ref):
    check_reference_scope(ref, "tenant-a", SECRETS, PARAMETERS)


@pytest.mark.parametrize(
    "ref",
    [
        SecretRef(secret="post-call-push/tenant-b/bot-9/credentials", key="token"),
        SecretRef(parameter="/post-call-push/tenant-b/bot-9/api-key"),
        SecretRef(secret=SM_ARN + "post-call-push/tenant-b/bot-9/credentials-AbC12z"),
        SecretRef(secret=SM_ARN + "post-call-push/tenant-b/bot-9/credentials"),
        SecretRef(parameter=SSM_ARN + "/post-call-push/tenant-b/bot-9/api-key"),
        # A scope that starts like ours is another scope.
        SecretRef(secret="post-call-push/tenant-ab/x"),
        SecretRef(parameter="/post-call-push/tenant-ab/x"),
        # The scope's own name, or its folder with nothing in it, names no entry of the scope.
        SecretRef(secret="post-call-push/tenant-a"),
        SecretRef(secret="post-call-push/tenant-a/"),
        SecretRef(
            secret=SM_ARN + "post-call-push/tenant-a-AbC12z"
        ),  # complete ARN of the name "post-call-push/tenant-a"
        SecretRef(secret=SM_ARN + "post-call-push/tenant-a/-AbC12z"),  # read as complete, the name is the bare folder
        # Path tricks.
        SecretRef(secret="post-call-push/tenant-a/../tenant-b/bot-9/credentials"),
        SecretRef(parameter="/post-call-push/tenant-a/../tenant-b/api-key"),
        SecretRef(parameter="/post-call-push/tenant-a/./api-key"),
        SecretRef(parameter=SSM_ARN + "//post-call-push/tenant-a/api-key"),
        # Outside the prefixes altogether, or the right name in the wrong store's shape.
        SecretRef(secret="crm/tenant-a/token"),
        SecretRef(secret="Post-Call-Push/tenant-a/token"),
        SecretRef(parameter="post-call-push/tenant-a/api-key"),
        SecretRef(parameter="/post-call-push-other/tenant-a/api-key"),
        SecretRef(secret=SSM_ARN + "/post-call-push/tenant-a/api-key"),
        SecretRef(parameter=SM_ARN + "post-call-push/tenant-a/x-AbC12z"),
        SecretRef(secret="arn:aws:secretsmanager:eu-west-1:123456789012:secret"),
    ],
    ids=[
        "other-tenant-name",
        "other-tenant-parameter",
        "other-tenant-full-arn",
        "other-tenant-partial-arn",
        "other-tenant-ssm-arn",
        "prefix-of-scope-secret",
        "prefix-of-scope-parameter",
        "scope-name-itself",
        "scope-folder",
        "full-arn-of-scope-name",
        "full-arn-of-scope-folder",
        "dotdot-secret",
        "dotdot-parameter",
        "dot-parameter",
        "ssm-arn-double-slash",
        "other-prefix",
        "case",
        "parameter-without-slash",
        "parameter-longer-prefix",
        "ssm-arn-as-secret",
        "secret-arn-as-parameter",
        "arn-without-name",
    ],
)
def test_a_reference_outside_the_bots_scope_is_refused_final_naming_it(ref):
    error = refused(ref)

    assert error.transient is False
    assert error.problem == "out_of_scope"
    assert str(error).startswith(ref.describe() + ": ")
    assert "not read" in str(error)


def test_the_refusal_says_where_the_bot_may_reference():
    assert "only secrets named post-call-push/tenant-a/..." in str(refused(SecretRef(secret="post-call-push/t/x")))
    assert "only parameters named /post-call-push/tenant-a/..." in str(refused(SecretRef(parameter="/x/y")))


@pytest.mark.parametrize("scope", ["", "tenant/a", "..", "."])
def test_a_scope_that_cannot_be_a_folder_references_nothing(scope):
    # Each of these would be under "<prefix><scope>/" read naively.
    for ref in (
        SecretRef(secret=f"post-call-push/{scope}/x"),
        SecretRef(parameter=f"/post-call-push/{scope}/x"),
    ):
        error = refused(ref, scope)
        assert error.problem == "out_of_scope"
        assert "is not a usable tenant or bot id" in str(error)


def test_the_prefixes_are_the_deployed_ones_not_the_defaults():
    ref = SecretRef(secret="crm/tenant-a/token")
    check_reference_scope(ref, "tenant-a", "crm/", "/crm/")
    with pytest.raises(SecretUnavailable):
        check_reference_scope(SecretRef(secret="post-call-push/tenant-a/token"), "tenant-a", "crm/", "/crm/")
    # ReferencePrefixes is the same rule, carried as one value by the CLI.
    ReferencePrefixes("crm/", "/crm/").check(ref, "tenant-a")
    with pytest.raises(SecretUnavailable):
        ReferencePrefixes("crm/", "/crm/").check(SecretRef(parameter="/post-call-push/tenant-a/k"), "tenant-a")


def test_a_bot_without_a_tenant_is_its_own_scope():
    alone = load_bot_config({"post_call_push": {"url": "https://crm.example.com/in"}}, "bot-7")
    tenanted = load_bot_config(
        {"tenant_id": "tenant-a", "post_call_push": {"url": "https://crm.example.com/in"}}, "bot-7"
    )

    check_reference_scope(SecretRef(secret="post-call-push/bot-7/token"), alone.scope, SECRETS, PARAMETERS)
    with pytest.raises(SecretUnavailable):
        check_reference_scope(SecretRef(secret="post-call-push/tenant-a/token"), alone.scope, SECRETS, PARAMETERS)
    check_reference_scope(SecretRef(secret="post-call-push/tenant-a/token"), tenanted.scope, SECRETS, PARAMETERS)
    with pytest.raises(SecretUnavailable):
        check_reference_scope(SecretRef(secret="post-call-push/bot-7/token"), tenanted.scope, SECRETS, PARAMETERS)


# --- the scoped resolver -------------------------------------------------------------------


class CountingStore:
    """The resolver port over a dict, remembering each read and whether it was asked fresh."""

    def __init__(self, values: dict[SecretRef, str]) -> None:
        self.values = values
        self.reads: list[tuple[SecretRef, bool]] = []

    def resolve(self, ref: SecretRef, *, fresh: bool = False) -> str:
        self.reads.append((ref, fresh))
        return self.values[ref]


def test_the_scoped_resolver_reads_nothing_outside_the_scope():
    theirs = SecretRef(secret="post-call-push/tenant-b/bot-9/credentials", key="token")
    store = CountingStore({theirs: "Bearer tenant-b-token"})
    resolver = scoped_resolver(store, "tenant-a", SECRETS, PARAMETERS)

    for fresh in (False, True):
        with pytest.raises(SecretUnavailable) as raised:
            resolver.resolve(theirs, fresh=fresh)
        assert "tenant-b-token" not in str(raised.value)

    assert store.reads == []


def test_the_scoped_resolver_passes_a_reference_in_scope_through_fresh_or_not():
    ours = SecretRef(parameter="/post-call-push/tenant-a/bot-1/api-key")
    store = CountingStore({ours: "ak-tenant-a"})
    resolver = scoped_resolver(store, "tenant-a", SECRETS, PARAMETERS)

    assert resolver.resolve(ours) == "ak-tenant-a"
    assert resolver.resolve(ours, fresh=True) == "ak-tenant-a"
    assert store.reads == [(ours, False), (ours, True)]


def test_an_unusable_scope_fails_each_reference_not_the_wrapping():
    # Made per push: a bot with no references must never fail because of its tenant_id.
    resolver = scoped_resolver(CountingStore({}), "a/b", SECRETS, PARAMETERS)

    with pytest.raises(SecretUnavailable, match="not a usable tenant or bot id"):
        resolver.resolve(SecretRef(secret="post-call-push/a/b/x"))
