"""A tour of the DLQ store: enqueue failed changes, list queues, show status, read and ack.

    python examples/dlq_example.py [--base-path DIR]

Runs on the embedded defaults (``DLQ_*`` variables and ``.env`` apply); uses
a fresh directory under ./tmp unless --base-path is given. Exit code 0 when
every message enqueued came back, in order, and the queues are empty at the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compute.dlq_manager import DLQManager  # noqa: E402
from compute.dlq_message import DLQMessage, FailureContext  # noqa: E402
from compute.queue_id import QueueId  # noqa: E402
from config.errors import ConfigError  # noqa: E402
from config.settings import load_settings  # noqa: E402
from destinations.errors import ClassifiedError, FailureKind  # noqa: E402
from destinations.records import ChangeRecord, Operation, SourcePosition  # noqa: E402


def changes(table: str, count: int, first_lsn: int) -> list[ChangeRecord]:
    records = []
    for i in range(count):
        op = (Operation.INSERT, Operation.UPDATE, Operation.DELETE)[i % 3]
        key = {"id": i // 3 + 1}
        after = None if op is Operation.DELETE else {**key, "balance": Decimal(f"{100 + i}.25")}
        records.append(ChangeRecord(table, op, key, after, SourcePosition(first_lsn + i, 0)))
    return records


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--base-path", type=Path, help="DLQ directory (default: a fresh one in ./tmp)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s - %(message)s")
    try:
        settings = load_settings()
    except ConfigError as error:
        print(f"configuration error: {error}", file=sys.stderr)
        return 2
    base = args.base_path
    if base is None:
        Path("tmp").mkdir(exist_ok=True)
        base = Path(tempfile.mkdtemp(prefix="dlq_example_", dir="tmp"))
    config = dataclasses.replace(settings.dlq, base_path=base)

    # A destination write failed: this is what the event handler captures.
    error = ConnectionError("could not connect to server: Connection refused")
    classified = ClassifiedError(FailureKind.TRANSIENT, "OperationalError", str(error), "08006")
    failure = FailureContext.from_exception(error, classified)

    queues = {
        QueueId("1", "public.users", "2"): changes("public.users", 50, 0x16B3748),
        QueueId("1", "public.orders", "1"): changes("public.orders", 12, 0x16C0000),
    }
    ok = True
    with DLQManager(config) as dlq:
        print(f"\n== Enqueue failed changes under {base}")
        for queue, records in queues.items():
            messages = [DLQMessage.create(queue, r, failure) for r in records]
            result = dlq.enqueue(queue, messages)
            print(f"  {queue}: enqueued {result.accepted}")

        print("\n== Queues on disk")
        for queue in dlq.list_queues():
            status = dlq.status(queue)
            age = status.oldest_age(time.time()) or 0.0
            print(
                f"  {queue}: {status.messages} messages, {status.bytes_on_disk:,} bytes, "
                f"oldest {age:.1f}s, last error: {status.last_error}"
            )
        dlq.write_status_files(force=True)
        for root, dirs, files in sorted(os.walk(base)):
            depth = Path(root).relative_to(base).parts
            if len(depth) == 3:
                shown = [f for f in sorted(files) if f.endswith(".json")] + sorted(dirs)
                print(f"  {Path(root).relative_to(base)}/  {' '.join(shown)}")

        print("\n== Read and acknowledge (after the destination committed)")
        for queue, records in queues.items():
            replayed: list[ChangeRecord] = []
            while True:
                lease = dlq.read_batch(queue, config.batch_size)
                if lease.is_empty:
                    break
                print(f"  Processing {len(lease)} DLQ messages for {queue}")
                replayed.extend(m.record for m in lease.messages)
                dlq.ack(lease)  # only after the destination committed the batch
                print(f"  ✓ Successfully replayed {len(lease)}/{len(lease)} DLQ messages")
            in_order = replayed == records
            ok &= in_order and not dlq.has_messages(queue)
            print(f"  {queue}: {len(replayed)}/{len(records)} back, in order: {in_order}")

    verdict = "OK: every message came back, in order" if ok else "FAILED: messages missing or out of order"
    print(f"\n{verdict}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
