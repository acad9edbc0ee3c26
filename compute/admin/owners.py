"""Which engine owns each pipeline (``DLQ_BACKEND=jetstream``), as the leases bucket says now."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from compute.storage.jetstream.bridge import NatsBridge, StoreUnavailable
from compute.storage.jetstream.leases import Leases, Owner
from config.settings import Settings

logger = logging.getLogger(__name__)


def read_owners(settings: Settings) -> Mapping[str, Owner] | None:
    """Pipeline name -> its owner, over a connection of its own (no engine running here).

    None when JetStream does not answer: the caller shows the owner as unknown.
    """
    try:
        bridge = NatsBridge(settings.dlq.nats)
    except StoreUnavailable as error:
        logger.warning("pipeline owners unknown: %s", error)
        return None
    try:
        return Leases(bridge, engine_id="rosetta-dlq-cli").owners()
    except StoreUnavailable as error:
        logger.warning("pipeline owners unknown: %s", error)
        return None
    finally:
        bridge.close()


def owners_by_source(owners: Mapping[str, Owner]) -> dict[str, Owner]:
    """The same owners by their pipeline's source id (the first part of a queue's id)."""
    return {owner.source_id: owner for owner in owners.values() if owner.source_id}
