"""The test plugin never touches what it was not given: Redis dbs with others' keys, others' databases.

Redis runs on fakeredis (one FakeServer per test, so logical databases are real and separate);
the PostgreSQL rules are name checks and need no server.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import fakeredis
import pytest
import redis

from stack.errors import ConfigError
from stack.testing.services.base import ServiceError
from stack.testing.services.postgres import (
    PostgresService,
    UrlPostgres,
    connected_databases,
    is_test_database_name,
    new_database_name,
    with_database,
)
from stack.testing.services.redis import (
    OWNER_KEY,
    DockerRedis,
    RedisService,
    UrlRedis,
    db_index,
    with_db,
)

pytest_plugins = ["pytester"]

Client = Callable[[int], fakeredis.FakeRedis]


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


@pytest.fixture
def db(server: fakeredis.FakeServer) -> Client:
    """A client of one logical database of the fake server, to set up and inspect it."""
    return lambda index: fakeredis.FakeRedis(server=server, db=index)


@pytest.fixture(autouse=True)
def fake_client(monkeypatch: pytest.MonkeyPatch, server: fakeredis.FakeServer) -> None:
    def client(self: RedisService, url: str | None = None, timeout: float = 2.0) -> redis.Redis:
        return fakeredis.FakeRedis(server=server, db=db_index(url or self.url))

    monkeypatch.setattr(RedisService, "client", client)


def docker_redis() -> DockerRedis:
    """A server the plugin owns, never started: only its URL matters here."""
    service = DockerRedis()
    service.url = "redis://127.0.0.1:6399/0"
    return service


# --- which database a URL names -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "index"),
    [
        ("redis://h:6379/5", 5),
        ("redis://h:6379", 0),
        ("redis://h:6379/", 0),
        ("rediss://:pw@h:6379/2?ssl_cert_reqs=none", 2),
        ("redis://h/1?db=7", 7),  # redis-py lets ?db= win, so do we
        ("unix:///run/redis.sock?db=3", 3),
        ("unix:///run/redis.sock", 0),
    ],
)
def test_db_index_is_read_as_redis_py_reads_it(url: str, index: int) -> None:
    assert db_index(url) == index


def test_a_url_naming_no_database_number_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="does not name a Redis database") as info:
        db_index("redis://:secret@h/cache")
    assert "secret" not in str(info.value)


def test_unix_socket_urls_keep_their_path() -> None:
    assert with_db("unix:///run/redis.sock?db=1&password=x", 4) == "unix:///run/redis.sock?password=x&db=4"


# --- the url provider: only the databases it was given --------------------------------------------
def test_url_provider_uses_the_database_in_the_url_and_leaves_the_others(db: Client) -> None:
    for index in (0, 1, 4, 6):
        db(index).set("theirs", str(index))
    service = UrlRedis("redis://127.0.0.1:6379/5")
    url = service.allocate_db()
    assert db_index(url) == 5 and url == "redis://127.0.0.1:6379/5"
    assert db(5).exists(OWNER_KEY)
    for index in (0, 1, 4, 6):  # the measured bug: FLUSHDB on 0, 1, ... of the user's Redis
        assert db(index).get("theirs") == str(index).encode()


def test_one_allowed_database_serves_modules_in_turn(db: Client) -> None:
    service = UrlRedis("redis://127.0.0.1:6379/5")
    first = service.allocate_db()
    db(5).set("celery-task-meta-1", "{}")  # what the module's stack leaves behind
    with pytest.raises(ServiceError) as info:
        service.allocate_db()  # a second database at the same time: not allowed
    message = str(info.value)
    for needed in ("db 5", "STACK_TEST_REDIS_URL", "STACK_TEST_REDIS_DBS=2", "db 6"):
        assert needed in message, message
    service.release_db(first)
    assert service.allocate_db() == first  # the next module gets it, flushed
    assert db(5).keys() == [OWNER_KEY.encode()]


def test_more_databases_only_when_allowed_and_in_order(db: Client) -> None:
    service = UrlRedis("redis://h:6379/5", databases=3)
    urls = [service.allocate_db() for _ in range(3)]
    assert [db_index(url) for url in urls] == [5, 6, 7]
    with pytest.raises(ServiceError, match=r"dbs 5-7.*STACK_TEST_REDIS_DBS=4"):
        service.allocate_db()
    service.release_db(urls[1])
    assert db_index(service.allocate_db()) == 6
    assert not db(8).exists(OWNER_KEY) and not db(4).exists(OWNER_KEY)


def test_a_database_with_foreign_keys_is_refused_and_kept(db: Client) -> None:
    db(5).set("session:abc", "alice")
    db(5).hset("user:1", "name", "bob")
    service = UrlRedis("redis://:secret@127.0.0.1:6379/5")
    with pytest.raises(ServiceError) as info:
        service.allocate_db()
    message = str(info.value)
    for needed in ("refusing to flush", "db 5", "STACK_TEST_REDIS_URL", "'session:abc'", "'user:1'"):
        assert needed in message, message
    assert "empty" in message and "throwaway server" in message
    assert "secret" not in message
    assert db(5).get("session:abc") == b"alice" and db(5).hget("user:1", "name") == b"bob"
    assert not db(5).exists(OWNER_KEY)
    # The refused database is not counted as taken: the same clear error again, not "all in use".
    with pytest.raises(ServiceError, match="refusing to flush"):
        service.allocate_db()


def test_a_few_foreign_keys_are_named_not_all(db: Client) -> None:
    for n in range(50):
        db(5).set(f"k{n}", n)
    with pytest.raises(ServiceError) as info:
        UrlRedis("redis://h/5").allocate_db()
    assert "50 key(s)" in str(info.value)
    assert str(info.value).count("'k") <= 5


def test_a_database_the_plugin_marked_is_flushed_with_its_leftovers(db: Client) -> None:
    UrlRedis("redis://h/5").allocate_db()  # an earlier test run
    db(5).sadd("_kombu.binding.celery", "x")
    db(5).set("celery-task-meta-abc", "{}")
    url = UrlRedis("redis://h/5").allocate_db()  # this run
    assert url.endswith("/5")
    assert db(5).keys() == [OWNER_KEY.encode()]


@pytest.mark.parametrize(
    "mark",
    [
        lambda client: client.set(OWNER_KEY, "someone else's"),
        lambda client: client.hset(OWNER_KEY, "owner", "stack.testing"),  # the name, not our value
    ],
)
def test_a_marker_that_is_not_ours_does_not_count(db: Client, mark: Callable[[Any], object]) -> None:
    mark(db(5))
    db(5).set("theirs", "1")
    with pytest.raises(ServiceError, match="refusing to flush"):
        UrlRedis("redis://h/5").allocate_db()
    assert db(5).get("theirs") == b"1"


def test_a_database_the_server_lacks_is_a_clear_error() -> None:
    service = UrlRedis("redis://h/15", databases=10)  # fakeredis, like Redis, has 16
    service.allocate_db()
    with pytest.raises(ServiceError) as info:
        service.allocate_db()
    message = str(info.value)
    assert "db 16" in message and "out of range" in message
    assert "STACK_TEST_REDIS_DBS" in message and "STACK_TEST_REDIS_URL" in message


def test_databases_must_be_at_least_one() -> None:
    with pytest.raises(ConfigError, match="STACK_TEST_REDIS_DBS"):
        UrlRedis("redis://h/5", databases=0)


# --- servers the plugin owns: same path, but every database is ours -------------------------------
def test_an_owned_server_flushes_whatever_is_there_and_marks_it(db: Client) -> None:
    db(0).set("left", "over")
    service = docker_redis()
    assert db_index(service.allocate_db()) == 0
    assert db(0).keys() == [OWNER_KEY.encode()]


def test_an_owned_server_hands_out_every_database_round_robin() -> None:
    service = docker_redis()
    urls = [service.allocate_db() for _ in range(16)]
    assert sorted(db_index(url) for url in urls) == list(range(16))
    with pytest.raises(ServiceError, match=r"redis \(docker\): every allowed logical database \(dbs 0-15\)"):
        service.allocate_db()
    service.release_db(urls[3])
    service.release_db(urls[0])
    # After 15 the cursor wraps: the lowest free one, never one still handed out.
    assert [db_index(service.allocate_db()) for _ in range(2)] == [0, 3]


def test_a_just_released_database_is_reused_last() -> None:
    service = docker_redis()
    first = service.allocate_db()
    service.release_db(first)
    assert db_index(service.allocate_db()) == 1


# --- the stack_redis_url fixture gives its database back ------------------------------------------
def test_modules_take_turns_on_the_one_given_database(pytester: pytest.Pytester, db: Client) -> None:
    pytester.makeconftest(
        """
        import pytest
        from stack.testing.services.redis import UrlRedis

        @pytest.fixture(scope="session")
        def stack_redis_service():
            return UrlRedis("redis://127.0.0.1:6379/5")
        """
    )
    for name in ("test_one", "test_two", "test_three"):
        pytester.makepyfile(
            **{
                name: """
                import redis

                def test_gets_db_5(stack_redis_url):
                    assert stack_redis_url.endswith("/5")
                """
            }
        )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)
    assert db(5).exists(OWNER_KEY)


# --- PostgreSQL: created and dropped by name, only the plugin's own -------------------------------
class NoServer(PostgresService):
    """A PostgresService that records its SQL instead of sending it."""

    provider = "url"

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url
        self.statements: list[str] = []

    def connect(self, url: str | None = None, timeout: float = 5.0) -> Any:
        return _Recorder(self.statements)

    def teardown(self) -> None:
        pass


class _Recorder:
    def __init__(self, statements: list[str]) -> None:
        self.statements = statements
        self.info = type("Info", (), {"server_version": 160000})()

    def __enter__(self) -> _Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def execute(self, query: Any, params: object = None) -> None:
        from psycopg.sql import Composable

        # as_string(None) renders identifiers without a connection (psycopg >= 3.2).
        self.statements.append(query.as_string(None) if isinstance(query, Composable) else str(query))


def test_new_names_carry_the_plugin_prefix_and_nothing_else_qualifies() -> None:
    for prefix in ("stack_test", "stack_services_smoke", "load_async", "Weird-Name.v2", "9lives", "x" * 100):
        name = new_database_name(prefix)
        assert name.startswith("stack_") and len(name) <= 63 and is_test_database_name(name), name
    assert new_database_name("load_async").startswith("stack_load_async_")
    for name in (
        "postgres",
        "template1",
        "myapp",
        "stack_",
        "stack_prod",
        "stack_app_1234567",
        'stack_x_1234abcd"; DROP DATABASE prod; --',
        "Stack_x_1234abcd",
        "stack_x_1234ABCD",
    ):
        assert not is_test_database_name(name), name


def test_the_urls_own_database_is_known_however_it_is_named() -> None:
    assert connected_databases("postgresql://bob@h/app") >= {"app"}
    assert "real" in connected_databases("postgresql://bob@h/app?dbname=real")
    assert "bob" in connected_databases("postgresql://bob@h")  # libpq's default: the user's name
    # A test database URL never keeps a ?dbname= that would send the tests to the real one.
    assert with_database("postgresql://u@h/app?dbname=real&sslmode=require", "stack_t_1234abcd") == (
        "postgresql://u@h/stack_t_1234abcd?sslmode=require"
    )


def test_create_and_drop_only_the_plugins_names_quoted() -> None:
    service = NoServer("postgresql://u@h:5432/app")
    url = service.create_database(new_database_name("stack_mod"))
    name = url.rsplit("/", 1)[1]
    service.drop_database(name)
    assert service.statements == [
        f'CREATE DATABASE "{name}"',
        f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)',
    ]
    with pytest.raises(ServiceError, match="did not create it"):
        service.drop_database(name)  # dropped already: not ours any more


@pytest.mark.parametrize("name", ["app", "postgres", "myapp_1234abcd", 'x"; DROP DATABASE app; --'])
def test_foreign_names_are_neither_created_nor_dropped(name: str) -> None:
    service = NoServer("postgresql://u@h/app")
    with pytest.raises(ServiceError, match="refusing to create"):
        service.create_database(name)
    with pytest.raises(ServiceError, match="refusing to drop"):
        service.drop_database(name)
    assert service.statements == []


def test_the_urls_own_database_is_never_dropped_even_with_a_plugin_name() -> None:
    own = new_database_name("stack_leftover")
    service = NoServer(f"postgresql://u:secret@h/{own}")
    with pytest.raises(ServiceError) as info:
        service.drop_database(own)
    message = str(info.value)
    assert "STACK_TEST_DATABASE_URL" in message and own in message and "secret" not in message
    with pytest.raises(ServiceError, match="refusing to create"):
        service.create_database(own)
    assert service.statements == []


def test_a_plugin_name_this_service_did_not_create_is_not_dropped() -> None:
    service = NoServer("postgresql://u@h/app")
    with pytest.raises(ServiceError, match="did not create it"):
        service.drop_database(new_database_name("stack_someone_elses_run"))
    assert service.statements == []


def test_url_postgres_keeps_the_rules() -> None:
    service = UrlPostgres("postgresql+psycopg://u@h/app")
    with pytest.raises(ServiceError, match="STACK_TEST_DATABASE_URL"):
        service.drop_database("app")
