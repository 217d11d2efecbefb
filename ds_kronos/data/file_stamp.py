"""What a verification verdict about a file is valid for, without reading it: its size, modification time and
inode change time. A copy (``cp -a``, ``rsync -a``, an object-store download) may keep the size and mtime but never
the change time, which no program can set: so a verdict copied along with the data is not trusted on the copy, and
each node's copy is checked once on that node."""

from __future__ import annotations

from pathlib import Path


def file_stamp(path: Path) -> list[int]:
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns]
