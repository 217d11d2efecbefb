"""Where a study lives (``--storage``): Optuna's own storages, chosen by the URL.

- default: a SQLite file, ``SWEEP_DIR/study.db``: no server; workers on one machine share it (SQLite's file locks;
  not on NFS, whose locks SQLite cannot trust);
- ``postgresql://user:password@host/db`` or ``mysql://...``: a database server that workers on several machines
  share (the driver, e.g. psycopg2, must be installed);
- ``journal:///path/to/file``: Optuna's ``JournalStorage`` over a log file, for workers on several machines that
  share a file system but no database server.

Database storages (SQLite included) keep Optuna's heartbeat: a worker records one every ``HEARTBEAT_S`` seconds
while its trial runs, and a trial whose worker stopped beating for ``GRACE_S`` seconds (a machine lost, a frozen
worker) is marked failed by the next worker that starts a trial (and continued from its checkpoint, if it has one:
:mod:`ds_kronos.sweep.workers`). The journal storage has no heartbeat in Optuna;
there (and everywhere, at once) :mod:`ds_kronos.sweep.workers` fails the trials of workers gone from this machine.
"""

from __future__ import annotations

import fcntl
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ds_kronos.errors import ConfigError
from ds_kronos.sweep.workers import continue_stale_trial

JOURNAL_SCHEME = "journal://"
DEFAULT_DATABASE = "study.db"
HEARTBEAT_S = 60
GRACE_S = 300
SQLITE_BUSY_TIMEOUT_S = 60
"""How long a SQLite write waits for another worker's (the sqlite3 module's default, 5 s, is short for a busy
file system)."""


def default_storage_url(sweep_dir: str) -> str:
    return f"sqlite:///{(Path(sweep_dir) / DEFAULT_DATABASE).resolve()}"


def describe_storage(url: str) -> str:
    """The URL with any password hidden (it goes to stdout and summary.json)."""
    if url.startswith(JOURNAL_SCHEME):
        return url
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def storage_problems(url: str) -> list[str]:
    """A URL Optuna cannot use, found before anything is created."""
    if url.startswith(JOURNAL_SCHEME):
        path = Path(url[len(JOURNAL_SCHEME):])
        if not path.name:
            return [f"--storage {url}: journal:// needs a file path, e.g. journal:///shared/sweeps/study.log"]
        return [] if path.parent.is_dir() else [f"--storage {url}: folder {path.parent} not found"]
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        return [f"--storage {url}: not a database URL (sqlite:///FILE, postgresql://..., mysql://...) nor "
                f"journal:///FILE"]
    if parsed.get_backend_name() == "sqlite" and parsed.database:
        folder = Path(parsed.database).parent
        if not folder.is_dir():
            return [f"--storage {describe_storage(url)}: folder {folder} not found"]
    return []


@contextmanager
def creation_lock(url: str) -> Iterator[None]:
    """Held while a worker opens (and on first use creates) the study: two workers that start at once would
    otherwise both create SQLite's tables, and one fails. A lock file beside a SQLite database; a server-side
    database is left to itself (start one worker first there, or create the study with ``optuna create-study``)."""
    from sqlalchemy.engine import make_url

    database = None if url.startswith(JOURNAL_SCHEME) else make_url(url)
    if database is None or database.get_backend_name() != "sqlite" or not database.database:
        yield
        return
    with open(f"{database.database}.lock", "a", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def open_storage(url: str):
    """Optuna's storage for ``url`` (checked by :func:`storage_problems`); a driver that is not installed or a
    server that does not answer is a ConfigError naming the URL."""
    import optuna
    from optuna.exceptions import ExperimentalWarning

    if url.startswith(JOURNAL_SCHEME):
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(url[len(JOURNAL_SCHEME):]))
    sqlite = url.startswith("sqlite")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)  # the heartbeat is marked experimental
            return optuna.storages.RDBStorage(
                url, engine_kwargs={"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}} if sqlite else None,
                heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                heartbeat_stale_trial_callback=continue_stale_trial)
    except ImportError as exc:
        raise ConfigError(f"--storage {describe_storage(url)}: its database driver is not installed ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy's errors for a server that refuses or is not there
        if type(exc).__module__.startswith("sqlalchemy"):
            first = str(exc).strip().splitlines()[0]
            raise ConfigError(f"--storage {describe_storage(url)}: cannot open the study database: {first}") from None
        raise
