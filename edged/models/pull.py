"""Installing a prebuilt package: download, resume, verify, and only then install.

A package is fetched file by file as its manifest lists them, into
``<models_dir>/.partial/<name>``. An interrupted download resumes from what is there (HTTP
Range requests); a file that fails its hash throws the whole download away. Only a package
whose every file verifies is moved, by one rename, into ``<models_dir>/<name>``.
"""

from __future__ import annotations

import json
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path, PurePosixPath

from pydantic import ValidationError

from edged.models.catalog import find
from edged.models.manifest import MANIFEST_NAME, Manifest, read_manifest, verify_package, write_manifest

PARTIAL_DIR = ".partial"
RETRIES = 5
TIMEOUT_S = 30
_CHUNK = 1 << 16

Progress = Callable[[str], None]


class PullError(Exception):
    """The package could not be installed; the message says why and what to do."""

    def __init__(self, message: str, resumable: bool = False) -> None:
        super().__init__(message)
        self.resumable = resumable


@dataclass(frozen=True)
class PullResult:
    path: Path
    manifest: Manifest
    already_installed: bool


def pull(spec: str, models_dir: Path, progress: Progress = lambda _: None) -> PullResult:
    """Install the package ``spec`` names: a catalog name, an http(s) URL, hf://REPO or a directory."""
    source = _resolve(spec)
    if source.startswith("hf://"):
        return _pull_from_hub(source[len("hf://") :], models_dir, progress)
    fetch = _DirectoryFetcher(Path(source)) if Path(source).is_dir() else _HttpFetcher(source)
    manifest = _parse_manifest(fetch.manifest(), source)
    installed = models_dir / manifest.name
    if installed.is_dir() and _is_same(installed, manifest):
        return PullResult(installed, manifest, already_installed=True)
    staging = models_dir / PARTIAL_DIR / manifest.name
    staging.mkdir(parents=True, exist_ok=True)
    write_manifest(staging, manifest)
    total = len(manifest.files)
    try:
        for number, entry in enumerate(manifest.files, 1):
            destination = staging / _safe_relative(entry.path)
            destination.parent.mkdir(parents=True, exist_ok=True)
            progress(f"[{number}/{total}] {entry.path} ({entry.size / 1e6:.1f} MB)")
            fetch.file(entry.path, destination, entry.size, progress)
    except PullError as error:
        if not error.resumable:  # kept only when running the command again can finish it
            shutil.rmtree(staging)
            _remove_if_empty(staging.parent)
        raise
    return _install(staging, installed, manifest, progress)


def _resolve(spec: str) -> str:
    if spec.startswith(("http://", "https://", "hf://")) or Path(spec).is_dir():
        return spec
    entry = find(spec)
    if entry is None:
        raise PullError(
            f"{spec!r} is not a package in the catalog, a URL (http://, https://, hf://) or a "
            "package directory; `edged models list --catalog` shows the catalog"
        )
    if entry.url is None:
        raise PullError(
            f"no prebuilt download of {entry.name} is published: build it on a workstation with "
            f"`edged models build {entry.source} --out {entry.name} --precision {entry.precision} "
            f"--target {entry.target}`, then pull it from there (a directory or an http:// URL)"
        )
    return entry.url


def _parse_manifest(raw: bytes, source: str) -> Manifest:
    try:
        manifest = Manifest.model_validate(json.loads(raw))
    except (ValueError, ValidationError) as error:
        raise PullError(f"{source}: {MANIFEST_NAME} is not a valid package manifest: {str(error).splitlines()[0]}") from None
    _safe_relative(manifest.name)
    for entry in manifest.files:
        _safe_relative(entry.path)
    return manifest


def _safe_relative(path: str) -> PurePosixPath:
    """A manifest's path, refused if it could write outside the package directory."""
    relative = PurePosixPath(path)
    if relative.is_absolute() or ".." in relative.parts or not relative.parts:
        raise PullError(f"manifest path {path!r} points outside the package: refusing it")
    return relative


def _is_same(installed: Path, manifest: Manifest) -> bool:
    try:
        return read_manifest(installed).fingerprint == manifest.fingerprint and not verify_package(installed)
    except Exception:
        return False


def _install(staging: Path, installed: Path, manifest: Manifest, progress: Progress) -> PullResult:
    problems = verify_package(staging)
    if problems:
        shutil.rmtree(staging)
        _remove_if_empty(staging.parent)
        raise PullError(
            "the download does not match its manifest, so nothing was installed: " + "; ".join(problems)
        )
    replaced = installed.with_name(f".replaced-{installed.name}")
    if installed.exists():
        installed.rename(replaced)
    staging.rename(installed)
    if replaced.exists():
        shutil.rmtree(replaced)
    _remove_if_empty(staging.parent)
    progress(f"installed {manifest.name} in {installed}")
    return PullResult(installed, manifest, already_installed=False)


def _remove_if_empty(directory: Path) -> None:
    try:
        directory.rmdir()
    except OSError:
        pass


def _pull_from_hub(repo: str, models_dir: Path, progress: Progress) -> PullResult:
    from huggingface_hub import snapshot_download

    repo_id, _, revision = repo.partition("@")
    name = repo_id.rsplit("/", 1)[-1]
    staging = models_dir / PARTIAL_DIR / name
    progress(f"downloading {repo_id} from the Hugging Face hub (resumable)")
    snapshot_download(repo_id, revision=revision or None, local_dir=staging)
    manifest = read_manifest(staging)
    return _install(staging, models_dir / manifest.name, manifest, progress)


class _DirectoryFetcher:
    """A package directory on this machine (a USB stick, an NFS mount)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def manifest(self) -> bytes:
        path = self.root / MANIFEST_NAME
        if not path.is_file():
            raise PullError(f"{self.root}: no {MANIFEST_NAME}: not an edged model package")
        return path.read_bytes()

    def file(self, relative: str, destination: Path, size: int, progress: Progress) -> None:
        shutil.copyfile(self.root / relative, destination)


class _HttpFetcher:
    """A package served over HTTP(S): ``<url>/edged-model.json`` and each file beside it."""

    def __init__(self, url: str) -> None:
        self.base = url.rstrip("/")

    def manifest(self) -> bytes:
        url = f"{self.base}/{MANIFEST_NAME}"
        try:
            with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
                return response.read()
        except (urllib.error.URLError, HTTPException, OSError) as error:
            raise PullError(f"{url}: {_reason(error)}") from None

    def file(self, relative: str, destination: Path, size: int, progress: Progress) -> None:
        url = f"{self.base}/{relative}"
        for attempt in range(RETRIES + 1):
            have = destination.stat().st_size if destination.exists() else 0
            if have > size:
                destination.unlink()
                have = 0
            if have == size:
                return
            try:
                self._download(url, destination, have, progress)
            except (urllib.error.URLError, HTTPException, OSError) as error:
                if isinstance(error, urllib.error.HTTPError) and error.code < 500:
                    raise PullError(f"{url}: {_reason(error)}") from None
                if attempt == RETRIES:
                    raise PullError(
                        f"{url}: {_reason(error)} after {RETRIES + 1} attempts; run the same "
                        "command again to resume from what was downloaded",
                        resumable=True,
                    ) from None
                progress(f"    connection lost at {destination.stat().st_size if destination.exists() else 0} "
                         f"bytes ({_reason(error)}); resuming")
                time.sleep(min(0.5 * 2**attempt, 8))

    def _download(self, url: str, destination: Path, offset: int, progress: Progress) -> None:
        request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            resuming = offset > 0 and response.status == 206
            with destination.open("ab" if resuming else "wb") as file:
                while chunk := response.read(_CHUNK):
                    file.write(chunk)
            expected = response.headers.get("Content-Length")
            received = destination.stat().st_size - (offset if resuming else 0)
            if expected is not None and received < int(expected):
                raise HTTPException(f"connection closed after {received} of {expected} bytes")


def _reason(error: BaseException) -> str:
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        return str(error.reason)
    return str(error) or type(error).__name__
