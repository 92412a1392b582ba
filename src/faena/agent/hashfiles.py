"""``hashFiles(...)`` for workers whose workspace is on this machine."""

from __future__ import annotations

import hashlib
from pathlib import Path


def hash_files(root: Path, patterns: list[str]) -> str:
    """sha256 over the sha256 of every file matching the globs, in path order ('' if none).

    Patterns are relative to the workspace; ``**`` recurses. Files outside it never count.
    """
    base = root.resolve()
    found: set[Path] = set()
    for pattern in patterns:
        if not pattern or Path(pattern).is_absolute() or ".." in Path(pattern).parts:
            raise ValueError(f"hashFiles(): pattern {pattern!r} must stay inside the workspace")
        for path in base.glob(pattern):
            real = path.resolve()
            if real.is_file() and real.is_relative_to(base):
                found.add(real)
    if not found:
        return ""
    outer = hashlib.sha256()
    for path in sorted(found):
        outer.update(hashlib.sha256(path.read_bytes()).digest())
    return outer.hexdigest()
