"""The example NATS node configuration is one nats-server accepts, and it syncs every write."""

from __future__ import annotations

import re
import subprocess

from tests.nats_cluster import nats_server_binary
from tests.rosetta_cli import ROOT

CONFIG = ROOT / "examples" / "nats" / "nats-server.conf"


def test_the_example_config_is_valid_and_syncs_every_write() -> None:
    checked = subprocess.run(
        [nats_server_binary(), "-c", str(CONFIG), "-t"], capture_output=True, text=True, timeout=30
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "is valid" in checked.stdout + checked.stderr
    active = [line.split("#")[0].strip() for line in CONFIG.read_text().splitlines()]
    assert "sync_interval: always" in active
    # The DLQ's largest message must fit in one publish.
    assert any(re.fullmatch(r"max_payload:\s*16MB", line) for line in active)
