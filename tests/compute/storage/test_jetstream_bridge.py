"""The engine's NATS connection: requests from threads, and a silent connection replaced."""

from __future__ import annotations

import time
from typing import Any

import pytest

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


def test_run_returns_results_passes_answers_and_turns_silence_into_unavailable(
    nats_session_cluster: Any,
) -> None:
    import asyncio

    from nats.js import errors as js_errors

    config = NatsConfig(urls=tuple(nats_session_cluster.urls), request_timeout=1.0)
    bridge = NatsBridge(config)
    try:

        async def value() -> int:
            await asyncio.sleep(0)
            return 42

        assert bridge.run(value()) == 42
        # A JetStream answer (here: no such stream) comes back as it is, not as an outage.
        with pytest.raises(js_errors.NotFoundError):
            bridge.run(bridge.js.stream_info("NO_SUCH_STREAM_FOR_BRIDGE_TEST"))

        cancelled = []

        async def silent() -> None:
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancelled.append(True)
                raise

        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="no answer from JetStream within 0.3 s"):
            bridge.run(silent(), timeout=0.3)
        assert time.monotonic() - started < 5
        wait_until(lambda: cancelled == [True], 5, "the abandoned request to be cancelled")

        async def fails() -> None:
            raise ValueError("not a transport error")

        with pytest.raises(ValueError, match="not a transport error"):
            bridge.run(fails())
        # The connection is still usable after all of that.
        assert bridge.run(value()) == 42
    finally:
        bridge.close()
    with pytest.raises(StoreUnavailable, match="closed"):
        bridge.run(value())
