"""What a person at a terminal sees: which command holds it."""

from __future__ import annotations

import os
import time


def wait_for_foreground(argv: list[str]) -> None:
    """Wait (up to 20 s) until a process runs ``argv`` in the foreground of its terminal."""
    want = ("\0".join(argv) + "\0").encode()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if f.read() != want:
                        continue
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rpartition(")")[2].split()
            except OSError:
                continue
            if fields[2] == fields[5]:  # its process group is the terminal's foreground group
                return
        time.sleep(0.05)
    raise AssertionError(f"{argv} never ran in the foreground")
