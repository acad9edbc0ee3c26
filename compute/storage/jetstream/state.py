"""What the JetStream store knows of one queue lane, in queue positions.

A position counts payloads written to the queue since its subject was
first written (``Rosetta-End`` of each message, see messages.py): the
queue holds the positions ``acked`` to ``end``. The writer's part
(``last_seq``, ``end``, ``bytes_end``) comes from the subject's last
message; the reader's part (leases, the buffer, the frames fetched) from
its first one and the ack cursor.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from compute.queue_id import QueueId
from compute.storage.base import StoreLease
from compute.storage.jetstream.messages import StoredFrame


@dataclass
class QueueState:
    """One queue lane; every field is guarded by ``lock``."""

    queue: QueueId
    subject: str
    lock: threading.RLock = field(default_factory=threading.RLock)
    loaded: bool = False
    # The writer: the subject's last stream sequence this store knows (0: no
    # message), the expected one for the next publish, and the positions after it.
    last_seq: int = 0
    end: int = 0
    bytes_end: int = 0
    # A publish whose answer was lost expected this sequence: the next one
    # expects it again with the same message id, so JetStream's deduplication
    # answers "duplicate" if the lost one was stored (never stored twice).
    unsure_expected: int | None = None
    # The message ids published without an answer since the last answered
    # publish. One may land after all: a batch its caller was told is not
    # stored (and will send again), a phantom. The writer deletes it before
    # writing past it, and the reader does not read past ``end`` meanwhile.
    unsure_ids: set[str] = field(default_factory=set)
    # Bumped when a phantom is deleted: JetStream remembers a deleted message's
    # id for its duplicate window and would answer "duplicate" to the same
    # batch sent again (and so lose it), so later message ids carry this.
    generation: int = 0
    # The reader: the first unacknowledged position, and the bytes before the
    # first message not wholly acknowledged (``bytes_end - acked_bytes`` is stored).
    acked: int = 0
    acked_bytes: int = 0
    # Frames fetched by the reader and not wholly acknowledged, oldest first,
    # and the stream sequence reading goes on after.
    frames: list[StoredFrame] = field(default_factory=list)
    fetched_seq: int = 0
    # Fetched, unleased payloads from position ``read_pos`` on.
    read_pos: int = 0
    buffer: list[bytes] = field(default_factory=list)
    # Outstanding leases, oldest first: the reader's and at most one read-ahead.
    leases: list[StoreLease] = field(default_factory=list)

    @property
    def count(self) -> int:
        return max(0, self.end - self.acked)

    @property
    def buffer_end(self) -> int:
        return self.read_pos + len(self.buffer)

    def adopt(self, frame: StoredFrame) -> None:
        """``frame`` was read back: a writer that knew less (another engine's write,
        a publish whose answer was lost) now knows it too."""
        if frame.seq > self.last_seq:
            self.last_seq = frame.seq
            self.end = max(self.end, frame.end)
            self.bytes_end = max(self.bytes_end, frame.bytes_end)

    def take_buffer(self, frame: StoredFrame) -> None:
        """Append ``frame``'s payloads not yet buffered, leased or acknowledged."""
        self.frames.append(frame)
        self.fetched_seq = frame.seq
        self.adopt(frame)
        skip = self.buffer_end - frame.start
        if skip >= frame.end - frame.start:
            return
        payloads = frame.payloads()
        self.buffer.extend(payloads[max(0, skip) :])

    def give_back(self, first: int, position: int, head: list[bytes] | None = None) -> None:
        """Put ``head`` and the leases from ``first`` on back in front of the buffer."""
        returned = list(head or [])
        for later in self.leases[first:]:
            returned.extend(later.payloads)
        del self.leases[first:]
        self.buffer[0:0] = returned
        self.read_pos = position

    def reset_reader(self) -> None:
        """Forget what the reader fetched: the next read starts again at ``acked``."""
        self.frames = []
        self.fetched_seq = 0
        self.buffer = []
        self.leases = []
        self.read_pos = self.acked
