"""Small file helpers: atomic writes, checksums, the permissions a plain open() gives, unique output names."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def usual_permissions(path: Path) -> None:
    """Give a file or folder made by `tempfile` (owner-only) the permissions a plain open() would."""
    umask = os.umask(0o022)
    os.umask(umask)
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write a file via a temporary sibling and a rename: readers see the old file or the new, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        usual_permissions(Path(temporary))
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def output_names(files: Sequence[Path]) -> list[str]:
    """A unique name per input for its outputs: the path relative to the inputs' common folder, '/' -> '__',
    without the extension unless another input differs only by it (x.png, x.tif -> x_png, x_tif); any name
    still taken gets _2, _3, ... (so no heatmap or scores row overwrites another's)."""
    absolute = [file.absolute() for file in files]
    common = Path(os.path.commonpath([p.parent for p in absolute])) if absolute else Path()
    relative = [str(p.relative_to(common)).replace(os.sep, "__") for p in absolute]
    stems = [str(Path(name).with_suffix("")) for name in relative]
    suffixes = [Path(name).suffix.lstrip(".").lower() for name in relative]
    kinds: dict[str, set[str]] = {}
    for stem, suffix in zip(stems, suffixes):
        kinds.setdefault(stem.lower(), set()).add(suffix)
    names = [stem if len(kinds[stem.lower()]) == 1 else f"{stem}_{suffix}" for stem, suffix in zip(stems, suffixes)]
    taken: set[str] = set()
    unique = []
    for name in names:
        candidate, number = name, 1
        while candidate.lower() in taken:  # case-insensitive: X.png and x.png collide on macOS and Windows
            number += 1
            candidate = f"{name}_{number}"
        taken.add(candidate.lower())
        unique.append(candidate)
    return unique
