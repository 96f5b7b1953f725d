"""The site review DB on a real PostgreSQL (Debian's server, started by tests/postgres_server.py):
the same behaviours as on SQLite (ReviewDBContract), and claims from many threads and several
ReviewDB instances (as from several station replicas) never overlapping."""

from __future__ import annotations

import threading

import pytest

from serve_apps.review_db import ReviewDB
from tests.postgres_server import postgres_server, postgres_url  # noqa: F401  (fixtures)
from tests.unit.test_review_db import T0, ReviewDBContract, ids, make_item

pytestmark = pytest.mark.integration


class TestPostgres(ReviewDBContract):
    @pytest.fixture
    def db(self, postgres_url):  # noqa: F811
        db = ReviewDB(postgres_url.replace("postgresql+psycopg://", "postgresql://"))  # driver added by ReviewDB
        assert db._pg
        yield db
        db.close()

    def test_claims_from_several_instances_never_overlap(self, db, postgres_url):  # noqa: F811
        n_items, n_threads = 200, 8
        db.record([make_item(i) for i in range(n_items)])
        replicas = [ReviewDB(postgres_url) for _ in range(2)]
        got: dict[str, list[str]] = {f"r{k}": [] for k in range(n_threads)}
        errors: list[BaseException] = []
        start = threading.Barrier(n_threads)

        def reviewer(k: int, name: str) -> None:
            try:
                start.wait()
                while True:
                    _, _, items = replicas[k % 2].claim(name, 3, lease_s=600, now=T0)
                    if not items:
                        return
                    got[name].extend(ids(items))
            except BaseException as e:  # reported below
                errors.append(e)

        threads = [threading.Thread(target=reviewer, args=(k, name)) for k, name in enumerate(got)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        for r in replicas:
            r.close()
        assert not errors
        every = [i for claimed in got.values() for i in claimed]
        assert len(every) == len(set(every)) == n_items
        assert sum(1 for claimed in got.values() if claimed) > 1  # the claims really ran side by side
