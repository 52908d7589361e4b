"""Where the tracking store is, and a local sqlite store made safely before anyone uses it.

Owns: the tracking URI's resolution, the local artifact root, and the life of a sqlite store's
file before MLflow opens it (`prepare`). Must not touch runs or experiments: that is
`suite.tracking`. MLflow is imported only when a store is built (it takes seconds to import).

Why `prepare` exists: MLflow creates a missing sqlite store on first use and migrates its schema
in dozens of steps. Two processes doing that at once (two `overfit run`, or `overfit run` beside
`mlflow ui` or a script calling `mlflow.search_runs`) interleave their migrations and can leave
the file half-migrated for good (`table _alembic_tmp_tags already exists`). So every entry point
of the suite that opens a sqlite store calls `prepare(uri)` first:

- a store at the schema this MLflow expects is used as it is (one read-only look, no lock);
- otherwise an inter-process lock on `<db>.lock` is taken (filelock), and under it
  - a missing store is built and migrated under a temporary name beside it, then linked into
    place in one step that fails if the name exists meanwhile: no reader ever meets a half-made
    store, and a store another client made first is never overwritten, but waited for and
    judged as below (a plain MLflow client takes no lock: it may be migrating it);
  - a store another client is still building is waited for while it changes;
  - a store left half-made (by a crashed client) that holds no run is moved aside to
    `<db>.broken-<time>` and built anew; one that holds runs is an error saying how to repair it.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import sqlite3
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

DEFAULT_URI = "sqlite:///mlflow.db"
T = TypeVar("T")
LOCK_TIMEOUT = 120.0  # seconds to wait for another process building the same store
QUIET_SECONDS = 5.0  # a half-made store unchanged this long is nobody's work in progress
SETTLE_TIMEOUT = 120.0  # at most this long waiting for another client's migration
BUILD_TRIES = 3  # builds of a store whose place another client took meanwhile

__all__ = [
    "DEFAULT_URI",
    "StoreError",
    "artifact_root",
    "open_settled",
    "prepare",
    "resolve_uri",
    "sqlite_file",
]


class StoreError(RuntimeError):
    """A local store that cannot be made ready; the message is one line."""


def resolve_uri(uri: str | None = None) -> str:
    """`--tracking-uri`, else `MLFLOW_TRACKING_URI`, else the embedded sqlite default."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def sqlite_file(uri: str) -> Path | None:
    """The database file of a local sqlite store (None for any other store)."""
    return Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None


def artifact_root(uri: str) -> str | None:
    """For a local sqlite store, artifacts live in `mlartifacts/` beside the database file."""
    db = sqlite_file(uri)
    return None if db is None else (db.resolve().parent / "mlartifacts").as_uri()


@dataclass(frozen=True)
class _Look:
    """What a read-only look at a sqlite file found."""

    exists: bool
    tables: frozenset[str] = frozenset()
    version: str | None = None
    runs: int = 0
    signature: tuple[object, ...] = ()  # changes while someone writes the file

    def leftovers(self) -> list[str]:
        return sorted(t for t in self.tables if t.startswith("_alembic_tmp_"))


def prepare(uri: str, lock_timeout: float = LOCK_TIMEOUT) -> None:
    """Make a local sqlite store ready for MLflow (see the module's docstring); any other
    store is left to MLflow. Safe to call from any number of processes at once.

    Raises:
        StoreError: the store is half-made and holds runs, has another MLflow's schema, is
            not a database, or another process held its lock for `lock_timeout` seconds.
    """
    db = sqlite_file(uri)
    if db is None or db.name == ":memory:":
        return
    head = _head_revision()
    if _ready(_look(db), head):
        return
    from filelock import FileLock, Timeout

    db.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(f"{db}.lock")
    try:
        with lock.acquire(timeout=lock_timeout):
            _make_ready(db, uri, head)
    except Timeout:
        raise StoreError(
            f"{db}: another process has held {db}.lock for {lock_timeout:.0f} s while making "
            f"the store; is an overfit or mlflow process hung? (`fuser {db}.lock` names it)"
        ) from None


def _make_ready(db: Path, uri: str, head: str) -> None:
    """Under the store's lock: build, wait for, repair or refuse the store. A client without
    the lock (a plain MLflow client) may make the file while ours is being built: theirs is
    then judged as any store found, once it settles."""
    for _ in range(BUILD_TRIES):
        look = _settled(db, head)
        if _ready(look, head):
            return
        if look.exists:
            problem = _problem(look, head)
            if look.runs:
                raise StoreError(
                    f"{db}: {problem}, and it holds {look.runs} runs; back it up, then "
                    f"`mlflow db upgrade {uri}`{_drop_hint(look)}"
                )
            aside = db.with_name(f"{db.name}.broken-{time.strftime('%Y%m%d-%H%M%S')}")
            os.replace(db, aside)
            _warn(f"{db}: {problem} and held no runs; moved aside to {aside.name}, made anew")
        if _build(db):
            return
    raise StoreError(
        f"{db}: another MLflow client made the store {BUILD_TRIES} times while this one was "
        "building it, each time left half-made; stop the other clients and try again"
    )


def _build(db: Path) -> bool:
    """A new store, migrated under a temporary name, then linked into place; False when
    another client made `db` meanwhile (theirs stays)."""
    temporary = db.with_name(f"{db.name}.new-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        import logging

        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        for name in ("mlflow", "alembic"):  # no INFO lines for each migration step
            logging.getLogger(name).setLevel(logging.WARNING)

        store = SqlAlchemyStore(f"sqlite:///{temporary}", str(db.parent / "mlartifacts"))
        store.engine.dispose()  # every connection to the temporary name closed
        try:
            os.link(temporary, db)  # fails if another client made `db` meanwhile
        except FileExistsError:
            return False
        return True
    finally:
        for leftover in (temporary, Path(f"{temporary}-journal")):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()


def open_settled(uri: str, open_store: Callable[[], T], tries: int = 4) -> T:
    """`open_store()`, MLflow's first use of the store at `uri`, once `prepare` made it ready.
    A client that takes no lock (`mlflow ui`, a notebook's `mlflow.search_runs()`) may still
    create or migrate the same sqlite file then: a clash with its migration is waited out
    (`prepare` again) and the open tried again, said in one warning line.

    Raises:
        StoreError: the clash outlasted `tries` opens (one line, the last error's first).
    """
    for attempt in range(tries):
        try:
            return open_store()
        except Exception as err:
            if sqlite_file(uri) is None or not _migration_clash(err):
                raise
            reason = _first_line(err)
            if attempt == tries - 1:
                raise StoreError(
                    f"{uri}: another MLflow client kept migrating the store ({reason}); "
                    "stop it, then try again"
                ) from None
            if attempt == 0:
                _warn(f"{uri}: another MLflow client was migrating the new store; waiting for it")
            time.sleep(0.5 * (attempt + 1))
            prepare(uri)
    raise AssertionError("unreachable")


def _migration_clash(err: BaseException | None) -> bool:
    """An error of opening a store that another client is migrating at that moment: alembic's
    or SQLAlchemy's (a migration step that met another's work, a table missing or already
    there, the file locked), or MLflow's out-of-date schema."""
    while err is not None:
        if type(err).__module__.startswith(("alembic", "sqlalchemy")):
            return True
        if "database schema" in str(err):
            return True
        err = err.__cause__ or err.__context__
    return False


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _settled(db: Path, head: str) -> _Look:
    """The store once nobody is changing it: a half-made store is looked at again while its
    file changes (another client migrating it), for at most `SETTLE_TIMEOUT` seconds."""
    look = _look(db)
    if not look.exists or _ready(look, head):
        return look
    deadline = time.monotonic() + SETTLE_TIMEOUT
    quiet_since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.25)
        again = _look(db)
        if not again.exists or _ready(again, head):
            return again
        if again.signature != look.signature:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= QUIET_SECONDS:
            return again
        look = again
    return look


def _ready(look: _Look, head: str) -> bool:
    return look.exists and look.version == head and not look.leftovers()


def _problem(look: _Look, head: str) -> str:
    if look.leftovers():
        return f"a schema migration stopped half-way (table {look.leftovers()[0]} left over)"
    if not look.tables:
        return "the file holds no MLflow tables"
    if look.version is None:
        return "its MLflow tables have no schema version (a migration stopped half-way)"
    return f"its schema version is {look.version}, not this MLflow's {head}"


def _drop_hint(look: _Look) -> str:
    if not look.leftovers():
        return ""
    tables = ", ".join(look.leftovers())
    return f" (first drop the leftover {tables} once you have checked it holds no data)"


def _look(db: Path) -> _Look:
    """A read-only look at the file: tables, schema version, runs, and what changes."""
    try:
        stat = db.stat()
    except FileNotFoundError:
        return _Look(exists=False)
    journal = Path(f"{db}-journal")
    signature: tuple[object, ...] = (stat.st_size, stat.st_mtime_ns, journal.exists())
    try:
        try:
            tables, version, runs = _read(f"file:{db}?mode=ro")
        except sqlite3.OperationalError as err:
            if "readonly" not in str(err):
                raise
            # a hot journal: a writer was killed mid-transaction (a server's crash) and only a
            # writable connection rolls it back, as any client's next open would
            tables, version, runs = _read(f"file:{db}?mode=rw")
    except sqlite3.DatabaseError as err:
        if "locked" in str(err):  # a writer holds it: a look as "changing"
            return _Look(exists=True, signature=(*signature, time.monotonic()))
        raise StoreError(f"{db}: not an MLflow sqlite store ({err})") from None
    return _Look(True, tables, version, runs, (*signature, tables, version))


def _read(address: str) -> tuple[frozenset[str], str | None, int]:
    """The store's tables, schema version and run count, through a connection to `address`."""
    with contextlib.closing(sqlite3.connect(address, uri=True, timeout=30)) as c:
        tables = frozenset(
            name for (name,) in c.execute("SELECT name FROM sqlite_master WHERE type='table'")
        )
        version = None
        if "alembic_version" in tables:
            row = c.execute("SELECT version_num FROM alembic_version").fetchone()
            version = row[0] if row else None
        runs = c.execute("SELECT count(*) FROM runs").fetchone()[0] if "runs" in tables else 0
    return tables, version, int(runs)


@functools.cache
def _head_revision() -> str:
    """The schema revision this MLflow's migrations end at: the one revision no script names
    as its `down_revision`. Read as text from the scripts (milliseconds); alembic's own reader
    imports every script (half a second on every command's start), so it is asked only when
    the text does not give one head (a merge revision, a new script layout)."""
    folder = _migrations()
    assigned = re.compile(r'^(down_revision|revision)\s*=\s*"([0-9a-f]+)"\s*$', re.M)
    revisions: set[str] = set()
    parents: set[str] = set()
    for script in (folder / "versions").glob("*.py"):
        for name, value in assigned.findall(script.read_text()):
            (revisions if name == "revision" else parents).add(value)
    heads = sorted(revisions - parents)
    return heads[0] if len(heads) == 1 else _alembic_head(folder)


def _alembic_head(folder: Path) -> str:
    import logging

    from alembic.script import ScriptDirectory

    logging.getLogger("alembic").setLevel(logging.WARNING)
    heads = ScriptDirectory(str(folder)).get_heads()
    if len(heads) != 1:
        raise StoreError(f"MLflow's migration scripts end in {len(heads)} heads, not one")
    return str(heads[0])


def _migrations() -> Path:
    """MLflow's migration scripts folder, found without importing MLflow."""
    import importlib.util

    spec = importlib.util.find_spec("mlflow")
    if spec is None or not spec.submodule_search_locations:
        raise StoreError("MLflow is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "store" / "db_migrations"


def _warn(message: str) -> None:
    import warnings

    warnings.warn(message, stacklevel=3)
