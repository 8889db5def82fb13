"""MLflow tracking of one evaluation run through :class:`mlflow.tracking.MlflowClient`.

The client API keeps no global active run, so an exception in one evaluation cannot leak an open
run into the next. Only database (``sqlite:///``) and server (``http://``) tracking stores are
accepted, because MLflow 3.17 no longer supports file stores (``./mlruns`` folders).

Currently only supports one writer per SQLite store at a time: MLflow may report "database is
locked" when several processes write to, or first create, the same SQLite file. Create the store
once before parallel runs, or point ``MLFLOW_TRACKING_URI`` at one ``mlflow server``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import shlex
import signal
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlparse

from mlflow.entities import Metric, Param, RunStatus
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import (
    MAX_METRICS_PER_BATCH,
    MAX_PARAM_VAL_LENGTH,
    MAX_PARAMS_TAGS_PER_BATCH,
    MAX_TAG_VAL_LENGTH,
)

logger = logging.getLogger(__name__)

TRACKING_URI_VARIABLE = "MLFLOW_TRACKING_URI"
ERROR_TAG = "error"
MAX_ERROR_TAG_LENGTH = 5000
ARTIFACT_FOLDER = "mlartifacts"

_SUPPORTED_STORES = "Use a SQLite store such as 'sqlite:///path/to/mlruns.db' or a tracking server 'http://host:port'."


def resolve_tracking_uri(default_store: str | os.PathLike) -> str:
    """Return the tracking URI: ``MLFLOW_TRACKING_URI`` if set, else a SQLite store at ``default_store``.

    Args:
        default_store: path of the SQLite file used when the environment variable is unset or
            empty, e.g. ``eval/mlruns.db``. Its parent folder is created. A ``sqlite:``,
            ``http:`` or ``https:`` URI is also accepted and returned unchanged.

    Raises:
        ValueError: when the environment variable or ``default_store`` names a file store: a
            ``file:`` URI, a path without a URI scheme in the environment variable, or an existing
            folder as ``default_store``.
    """
    from_environment = os.environ.get(TRACKING_URI_VARIABLE, "").strip()
    if from_environment:
        _check_tracking_uri(from_environment, source=f"environment variable {TRACKING_URI_VARIABLE}")
        return from_environment

    store = os.fspath(default_store)
    if _uri_scheme(store):
        _check_tracking_uri(store, source="default_store")
        return store

    path = Path(store).expanduser().absolute()
    if path.is_dir():
        raise ValueError(
            f"default_store {store!r} is a folder, which would be an MLflow file store. MLflow 3.17 no longer "
            f"supports file stores, so pass the path of a SQLite file instead, e.g. {str(path / 'mlruns.db')!r}."
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


class TrackedRun:
    """One MLflow run, started on ``with`` entry and ended on exit.

    Every ``with`` block creates a new run, so a finished run is never resumed. On normal exit the
    run ends as FINISHED. When the block raises (``KeyboardInterrupt`` included), the run gets the
    tag ``error`` (``"<ExceptionType>: <message>"``, or the type alone for an empty message, then
    ``(caused by ...)`` with the innermost chained exception; at most 5000 characters), ends as
    FAILED, and the exception propagates. While the run is active in the main thread, SIGTERM
    raises :class:`RunTerminated`, so a stopped job also ends FAILED.

    A new experiment on a SQLite store keeps its artifacts in ``<folder of the .db>/mlartifacts/
    <experiment name>``. Without this, MLflow 3.17.2 puts them in ``./mlruns/<experiment id>``
    under the current working folder. An experiment that already exists keeps its location.

    Args:
        experiment: experiment name; created if it does not exist.
        run_name: name shown for the run in the MLflow UI.
        tracking_uri: ``sqlite:///`` or ``http(s)://`` URI, e.g. from :func:`resolve_tracking_uri`.
        tags: run tags set at creation.

    Example::

        with TrackedRun("cad_dymo", "eval-2026-01-01", resolve_tracking_uri("eval/mlruns.db")) as run:
            run.log_params({"missing_rate": 0.3})
            run.log_metric("auc", 0.81, step=0)
    """

    def __init__(
        self, experiment: str, run_name: str, tracking_uri: str, tags: Mapping[str, str] | None = None
    ) -> None:
        if not isinstance(experiment, str) or not experiment.strip():
            raise ValueError(f"experiment must be a non-empty name, got {experiment!r}.")
        if not isinstance(run_name, str):
            raise TypeError(f"run_name must be a str, got {type(run_name).__name__}.")
        _check_tracking_uri(tracking_uri, source="tracking_uri")

        self._experiment = experiment
        self._run_name = run_name
        self._tracking_uri = tracking_uri
        self._tags = {
            str(key): _truncate(str(value), MAX_TAG_VAL_LENGTH, f"tag {key!r}") for key, value in (tags or {}).items()
        }
        self._client: MlflowClient | None = None
        self._run_id: str | None = None
        self._experiment_id: str | None = None
        self._active = False
        self._nan_keys: set[str] = set()
        self._previous_sigterm: Any = None

    @property
    def run_id(self) -> str:
        """ID of the current run, or of the last one after the ``with`` block ended."""
        if self._run_id is None:
            raise RuntimeError("TrackedRun has no run yet. Enter it with 'with TrackedRun(...) as run:' first.")
        return self._run_id

    @property
    def experiment_id(self) -> str:
        """ID of the experiment that contains the run."""
        if self._experiment_id is None:
            raise RuntimeError("TrackedRun has no experiment yet. Enter it with 'with TrackedRun(...) as run:' first.")
        return self._experiment_id

    @property
    def tracking_uri(self) -> str:
        """Tracking URI the run is written to."""
        return self._tracking_uri

    def __enter__(self) -> TrackedRun:
        if self._active:
            raise RuntimeError(
                f"TrackedRun for run {self._run_id} is already active, so it cannot be entered again "
                "before its with block ends."
            )

        self._create_sqlite_folder()
        with self._writing_store():
            self._client = MlflowClient(tracking_uri=self._tracking_uri)
            self._experiment_id = self._get_or_create_experiment(self._client)
            run = self._client.create_run(self._experiment_id, run_name=self._run_name, tags=self._tags)
        self._run_id = run.info.run_id
        self._active = True
        self._nan_keys = set()
        self._previous_sigterm = None
        try:
            self._previous_sigterm = _raise_on_sigterm()
            logger.info(
                "Started MLflow run %s (%s) in experiment %r (id %s) at %s. Artifacts go to %s.",
                self._run_id,
                run.info.run_name,
                self._experiment,
                self._experiment_id,
                self._tracking_uri,
                run.info.artifact_uri,
            )
        except BaseException:
            # An interruption here would skip __exit__ and leave the new run RUNNING.
            self.__exit__(*sys.exc_info())
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        client, run_id = self._require_active()
        self._active = False
        if self._previous_sigterm is not None:
            signal.signal(signal.SIGTERM, self._previous_sigterm)

        status = RunStatus.to_string(RunStatus.FINISHED if exc_type is None else RunStatus.FAILED)
        if exc_type is not None:
            message = describe_error(exc_type, exc_value)
            message = _truncate(message, MAX_ERROR_TAG_LENGTH, "error tag", warn=False)
            self._set_tag_quietly(client, run_id, ERROR_TAG, message)

        try:
            client.set_terminated(run_id, status=status)
        except Exception:
            if exc_type is None:
                raise
            # The block's own exception matters more, so log this one rather than replace it.
            logger.exception("Failed to mark MLflow run %s as %s.", run_id, status)

        logger.info("MLflow run %s ended as %s. %s", run_id, status, self._viewing_hint())
        return False

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log ``params`` as strings in batches, truncating values longer than 6000 characters with a warning.

        MLflow rejects logging a parameter again with a different value in the same run.
        """
        client, run_id = self._require_active()
        entries = [
            Param(str(key), _truncate(str(value), MAX_PARAM_VAL_LENGTH, f"parameter {key!r}"))
            for key, value in params.items()
        ]
        with self._writing_store():
            for start in range(0, len(entries), MAX_PARAMS_TAGS_PER_BATCH):
                client.log_batch(run_id, params=entries[start : start + MAX_PARAMS_TAGS_PER_BATCH])

    def log_metric(self, key: str, value: float, step: int) -> None:
        """Log one metric value at ``step``. NaN is logged too, with one warning per key."""
        self.log_metrics({key: value}, step=step)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Log several metric values at one ``step`` in batches. NaN is logged too, with one warning per key."""
        client, run_id = self._require_active()
        timestamp = int(time.time() * 1000)
        entries = []
        for key, value in metrics.items():
            value = float(value)
            if math.isnan(value) and key not in self._nan_keys:
                self._nan_keys.add(key)
                logger.warning(
                    "Metric %r is NaN at step %d in MLflow run %s. It is logged as NaN, "
                    "and this warning is shown once per metric.",
                    key,
                    step,
                    run_id,
                )
            entries.append(Metric(key=str(key), value=value, timestamp=timestamp, step=int(step)))

        with self._writing_store():
            for start in range(0, len(entries), MAX_METRICS_PER_BATCH):
                client.log_batch(run_id, metrics=entries[start : start + MAX_METRICS_PER_BATCH])

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """Copy the file or folder at ``path`` into the run's artifacts, under ``artifact_path`` if given."""
        client, run_id = self._require_active()
        local_path = Path(path)
        if not local_path.exists():
            raise FileNotFoundError(
                f"Artifact {str(local_path)!r} not found. Write the file before logging it to MLflow run {run_id}."
            )
        client.log_artifact(run_id, str(local_path), artifact_path)

    def set_tag(self, key: str, value: Any) -> None:
        """Set a run tag, converting the value to ``str`` and truncating it to 8000 characters with a warning."""
        client, run_id = self._require_active()
        client.set_tag(run_id, str(key), _truncate(str(value), MAX_TAG_VAL_LENGTH, f"tag {key!r}"))

    @contextlib.contextmanager
    def _writing_store(self) -> Iterator[None]:
        """Turn SQLite's reply to a full disk ("disk I/O error", "database or disk is full") into an error naming the store."""
        try:
            yield
        except Exception as error:
            text = " ".join(str(link) for link in _error_chain(error))
            if not any(sign in text for sign in _STORE_FULL_SIGNS):
                raise
            raise TrackingStoreError(
                f"cannot write the MLflow store {self._tracking_uri}: {type(error).__name__}: {str(error).splitlines()[0]}. "
                "SQLite reports a full disk (or a file size limit) this way: free space on the disk that holds the "
                "store, or point --tracking_store (or MLFLOW_TRACKING_URI) at another disk, then run again."
            ) from error

    def _require_active(self) -> tuple[MlflowClient, str]:
        if not self._active or self._client is None or self._run_id is None:
            raise RuntimeError("TrackedRun is not active. Log inside 'with TrackedRun(...) as run:'.")
        return self._client, self._run_id

    def _create_sqlite_folder(self) -> None:
        database = _sqlite_database_path(self._tracking_uri)
        if database is not None:
            database.parent.mkdir(parents=True, exist_ok=True)

    def _get_or_create_experiment(self, client: MlflowClient) -> str:
        """Return the experiment's id, creating it with a deterministic artifact location if missing."""
        experiment = client.get_experiment_by_name(self._experiment)
        if experiment is None:
            try:
                return client.create_experiment(self._experiment, artifact_location=self._artifact_location())
            except MlflowException as error:
                # Another process created it between the lookup and the creation.
                if error.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
                    raise
                experiment = client.get_experiment_by_name(self._experiment)
                if experiment is None:
                    raise

        if experiment.lifecycle_stage == "deleted":
            raise ValueError(
                f"MLflow experiment {self._experiment!r} (id {experiment.experiment_id}) at {self._tracking_uri} "
                f"is deleted. Restore it with 'mlflow experiments restore --experiment-id "
                f"{experiment.experiment_id}' or choose another experiment name."
            )
        return experiment.experiment_id

    def _artifact_location(self) -> str | None:
        """Return ``<folder of the .db>/mlartifacts/<experiment>`` as a file URI for SQLite stores, else None."""
        database = _sqlite_database_path(self._tracking_uri)
        if database is None:
            return None
        folder_name = re.sub(r"[^A-Za-z0-9._-]", "_", self._experiment)
        return (database.parent / ARTIFACT_FOLDER / folder_name).as_uri()

    def _viewing_hint(self) -> str:
        if _uri_scheme(self._tracking_uri) in ("http", "https"):
            return f"Open {self._tracking_uri} to inspect it."
        return f"Inspect it with: mlflow ui --backend-store-uri {shlex.quote(self._tracking_uri)} --host 127.0.0.1"

    def _set_tag_quietly(self, client: MlflowClient, run_id: str, key: str, value: str) -> None:
        try:
            client.set_tag(run_id, key, value)
        except Exception:
            logger.exception("Failed to set tag %r on MLflow run %s.", key, run_id)


def _check_tracking_uri(uri: str, *, source: str) -> None:
    """Raise ValueError when ``uri`` is not a string or names an MLflow file store."""
    if not isinstance(uri, str) or not uri.strip():
        raise ValueError(f"{source} must be a non-empty tracking URI, got {uri!r}. {_SUPPORTED_STORES}")

    scheme = _uri_scheme(uri)
    if scheme == "file":
        raise ValueError(
            f"{source} is the file store URI {uri!r}, which MLflow 3.17 no longer supports. {_SUPPORTED_STORES}"
        )
    if not scheme:
        raise ValueError(
            f"{source} is the bare path {uri!r}, which MLflow would treat as a file store. MLflow 3.17 no longer "
            f"supports file stores. {_SUPPORTED_STORES}"
        )


def _uri_scheme(uri: str) -> str:
    return urlparse(uri).scheme.lower()


def _sqlite_database_path(uri: str) -> Path | None:
    """Return the absolute path of a ``sqlite:`` URI's database file, or None for other URIs and in-memory stores."""
    if _uri_scheme(uri) != "sqlite":
        return None

    # sqlite:///relative.db names a path relative to the current working folder, sqlite:////absolute.db an absolute one.
    database = uri.split("://", 1)[1][1:] if "://" in uri else ""
    database = database.split("?", 1)[0]
    if not database or database == ":memory:":
        return None
    return Path(database).absolute()


def _truncate(value: str, limit: int, name: str, *, warn: bool = True) -> str:
    if len(value) <= limit:
        return value
    if warn:
        logger.warning("Value of %s has %d characters; truncating it to MLflow's limit of %d.", name, len(value), limit)
    return value[:limit]


def describe_error(exc_type: type[BaseException], exc_value: BaseException | None) -> str:
    """Return ``"Type: message"`` of an exception, followed by its root cause when it wraps one.

    A library that wraps an error (a MONAI transform, for example) puts the useful message, such
    as the unreadable file's path, in the innermost exception.
    """

    def describe(error_type: type[BaseException], error: BaseException | None) -> str:
        detail = str(error) if error is not None else ""
        return f"{error_type.__name__}: {detail}" if detail else error_type.__name__

    message = describe(exc_type, exc_value)
    root = exc_value
    seen = set()
    while root is not None and id(root) not in seen and _wrapped(root) is not None:
        seen.add(id(root))
        root = _wrapped(root)
    if root is not None and root is not exc_value:
        message += f" (caused by {describe(type(root), root)})"
    return message


def _wrapped(error: BaseException) -> BaseException | None:
    """Return the exception ``error`` was raised from or while handling, unless ``raise ... from None`` hid it."""
    if error.__cause__ is not None:
        return error.__cause__
    return None if error.__suppress_context__ else error.__context__


def _error_chain(error: BaseException) -> list[BaseException]:
    chain = [error]
    while len(chain) < 50 and _wrapped(chain[-1]) is not None:
        chain.append(_wrapped(chain[-1]))
    return chain


# SQLite's messages for a write that finds no room: ENOSPC gives the second, a file size limit the first.
_STORE_FULL_SIGNS = ("disk I/O error", "database or disk is full")


class TrackingStoreError(RuntimeError):
    """The MLflow store could not be written, most often because its disk is full."""


class RunTerminated(BaseException):
    """Raised inside a :class:`TrackedRun` when the process receives SIGTERM (for example from a job scheduler).

    Like ``KeyboardInterrupt`` it is not an ``Exception``, so no ``except Exception`` on the way
    swallows it. The logging module, for one, catches every ``Exception`` raised while a record
    is written.
    """


def _raise_on_sigterm():
    """Make SIGTERM raise :class:`RunTerminated` so the run ends FAILED; return the previous handler.

    Python's default SIGTERM handling ends the process without unwinding, which would leave the
    MLflow run RUNNING forever. Signal handlers can only be set from the main thread; elsewhere
    nothing changes and None is returned.
    """
    if threading.current_thread() is not threading.main_thread():
        return None

    def handle(signum: int, frame: Any) -> None:
        raise RunTerminated(f"the process received signal {signal.Signals(signum).name}")

    return signal.signal(signal.SIGTERM, handle)
