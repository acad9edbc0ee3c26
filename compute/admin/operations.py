"""Every operator action on the DLQ, in one place, for the CLI and the admin HTTP API.

``DLQOperations`` works over a ``DLQManager``: inside the running engine
(the admin API calls it, with the engine's pipelines for health and replay
through their recovery workers) or, with the engine stopped, over the queue
directories opened directly by the CLI (replay then builds the destinations
from the pipelines config, as ``rosetta run`` does). Both modes run the same
code, so they behave the same. Every method returns plain JSON-able data.
"""

from __future__ import annotations

from compute.admin.export_import import ExportImport
from compute.admin.message_actions import MessageActions
from compute.admin.queue_reading import QueueReading
from compute.admin.replay_actions import ReplayActions


class DLQOperations(QueueReading, ReplayActions, MessageActions, ExportImport):
    """The operator's actions on the DLQ (see the module docstring); each part is a module:
    ``queue_reading``, ``replay_actions``, ``message_actions``, ``export_import``, over
    ``operations_base`` (the state they share)."""
