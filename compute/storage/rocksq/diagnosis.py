"""Reading rocksq's error texts: damaged files, a full disk, or neither."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

# Free room under which a failed RocksDB call is put down to a full disk, not damage.
WRITE_ROOM = 1 << 20

# RocksDB's texts for damaged files. Its corruption statuses read "Corruption: ...",
# but the detail alone ("block checksum mismatch", "bad block contents", ...)
# is all some wrappers pass on, so those are matched too.
_CORRUPTION_RE = re.compile(
    r"corrupt|checksum mismatch|bad block|bad entry in block|bad table magic"
    r"|bad extended magic|magic number mismatch|truncated block|truncated (header|record)"
    r"|bad record length|file is too short|too short to be an sst|file too short"
    r"|internal key (length )?too small|bad writebatch",
    re.IGNORECASE,
)


def is_corruption(text: str) -> bool:
    """RocksDB errors that mean damaged files, not a busy or full disk."""
    return bool(_CORRUPTION_RE.search(text)) or (
        "IO error" in text and "No such file or directory" in text
    )


def is_no_space(text: str) -> bool:
    return "No space left" in text or "ENOSPC" in text


def disk_low(base_path: Path) -> bool:
    """True when ``base_path`` has too little room left for RocksDB's small writes.

    Called only after a failure: rocksq reports a failed read as "Failed
    to retrieve items" whatever the cause, and a read writes too (the
    label's new position), so on a full disk it fails as a damaged block
    does. Damage is concluded only while there is room.
    """
    try:
        return shutil.disk_usage(base_path).free < WRITE_ROOM
    except OSError:
        return True
