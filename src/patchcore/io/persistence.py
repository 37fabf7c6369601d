"""Saved-model directories: a versioned JSON manifest plus .npy arrays, written atomically, checksummed."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from patchcore.errors import ModelFileError

FORMAT_NAME = "patchcore-model"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MANIFEST_CHECKSUM = "manifest_sha256"


def save_directory(path: str | Path, manifest: dict[str, Any], arrays: dict[str, np.ndarray]) -> Path:
    """Write `manifest` and `arrays` as a model directory at `path`, replacing any previous one whole.

    Everything is written into a temporary sibling first and renamed into place, so a crash leaves
    the old model or the new one, never a mix.
    """
    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(path)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        files = {}
        for name, array in arrays.items():
            filename = f"{name}.npy"
            with open(staging / filename, "wb") as handle:
                np.save(handle, np.ascontiguousarray(array), allow_pickle=False)
                handle.flush()
                os.fsync(handle.fileno())
            files[name] = {"file": filename, "sha256": file_sha256(staging / filename),
                           "shape": list(array.shape), "dtype": str(array.dtype)}
        document = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **manifest, "arrays": files}
        document[MANIFEST_CHECKSUM] = manifest_sha256(document)
        with open(staging / MANIFEST, "w", encoding="utf-8") as handle:
            json.dump(document, handle, indent=2, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        usual_permissions(staging)
        _replace_directory(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return path


def remove_leftovers(path: Path) -> None:
    """Delete what a save of `path` killed mid-way left beside it (staging and retired copies).

    One process saves a given model directory at a time; a retired copy is only deleted while the
    model itself is in place, so a crash between the two renames of a save never loses both.
    """
    for leftover in path.parent.glob(f".{path.name}.tmp-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    if (path / MANIFEST).is_file():
        for leftover in path.parent.glob(f".{path.name}.old-*"):
            shutil.rmtree(leftover, ignore_errors=True)


def _replace_directory(staging: Path, path: Path) -> None:
    if path.exists() and not (path / MANIFEST).is_file():
        raise ModelFileError(f"{path}: exists and is not a model directory; refusing to replace it")
    if not path.exists():
        os.replace(staging, path)
        return
    retired = path.with_name(f".{path.name}.old-{os.getpid()}")
    os.replace(path, retired)
    os.replace(staging, path)
    shutil.rmtree(retired, ignore_errors=True)


def load_directory(path: str | Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read and verify a model directory: format, version, every array's presence and checksum."""
    path = Path(path)
    manifest_path = path / MANIFEST
    if not path.is_dir():
        raise ModelFileError(f"{path}: model directory not found")
    if not manifest_path.is_file():
        raise ModelFileError(f"{manifest_path}: missing; {path} is not a saved PatchCore model")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ModelFileError(f"{manifest_path}: corrupt manifest ({error})") from error
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise ModelFileError(f"{manifest_path}: not a {FORMAT_NAME} manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(
            f"{manifest_path}: format version {manifest.get('format_version')!r}; this patchcore reads "
            f"version {FORMAT_VERSION}. Refit the model or use the patchcore release that wrote it"
        )
    recorded = manifest.pop(MANIFEST_CHECKSUM, None)
    if recorded is None:
        raise ModelFileError(f"{manifest_path}: no {MANIFEST_CHECKSUM}; the manifest was modified or not written by patchcore")
    if recorded != manifest_sha256(manifest):
        raise ModelFileError(f"{manifest_path}: checksum mismatch; the manifest is corrupt or was modified")
    arrays = {}
    if not isinstance(manifest.get("arrays"), dict):
        raise ModelFileError(f"{manifest_path}: lists no arrays")
    for name, entry in manifest["arrays"].items():
        file = path / Path(entry["file"]).name
        if not file.is_file():
            raise ModelFileError(f"{file}: missing from the model directory")
        if file_sha256(file) != entry["sha256"]:
            raise ModelFileError(f"{file}: checksum mismatch; the file is corrupt or was modified")
        try:
            array = np.load(file, allow_pickle=False)
        except (ValueError, OSError) as error:
            raise ModelFileError(f"{file}: unreadable array ({error})") from error
        if list(array.shape) != entry["shape"] or str(array.dtype) != entry["dtype"]:
            raise ModelFileError(f"{file}: shape/dtype differ from the manifest")
        arrays[name] = array
    return manifest, arrays


def manifest_sha256(document: dict[str, Any]) -> str:
    """Checksum of a manifest's content, independent of its formatting (keys sorted, compact)."""
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


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
