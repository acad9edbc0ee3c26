"""The stream and the key-value bucket the JetStream store keeps, created or checked at start.

``<prefix>_QUEUES`` holds every queue's messages under ``<prefix>.q.>``:
file storage, ``num_replicas`` copies, and ``discard=new``, so that a full
stream refuses a write (the DLQ's backpressure) instead of deleting the
oldest queued changes. ``<prefix>_RECORDS`` keeps the manager's per-queue
records, one version each, on as many replicas.
"""

from __future__ import annotations

import logging
from typing import Any

from compute.errors import DLQStorageError
from compute.storage.jetstream.bridge import NatsBridge
from compute.storage.jetstream.naming import queue_subjects, queues_stream, records_bucket

logger = logging.getLogger(__name__)

STREAM_NAME_IN_USE = 10058  # "stream name already in use with a different configuration"


def ensure_queues_stream(bridge: NatsBridge, max_bytes: int = -1, max_messages: int = -1) -> str:
    """Create the queues stream, or bring an existing one to this configuration; its name.

    Only the settings this store relies on are changed on an existing stream
    (replicas, limits, the discard policy); a stream that cannot be updated
    (another storage type, other subjects in use) is reported with what differs.
    """
    from nats.js import api
    from nats.js import errors as js_errors

    config = bridge.config
    name = queues_stream(config.stream_prefix)
    wanted = api.StreamConfig(
        name=name,
        description="Rosetta DLQ queues: one subject per (source, table, destination) lane",
        subjects=[queue_subjects(config.stream_prefix)],
        retention=api.RetentionPolicy.LIMITS,
        storage=api.StorageType.FILE,
        num_replicas=config.replicas,
        discard=api.DiscardPolicy.NEW,
        max_bytes=max_bytes,
        max_msgs=max_messages,
        max_age=0,
        # Reads go to the stream's leader (never a replica that lags behind).
        allow_direct=False,
        duplicate_window=120.0,
    )
    try:
        bridge.run(bridge.js.add_stream(wanted))
        return name
    except js_errors.APIError as error:
        if error.err_code != STREAM_NAME_IN_USE:
            raise DLQStorageError(f"cannot create JetStream stream {name}: {error}") from error
    try:
        info = bridge.run(bridge.js.stream_info(name))
        logger.info(
            "JetStream stream %s exists with other settings, updating: replicas %s -> %s",
            name,
            info.config.num_replicas,
            config.replicas,
        )
        bridge.run(bridge.js.update_stream(wanted))
    except js_errors.APIError as error:
        raise DLQStorageError(
            f"JetStream stream {name} exists with settings this store cannot use or change "
            f"(wanted subjects {wanted.subjects}, file storage, discard=new, "
            f"{config.replicas} replicas): {error}"
        ) from error
    return name


def open_records(bridge: NatsBridge) -> Any:
    """The records bucket (a nats-py ``KeyValue``), created if absent."""
    from nats.js import api
    from nats.js import errors as js_errors

    config = bridge.config
    bucket = records_bucket(config.stream_prefix)
    try:
        return bridge.run(
            bridge.js.create_key_value(
                api.KeyValueConfig(
                    bucket=bucket,
                    description="Rosetta DLQ per-queue records",
                    history=1,
                    replicas=config.replicas,
                    storage=api.StorageType.FILE,
                    direct=False,  # read from the leader: a record just written is seen
                )
            )
        )
    except js_errors.APIError as error:
        if error.err_code != STREAM_NAME_IN_USE:
            raise DLQStorageError(f"cannot create JetStream bucket {bucket}: {error}") from error
    logger.warning("JetStream bucket %s exists with other settings; using it as it is", bucket)
    return bridge.run(bridge.js.key_value(bucket))
