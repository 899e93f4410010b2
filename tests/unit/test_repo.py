"""Repository functions: hashed API keys, owner scoping."""

from __future__ import annotations

from pathlib import Path

import pytest

from cadenza.db.migrate import upgrade
from cadenza.db.models import ApiKey, Dataset, File
from cadenza.db.repo import (
    NotFound,
    create_api_key,
    datasets_with_counts,
    get_owned,
    list_owned,
    owner_for_key,
    revoke_keys,
)
from cadenza.db.session import session_scope


def test_keys_are_hashed_scoped_and_revocable(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    upgrade(url)
    with session_scope(url) as s:
        alice, key = create_api_key(session=s, owner_name="alice")
        bob, bob_key = create_api_key(session=s, owner_name="bob")
        assert key.startswith("cz_") and key != bob_key
        assert all(
            key not in (k.key_hash, k.prefix) or len(k.prefix) < len(key) for k in s.query(ApiKey)
        )
        assert owner_for_key(session=s, key=key) == alice
        assert owner_for_key(session=s, key=key + "x") is None
        assert owner_for_key(session=s, key="nonsense") is None
        ds = Dataset(owner_id=alice.id, name="mine")
        s.add(ds)
        s.flush()
        assert get_owned(s, Dataset, ds.id, alice.id) is ds
        with pytest.raises(NotFound):
            get_owned(s, Dataset, ds.id, bob.id)
        assert list_owned(s, Dataset, bob.id) == []
        assert revoke_keys(session=s, owner_name="alice") == 1
        assert owner_for_key(session=s, key=key) is None
        assert owner_for_key(session=s, key=bob_key) == bob


def test_key_cache_answers_verified_keys_without_sql_until_expiry(tmp_path: Path) -> None:
    from sqlalchemy import event

    from cadenza.db.repo import KeyCache
    from cadenza.db.session import engine_for

    url = f"sqlite:///{tmp_path / 'c.db'}"
    upgrade(url)
    with session_scope(url) as s:
        alice, key = create_api_key(session=s, owner_name="alice")
    cache = KeyCache(ttl=60)
    with session_scope(url) as s:
        assert owner_for_key(session=s, key=key, cache=cache).id == alice.id  # type: ignore[union-attr]
    statements: list[str] = []
    event.listen(engine_for(url), "before_cursor_execute", lambda *a: statements.append(a[2]))
    with session_scope(url) as s:
        assert owner_for_key(session=s, key=key, cache=cache).id == alice.id  # type: ignore[union-attr]
        assert statements == []
        assert revoke_keys(session=s, owner_name="alice") == 1
    with session_scope(url) as s:  # revoked elsewhere: trusted until the entry expires
        assert cache.lookup(s, key).owner.id == alice.id  # type: ignore[union-attr]
        cache.clear()
        assert owner_for_key(session=s, key=key, cache=cache) is None
    expired = KeyCache(ttl=0)
    with session_scope(url) as s:
        _, key2 = create_api_key(session=s, owner_name="bob")
    with session_scope(url) as s:
        assert owner_for_key(session=s, key=key2, cache=expired) is not None
        assert expired.lookup(s, key2) is None


def test_a_revoke_in_one_api_process_clears_the_key_caches_of_the_others(tmp_path: Path) -> None:
    """Processes of one server share the epoch file; another process bumps it here."""
    import subprocess
    import sys

    from cadenza.db.repo import KeyCache, KeyEpoch, hash_key

    url = f"sqlite:///{tmp_path / 'c.db'}"
    upgrade(url)
    with session_scope(url) as s:
        _, key = create_api_key(session=s, owner_name="alice")
    path = tmp_path / "run" / "api-key-epoch"
    here = KeyCache(ttl=60, epoch=KeyEpoch(path))
    with session_scope(url) as s:
        assert owner_for_key(session=s, key=key, cache=here) is not None
    assert here.get(hash_key(key)) is not None
    other = "from cadenza.db.repo import KeyCache, KeyEpoch; import sys; "
    other += "KeyCache(ttl=60, epoch=KeyEpoch(__import__('pathlib').Path(sys.argv[1]))).clear()"
    subprocess.run([sys.executable, "-c", other, str(path)], check=True)
    assert here.get(hash_key(key)) is None


def test_datasets_with_counts_is_one_owner_scoped_query(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    upgrade(url)
    with session_scope(url) as s:
        alice, _ = create_api_key(session=s, owner_name="alice")
        bob, _ = create_api_key(session=s, owner_name="bob")
        full, empty = Dataset(owner_id=alice.id, name="full"), Dataset(owner_id=alice.id, name="e")
        theirs = Dataset(owner_id=bob.id, name="bob's")
        s.add_all([full, empty, theirs])
        s.flush()
        for i in range(3):
            s.add(
                File(
                    owner_id=alice.id,
                    dataset_id=full.id,
                    name=f"{i}.mid",
                    kind="midi",
                    format="mid",
                    sha256=f"{i:064d}",
                    size=1,
                    object_key=f"k{i}",
                )
            )
        s.flush()
        counts = {ds.name: n for ds, n in datasets_with_counts(s, alice.id)}
        assert counts == {"full": 3, "e": 0}
        assert [n for _, n in datasets_with_counts(s, alice.id, dataset_id=full.id)] == [3]
        assert datasets_with_counts(s, alice.id, dataset_id=theirs.id) == []
