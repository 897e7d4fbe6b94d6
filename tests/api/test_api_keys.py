"""Issue 14 item 2: API keys: only a hash is stored, a short prefix finds the row, bad and revoked
keys are refused, a verified key is remembered only for API_KEY_CACHE_S (on SQLite and Postgres)."""

from __future__ import annotations

import hashlib

import pytest
import sqlalchemy as sa

from tests.conftest import make_runtime, stack_env
from worker.access.keys import Scope, VerifiedKeys, authenticate, create_key, list_keys, revoke_key
from worker.access.models import ApiKey
from worker.audit import AuditEvent
from worker.errors import MessageInvalid


@pytest.fixture()
def db(database_url):  # noqa: ANN001, ANN201
    """A runtime (the services take it) and its one-statement connections (what authentication uses)."""
    runtime = make_runtime(stack_env(database_url=database_url, sandbox_url="http://127.0.0.1:9"))
    yield runtime, runtime.single_statements
    runtime.close()


def test_a_created_key_is_stored_as_its_sha256_and_authenticates_to_its_scope(db) -> None:  # noqa: ANN001
    rt, connect = db
    info, key = create_key(rt, name="shop", scope="send", actor="cli")
    prefix = key.split("_")[1]
    assert key.startswith("bc_") and info.prefix == prefix and len(prefix) == 8
    with rt.session_factory() as s:
        row = s.get(ApiKey, info.id)
        audit = s.scalars(sa.select(AuditEvent.action).where(AuditEvent.subject_type == "api_key", AuditEvent.subject_id == info.id)).all()
    assert row.key_hash == hashlib.sha256(key.encode()).hexdigest() and key not in str(vars(row))
    assert audit == ["api_key.created"]
    principal = authenticate(connect, key)
    assert principal.scope == Scope.SEND and principal.actor == f"apikey:{prefix}:shop"
    with rt.session_factory() as s:
        assert info.id in [k.id for k in list_keys(s)]


def test_wrong_malformed_and_revoked_keys_are_refused(db) -> None:  # noqa: ANN001
    rt, connect = db
    info, key = create_key(rt, name="crm", scope="admin")
    prefix = key.split("_")[1]
    for bad in (None, "", "bc_", key[:-1] + ("A" if key[-1] != "A" else "B"), f"bc_{prefix}_guess", "x" * 500,
                key.replace("bc_", "xx_"), f"bc_{'0' * 8}_{key.split('_', 2)[2]}"):
        assert authenticate(connect, bad) is None, bad
    revoke_key(rt, info.id, actor="cli")
    assert authenticate(connect, key) is None
    assert revoke_key(rt, info.id).revoked_at is not None  # twice is fine


def test_create_refuses_a_bad_name_or_scope_naming_the_field(db) -> None:  # noqa: ANN001
    rt, _ = db
    with pytest.raises(MessageInvalid) as refused:
        create_key(rt, name=" ", scope="root")
    assert [p["field"] for p in refused.value.as_dict()] == ["name", "scope"]


def test_scopes_include_the_ones_below_them() -> None:
    assert Scope.ADMIN.allows(Scope.CAMPAIGNS) and Scope.CAMPAIGNS.allows(Scope.SEND)
    assert not Scope.SEND.allows(Scope.CAMPAIGNS) and not Scope.CAMPAIGNS.allows(Scope.ADMIN)


def test_a_verified_key_is_remembered_for_the_ttl_only_and_a_bad_one_never(db) -> None:  # noqa: ANN001
    rt, connect = db
    info, key = create_key(rt, name="cache", scope="campaigns")
    now = [1000.0]
    keys = VerifiedKeys(connect, ttl_s=2.0, clock=lambda: now[0])
    assert keys.lookup(key) is None and keys.verify(key).key_id == info.id
    revoke_key(rt, info.id)
    assert keys.lookup(key).key_id == info.id      # within the TTL: trusted without a lookup
    now[0] += 2.5
    assert keys.lookup(key) is None and keys.verify(key) is None   # after it: the revocation holds
    assert keys.verify("bc_deadbeef_nope") is None and keys.lookup("bc_deadbeef_nope") is None
    assert VerifiedKeys(connect, ttl_s=0).lookup(key) is None


def listed_key(sessions, key_id: int):  # noqa: ANN001, ANN201
    with sessions() as s:
        return {k.id: k for k in list_keys(s)}[key_id]


def test_a_key_records_its_last_use_at_most_once_a_minute_and_its_creator(db) -> None:  # noqa: ANN001
    rt, connect = db
    info, key = create_key(rt, name="used", scope="send", actor="user:ana@example.com")
    now = [1000.0]
    keys = VerifiedKeys(connect, ttl_s=0, clock=lambda: now[0])
    listed = listed_key(rt.session_factory, info.id)
    assert listed.last_used_at is None and listed.created_by == "user:ana@example.com"
    assert keys.verify(key).key_id == info.id
    first = listed_key(rt.session_factory, info.id).last_used_at
    assert first is not None
    now[0] += 30
    keys.verify(key)                                   # within the minute: no write
    assert listed_key(rt.session_factory, info.id).last_used_at == first
    now[0] += 31
    keys.verify(key)
    assert listed_key(rt.session_factory, info.id).last_used_at > first
    keys.verify("bc_deadbeef_nope")                   # an unknown key records nothing
