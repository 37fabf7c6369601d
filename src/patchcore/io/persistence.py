"""Saved-model directories: a versioned JSON manifest plus .npy arrays, written atomically, checksummed."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from patchcore.errors import ModelFileError
from patchcore.io.files import file_sha256, usual_permissions

FORMAT_NAME = "patchcore-model"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MANIFEST_CHECKSUM = "manifest_sha256"
VERSIONS = "versions"
FEEDBACK = "feedback"
DEFAULT_KEEP_VERSIONS = 5


def save_directory(path: str | Path, manifest: dict[str, Any], arrays: dict[str, np.ndarray],
                   change: dict[str, Any] | None = None, keep_versions: int = DEFAULT_KEEP_VERSIONS) -> Path:
    """Write `manifest` and `arrays` as a model directory at `path`, replacing the current model whole.

    Everything is written into a temporary sibling first and renamed into place, so a crash leaves
    the old model or the new one, never a mix. The model it replaces is kept as `versions/N/` (at
    most `keep_versions` of them, hard links: no copy of the arrays), the feedback folder is carried
    over, and the manifest records `version`, `parent_version` and `change` (what this save did).
    """
    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(path)
    if keep_versions < 0:
        raise ValueError(f"keep_versions must be >= 0, got {keep_versions}")
    previous = read_manifest(path) if (path / MANIFEST).is_file() else None
    parent = None if previous is None else int(previous.get("version", 1))
    manifest = {**manifest, "version": max([parent or 0, *kept_versions(path)]) + 1, "parent_version": parent,
                "change": change or {"action": "save"}, "saved": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        if previous is not None:
            _carry_history(path, staging, parent, keep_versions)
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


def _carry_history(path: Path, staging: Path, parent: int, keep_versions: int) -> None:
    """Into the staging folder: the kept versions, the model being replaced as `versions/<parent>`, and
    the feedback folder, all hard-linked (same file system: no bytes copied)."""
    for number in [parent, *kept_versions(path)][:keep_versions]:
        source = path if number == parent else path / VERSIONS / str(number)
        target = staging / VERSIONS / str(number)
        target.mkdir(parents=True, exist_ok=True)
        for file in source.iterdir():
            if file.is_file():
                _link_or_copy(file, target / file.name)
    if (path / FEEDBACK).is_dir():
        shutil.copytree(path / FEEDBACK, staging / FEEDBACK, copy_function=_link_or_copy)


def kept_versions(path: Path) -> list[int]:
    """The version numbers kept under `path/versions`, newest first."""
    folder = path / VERSIONS
    return sorted((int(v.name) for v in folder.iterdir() if v.name.isdigit()), reverse=True) if folder.is_dir() else []


def feedback_files(path: Path) -> list[Path]:
    """The images waiting in a model directory's feedback folder (not the hidden files of a write in progress)."""
    folder = path / FEEDBACK
    return sorted(f for f in folder.iterdir() if f.is_file() and not f.name.startswith(".")) if folder.is_dir() else []


def _link_or_copy(source: str | Path, target: str | Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def read_manifest(path: str | Path) -> dict[str, Any]:
    """A model directory's manifest as JSON, unverified (listing, version checks): `load_directory` verifies."""
    manifest_path = Path(path) / MANIFEST
    try:
        return json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ModelFileError(f"{manifest_path}: unreadable manifest ({error})") from error


def list_versions(path: str | Path) -> list[dict[str, Any]]:
    """The current version and the kept ones, newest first: version, parent, change, created, package version."""
    path = Path(path)
    if not (path / MANIFEST).is_file():
        raise ModelFileError(f"{path}: not a saved model directory")
    folders = [path, *(path / VERSIONS / str(number) for number in kept_versions(path))]
    listed = []
    for folder in folders:
        manifest = read_manifest(folder)
        listed.append({"version": manifest.get("version", 1), "current": folder == path,
                       "parent_version": manifest.get("parent_version"), "change": manifest.get("change"),
                       "created": manifest.get("created"), "saved": manifest.get("saved", manifest.get("created")),
                       "package_version": manifest.get("package_version"),
                       "n_train_images": manifest.get("n_train_images")})
    return listed


def rollback(path: str | Path, version: int, keep_versions: int = DEFAULT_KEEP_VERSIONS) -> int:
    """Make kept version `version` the current model again (verified first; saved as a new version, so the
    replaced one is kept too). Returns the new version number."""
    path = Path(path)
    source = path / VERSIONS / str(version)
    if not source.is_dir():
        available = ", ".join(str(v["version"]) for v in list_versions(path) if not v["current"]) or "none"
        raise ModelFileError(f"{path}: no kept version {version} (kept: {available})")
    manifest, arrays = load_directory(source)
    for key in ("format", "format_version", "arrays", "version", "parent_version", "change"):
        manifest.pop(key, None)
    save_directory(path, manifest, arrays, change={"action": "rollback", "restored_version": version},
                   keep_versions=keep_versions)
    return read_manifest(path)["version"]


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
