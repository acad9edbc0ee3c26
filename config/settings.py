"""Settings built once, from real environment variables over ``.env``.

Nothing else in Rosetta reads ``os.environ``: everything gets a frozen
``Settings`` from ``load_settings()``, or the process's one copy from
``get_config()``.
"""

from __future__ import annotations

import errno
import logging
import os
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from dotenv import dotenv_values

from config.admin_config import AdminConfig, admin_config
from config.alert_config import ALERT_VARIABLES, AlertConfig, alert_values
from config.dlq_config import DLQ_VARIABLES, DLQConfig, dlq_values
from config.errors import ConfigError
from config.nats_config import BACKEND_VARIABLE, NATS_VARIABLES, nats_values

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    """Everything Rosetta reads from its environment."""

    dlq: DLQConfig = DLQConfig()
    admin: AdminConfig = AdminConfig()
    alerts: AlertConfig = AlertConfig()
    # ROSETTA_PIPELINES_FILE: the TOML file defining pipelines (embedded default).
    pipelines_file: Path | None = None
    # CONFIG_DATABASE_URL: read pipelines from this PostgreSQL database instead.
    config_database_url: str | None = field(default=None, repr=False)
    # ROSETTA_STATE_PATH: where sources keep their acknowledged positions.
    state_path: Path = Path("./tmp/state")
    # The merged environment, for options that name a variable (``dsn_env``);
    # it may hold secrets, so it is never shown.
    environment: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)


def load_settings(
    env: Mapping[str, str] | None = None,
    dotenv_path: str | os.PathLike[str] | None = None,
) -> Settings:
    """Build ``Settings`` from ``env`` (default: the process environment) over ``.env``.

    ``dotenv_path`` defaults to ``./.env`` when that file exists. Real environment
    variables win over ``.env``. Every invalid variable is reported in one ``ConfigError``.
    """
    environment = dict(os.environ if env is None else env)
    path = Path(dotenv_path) if dotenv_path is not None else Path(".env")
    from_file: dict[str, str] = {}
    if path.is_file():
        from_file = {k: v for k, v in dotenv_values(path).items() if v is not None}
    elif dotenv_path is not None and path.exists():
        raise ConfigError([f"dotenv path {str(path)!r} is not a regular file"])
    source = {**from_file, **environment}

    problems: list[str] = []
    dlq = dlq_values(source, problems)
    dlq["backend"], dlq["nats"] = nats_values(source, problems)
    alerts = alert_values(source, problems)
    admin = admin_config(source, problems)
    if problems:
        raise ConfigError(problems)

    known = {**DLQ_VARIABLES, **ALERT_VARIABLES, **BACKEND_VARIABLE, **NATS_VARIABLES}
    unknown = sorted(k for k in source if k.startswith("DLQ_") and k not in known)
    for name in unknown:
        logger.warning(
            "unknown setting ignored: variable=%s known=%s", name, ",".join(sorted(known))
        )
    pipelines_file = source.get("ROSETTA_PIPELINES_FILE", "").strip()
    state_path = source.get("ROSETTA_STATE_PATH", "").strip()
    database_url = source.get("CONFIG_DATABASE_URL", "").strip()
    return Settings(
        dlq=DLQConfig(**dlq),  # type: ignore[arg-type]
        admin=admin,
        alerts=AlertConfig(**alerts),  # type: ignore[arg-type]
        pipelines_file=Path(pipelines_file) if pipelines_file else None,
        config_database_url=database_url or None,
        state_path=Path(state_path) if state_path else Settings.state_path,
        environment=source,
    )


_loaded: Settings | None = None
_loading = threading.Lock()


def get_config() -> Settings:
    """The process's ``Settings``: ``load_settings()`` at the first call, the same object after.

    A bad value raises the same ``ConfigError`` as ``load_settings()``, and
    nothing is kept: the next call reads the environment again.
    """
    global _loaded
    with _loading:  # two threads asking at once still load once
        if _loaded is None:
            _loaded = load_settings()
        return _loaded


def reset_config() -> None:
    """Forget what ``get_config()`` loaded: its next call reads the environment again."""
    global _loaded
    with _loading:
        _loaded = None


def prepare_directory(path: Path, variable: str) -> None:
    """Create ``path`` if need be and prove it writable, or raise ``ConfigError`` naming it.

    Run once at start-up, so that an unusable ``DLQ_BASE_PATH`` is a one-line
    configuration error instead of a storage failure deep in the first enqueue.
    """
    where = f"{variable}={str(path)!r}"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ConfigError([f"{where} is not a directory"]) from None
    except OSError as error:
        raise ConfigError([f"{where}: cannot create the directory: {error.strerror}"]) from None
    if not path.is_dir():
        raise ConfigError([f"{where} is not a directory"])
    try:
        fd, probe = tempfile.mkstemp(prefix=".rosetta-write-test-", dir=path)
        try:
            os.write(fd, b"x")
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            # Writable, but full: the store starts anyway and drains its queues
            # with the room it keeps for that; enqueues are refused meanwhile.
            return
        raise ConfigError([f"{where}: the directory is not writable: {error.strerror}"]) from None
