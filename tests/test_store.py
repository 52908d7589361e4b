"""A local sqlite store made safely: concurrent first use, half-made stores, a hung lock."""

from __future__ import annotations

import multiprocessing
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from suite.store import StoreError, _alembic_head, _head_revision, _look, _migrations, prepare

PYTHON = sys.executable


def _prepare_in_child(uri: str) -> str:
    try:
        prepare(uri)
    except Exception as err:  # the parent asserts on the text
        return f"{type(err).__name__}: {err}"
    return "ok"


def _experiments(db: Path) -> list[str]:
    with sqlite3.connect(db) as c:
        return [name for (name,) in c.execute("SELECT name FROM experiments")]


def test_processes_preparing_a_new_store_at_once_make_one_whole_store(tmp_path: Path) -> None:
    db = tmp_path / "deep" / "mlflow.db"
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        outcomes = pool.map(_prepare_in_child, [f"sqlite:///{db}"] * 4)
    assert outcomes == ["ok"] * 4
    look = _look(db)
    assert look.version == _head_revision() and not look.leftovers()
    assert _experiments(db) == ["Default"]
    # nothing half-made left beside it: only the store and its lock file
    assert sorted(p.name for p in db.parent.iterdir()) == ["mlflow.db", "mlflow.db.lock"]


def test_a_plain_mlflow_client_and_prepare_at_once_leave_a_usable_store(tmp_path: Path) -> None:
    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    script = f"import mlflow; mlflow.set_tracking_uri({uri!r}); print(len(mlflow.search_runs()))"
    client = subprocess.Popen([PYTHON, "-c", script], stderr=subprocess.PIPE)
    time.sleep(2.0)  # about when its MLflow import ends and it opens the store
    prepare(uri)
    _, stderr = client.communicate(timeout=120)
    assert client.returncode == 0, stderr.decode()[-2000:]
    assert _look(db).version == _head_revision()
    assert _experiments(db) == ["Default"]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store just made, to copy (building one takes seconds)."""
    db = tmp_path_factory.mktemp("pristine") / "mlflow.db"
    prepare(f"sqlite:///{db}")
    return db


def test_a_half_migrated_store_without_runs_is_moved_aside_and_made_anew(
    tmp_path: Path, pristine: Path
) -> None:
    db = tmp_path / "mlflow.db"
    shutil.copy(pristine, db)
    with sqlite3.connect(db) as c:  # what a migration killed half-way leaves
        c.execute("CREATE TABLE _alembic_tmp_tags (key VARCHAR(250))")
    with pytest.warns(UserWarning, match="_alembic_tmp_tags left over.*moved aside"):
        prepare(f"sqlite:///{db}")
    assert _look(db).leftovers() == []
    assert [p.name for p in tmp_path.glob("mlflow.db.broken-*")], "the old file is kept aside"


def test_a_half_migrated_store_with_runs_is_a_one_line_error_saying_how_to_repair(
    tmp_path: Path, pristine: Path
) -> None:
    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    shutil.copy(pristine, db)
    from mlflow.tracking import MlflowClient

    MlflowClient(uri).create_run("0")
    with sqlite3.connect(db) as c:
        c.execute("UPDATE alembic_version SET version_num = '0c779009ac13'")
        c.execute("CREATE TABLE _alembic_tmp_runs (run_uuid VARCHAR(32))")
    with pytest.raises(StoreError) as err:
        prepare(uri)
    message = str(err.value)
    assert "\n" not in message and str(db) in message
    assert "holds 1 runs" in message and f"mlflow db upgrade {uri}" in message
    assert "drop the leftover _alembic_tmp_runs" in message
    assert not list(tmp_path.glob("mlflow.db.broken-*")), "a store with runs is never moved"


def test_a_store_whose_writer_was_killed_mid_transaction_opens(
    pristine: Path, tmp_path: Path
) -> None:
    """A server SIGKILLed mid-write leaves a hot rollback journal, which a read-only look
    cannot roll back ("attempt to write a readonly database"): the store is still whole."""
    db = tmp_path / "mlflow.db"
    shutil.copy(pristine, db)
    writer = f"""
import sqlite3, time
c = sqlite3.connect({str(db)!r}, isolation_level=None)
c.execute("PRAGMA cache_size=1")  # spill to the file: the journal holds the old pages
c.execute("BEGIN")
c.execute("CREATE TABLE filler (x)")
c.executemany("INSERT INTO filler VALUES (randomblob(500))", [()] * 3000)
print("written", flush=True)
time.sleep(60)
"""
    process = subprocess.Popen([PYTHON, "-c", writer], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdout.readline().strip() == "written"
    process.kill()
    process.wait()
    assert Path(f"{db}-journal").stat().st_size > 0  # hot
    prepare(f"sqlite:///{db}")
    look = _look(db)
    assert look.version == _head_revision() and "filler" not in look.tables
    assert _experiments(db) == ["Default"]


def test_a_file_that_is_not_a_database_is_a_one_line_error(tmp_path: Path) -> None:
    db = tmp_path / "mlflow.db"
    db.write_bytes(b"not a database, just some text that is long enough " * 50)
    with pytest.raises(StoreError, match=r"not an MLflow sqlite store") as err:
        prepare(f"sqlite:///{db}")
    assert "\n" not in str(err.value)


def test_a_lock_held_by_a_hung_process_is_a_one_line_error(tmp_path: Path) -> None:
    db = tmp_path / "mlflow.db"
    holder = subprocess.Popen(
        [
            PYTHON,
            "-c",
            "import sys, time, filelock; lock = filelock.FileLock(sys.argv[1]); lock.acquire();"
            " print('held', flush=True); time.sleep(120)",
            f"{db}.lock",
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == b"held"
        started = time.monotonic()
        with pytest.raises(StoreError, match="another process has held") as err:
            prepare(f"sqlite:///{db}", lock_timeout=1.0)
        assert time.monotonic() - started < 30
        assert "\n" not in str(err.value) and f"{db}.lock" in str(err.value)
        assert not db.exists(), "nothing half-made while the lock was held elsewhere"
    finally:
        holder.kill()
        holder.wait()
    prepare(f"sqlite:///{db}")  # its holder gone, the lock is free again
    assert _look(db).version == _head_revision()


def test_other_stores_are_left_to_mlflow(tmp_path: Path) -> None:
    prepare("http://127.0.0.1:1")  # not contacted
    prepare("postgresql://nobody@127.0.0.1:1/none")
    assert list(tmp_path.iterdir()) == []


def test_commands_on_a_broken_store_say_so_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "mlflow.db").write_bytes(b"\x00garbage" * 600)
    for command in (["list"], ["report", "tiny"]):
        done = subprocess.run(
            [PYTHON, "-m", "suite", *command], cwd=tmp_path, capture_output=True, text=True
        )
        assert done.returncode == 2, done.stderr
        assert done.stderr.strip().splitlines() == [
            "error: mlflow.db: not an MLflow sqlite store (file is not a database)"
        ], done.stderr


def test_the_head_revision_read_as_text_is_alembics() -> None:
    assert _head_revision() == _alembic_head(_migrations())


def test_a_store_a_plain_client_makes_while_ours_is_built_is_waited_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plain MLflow client (no lock) makes and migrates the file in place while `prepare`
    builds its own under a temporary name: ours cannot be linked, and `prepare` returns only
    once theirs is whole, so MLflow never opens a half-made store (which it would migrate
    beside them: alembic's "Online migration expected to match one row")."""
    import threading

    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    from suite import store

    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    errors: list[BaseException] = []

    def plain_client() -> None:
        try:
            SqlAlchemyStore(uri, str(tmp_path / "mlartifacts")).engine.dispose()
        except BaseException as err:  # the test asserts on it
            errors.append(err)

    other = threading.Thread(target=plain_client)
    real_link = store.os.link

    def link_after_the_plain_client_started(source: str, target: Path) -> None:
        other.start()
        deadline = time.monotonic() + 30
        while not (db.exists() and _look(db).tables) and time.monotonic() < deadline:
            time.sleep(0.01)  # until it has begun: the file is there with some tables
        real_link(source, target)

    monkeypatch.setattr(store.os, "link", link_after_the_plain_client_started)
    prepare(uri)
    look = _look(db)
    assert look.version == _head_revision() and not look.leftovers()
    other.join(timeout=120)
    assert not errors, errors
    assert _experiments(db) == ["Default"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("mlflow.db")) == [
        "mlflow.db",
        "mlflow.db.lock",
    ]


def test_a_clash_with_another_clients_migration_is_waited_out_in_one_warning(
    tmp_path: Path, pristine: Path
) -> None:
    """MLflow's first open of a store that a lock-less client is migrating at that moment
    fails with alembic's error: the open is tried again once the store settles, said in one
    warning; another error is raised at once; a clash that never ends is one line."""
    from alembic.util.exc import CommandError

    from suite.store import open_settled

    db = tmp_path / "mlflow.db"
    shutil.copy(pristine, db)
    uri = f"sqlite:///{db}"
    clash = "Online migration expected to match one row when updating 'a8c4a736bde6' to '39d1'"
    opened: list[int] = []

    def open_third_time() -> str:
        opened.append(1)
        if len(opened) < 3:
            raise CommandError(clash)
        return "client"

    with pytest.warns(UserWarning) as caught:
        assert open_settled(uri, open_third_time) == "client"
    assert len(opened) == 3
    assert [str(w.message) for w in caught] == [
        f"{uri}: another MLflow client was migrating the new store; waiting for it"
    ]

    def broken() -> str:
        raise ValueError("not a clash")

    with pytest.raises(ValueError, match="not a clash"):
        open_settled(uri, broken)

    def always() -> str:
        raise CommandError(clash)

    with pytest.warns(UserWarning), pytest.raises(StoreError) as err:
        open_settled(uri, always, tries=2)
    assert "\n" not in str(err.value) and "kept migrating the store (Online migration" in str(
        err.value
    )
