"""A bundle's files on disk: check a directory, or unpack a .ogb zip, against its manifest.

Both refuse, naming the file: a symlink or any non-regular file, a path that escapes
the bundle (zip-slip, absolute paths), a file the manifest does not list, a listed
file that is missing, and a size or sha256 that differs from the manifest's.
A zip is checked entry by entry before anything is written, then unpacked into a
fresh private directory while each file is hashed.
"""
from __future__ import annotations

import hashlib
import os
import stat
import zipfile
import zlib
from pathlib import Path

from omnigraph.errors import BundleError
from omnigraph.runtime.bundle_manifest import (
    MANIFEST_NAME, MAX_MANIFEST_BYTES, Manifest, check_relpath, parse_manifest,
)

_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


# directories ------------------------------------------------------------------------------
def read_directory(root: Path) -> Manifest:
    """The manifest of the bundle directory `root`, after checking every file in it."""
    manifest_path = root / MANIFEST_NAME
    try:
        info = os.lstat(manifest_path)
    except FileNotFoundError:
        raise BundleError(f"{root}: not a bundle (no {MANIFEST_NAME})") from None
    if not stat.S_ISREG(info.st_mode):
        raise BundleError(f"{MANIFEST_NAME}: not a regular file (a symlink?)")
    if info.st_size > MAX_MANIFEST_BYTES:
        raise BundleError(f"{MANIFEST_NAME}: {info.st_size} bytes is too large for a manifest")
    manifest = parse_manifest(manifest_path.read_bytes())
    _check_tree(root, manifest)
    for rel, entry in manifest.files.items():
        path = root / rel
        try:
            size = os.lstat(path).st_size
        except FileNotFoundError:
            raise BundleError(f"{rel}: missing (listed in {MANIFEST_NAME})") from None
        _check_size(rel, size, entry.size)
        _check_hash(rel, sha256_file(path), entry.sha256)
    return manifest


def _check_tree(root: Path, manifest: Manifest) -> None:
    """Every entry under `root` is a directory or a listed regular file; nothing is a link."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath, name)
            rel = path.relative_to(root).as_posix()
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                raise BundleError(f"{rel}: a symbolic link; a bundle holds plain files only")
            if stat.S_ISDIR(mode) or rel == MANIFEST_NAME:
                continue
            if not stat.S_ISREG(mode):
                raise BundleError(f"{rel}: not a regular file")
            if rel not in manifest.files:
                raise BundleError(f"{rel}: not listed in {MANIFEST_NAME} (added after the bundle was built?)")


def _check_size(rel: str, actual: int, expected: int) -> None:
    if actual != expected:
        raise BundleError(f"{rel}: {actual} bytes, but {MANIFEST_NAME} says {expected}: "
                          f"the file was changed after the bundle was built")


def _check_hash(rel: str, actual: str, expected: str) -> None:
    if actual != expected:
        raise BundleError(f"{rel}: sha256 mismatch (expected {expected[:16]}…, found {actual[:16]}…): "
                          f"the file was changed after the bundle was built")


# zip archives -----------------------------------------------------------------------------
def unpack_archive(archive: Path, dest: Path) -> Manifest:
    """Check the .ogb zip `archive` and unpack it into the empty private directory `dest`."""
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise BundleError(f"{archive}: not a bundle archive ({exc})") from None
    with zf:
        members = _check_members(zf, archive.name)
        if MANIFEST_NAME not in members:
            raise BundleError(f"{archive.name}: not a bundle (no {MANIFEST_NAME})")
        info = members[MANIFEST_NAME]
        if info.file_size > MAX_MANIFEST_BYTES:
            raise BundleError(f"{MANIFEST_NAME}: {info.file_size} bytes is too large for a manifest")
        raw_manifest = zf.read(info)
        manifest = parse_manifest(raw_manifest)
        for name in members:
            if name != MANIFEST_NAME and name not in manifest.files:
                raise BundleError(f"{archive.name}: entry '{name}' is not listed in {MANIFEST_NAME}")
        for rel, entry in manifest.files.items():
            if rel not in members:
                raise BundleError(f"{rel}: missing from {archive.name} (listed in {MANIFEST_NAME})")
            _check_size(rel, members[rel].file_size, entry.size)
        (dest / MANIFEST_NAME).write_bytes(raw_manifest)
        for rel, entry in manifest.files.items():
            _extract(zf, members[rel], dest, rel, entry.size, entry.sha256)
    return manifest


def _check_members(zf: zipfile.ZipFile, archive: str) -> dict[str, zipfile.ZipInfo]:
    """The archive's file entries by name, once every entry's name and type are checked."""
    members: dict[str, zipfile.ZipInfo] = {}
    for info in zf.infolist():
        name = info.filename
        mode = info.external_attr >> 16  # the Unix mode, where the archiver recorded one
        if stat.S_ISLNK(mode):
            raise BundleError(f"{archive}: entry '{name}' is a symbolic link; a bundle holds plain files only")
        if name.startswith("/") or "\\" in name or (len(name) > 1 and name[1] == ":"):
            raise BundleError(f"{archive}: entry '{name}' is an absolute path; refusing to unpack it")
        if ".." in name.split("/"):
            raise BundleError(f"{archive}: entry '{name}' escapes the bundle (zip-slip); refusing to unpack it")
        if info.is_dir():
            continue
        if mode and not stat.S_ISREG(mode):
            raise BundleError(f"{archive}: entry '{name}' is not a regular file")
        check_relpath(name, where=archive)
        if name in members:
            raise BundleError(f"{archive}: entry '{name}' appears twice")
        members[name] = info
    return members


def _extract(zf: zipfile.ZipFile, info: zipfile.ZipInfo, dest: Path, rel: str, size: int, sha256: str) -> None:
    target = dest.joinpath(*rel.split("/"))
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    written = 0
    try:
        with zf.open(info) as src, target.open("xb") as dst:  # "x": never through an existing file or link
            while block := src.read(_CHUNK):
                written += len(block)
                if written > size:  # more than the manifest said: stop before filling the disk
                    raise BundleError(f"{rel}: larger than the {size} bytes {MANIFEST_NAME} says")
                digest.update(block)
                dst.write(block)
    except (zipfile.BadZipFile, RuntimeError, EOFError, zlib.error) as exc:  # bad CRC, encrypted, truncated
        raise BundleError(f"{rel}: a corrupt entry in the archive ({exc})") from None
    _check_size(rel, written, size)
    _check_hash(rel, digest.hexdigest(), sha256)


def written_by_omnigraph(path: Path) -> bool:
    """Whether `path` is a bundle (directory or .ogb) whose manifest says omnigraph wrote it:
    the only thing `compile --emit bundle --force` may replace. Reads the manifest alone."""
    try:
        if path.is_dir() and not path.is_symlink():
            manifest = path / MANIFEST_NAME
            if manifest.is_symlink() or not manifest.is_file() or manifest.stat().st_size > MAX_MANIFEST_BYTES:
                return False
            parse_manifest(manifest.read_bytes())
            return True
        if path.is_file() and not path.is_symlink() and zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                info = zf.getinfo(MANIFEST_NAME)
                if info.file_size > MAX_MANIFEST_BYTES:
                    return False
                parse_manifest(zf.read(info))
            return True
    except (BundleError, KeyError, OSError, zipfile.BadZipFile):
        return False
    return False
