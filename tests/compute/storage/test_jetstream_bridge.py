"""The engine's NATS connection notices a silent (partitioned) connection and reconnects."""

from __future__ import annotations

import time
from typing import Any

from compute.storage.jetstream.bridge import NatsBridge, StoreUnavailable
from config.nats_config import NatsConfig
from tests.fault_proxy import fault_proxy
from tests.waiting import wait_until


def test_a_partitioned_connection_is_replaced_within_a_few_timeouts(
    nats_session_cluster: Any,
) -> None:
    node = nats_session_cluster.nodes[0]
    with fault_proxy("127.0.0.1", node.port) as proxy:
        config = NatsConfig(urls=(f"nats://127.0.0.1:{proxy.port}",), request_timeout=1.0)
        bridge = NatsBridge(config)
        try:

            def answers() -> bool:
                try:
                    bridge.run(bridge.js.account_info())
                except StoreUnavailable:
                    return False
                return True

            assert answers()
            # Packets dropped both ways: the open connection stays dead even after
            # the network is back; only the client can notice and replace it.
            proxy.blackhole()
            assert not answers()
            proxy.pass_through()
            back = time.monotonic()
            wait_until(answers, 15, "JetStream to answer through a new connection")
            assert time.monotonic() - back < 8, "noticed after more than a few timeouts"
        finally:
            bridge.close()
