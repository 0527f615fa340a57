"""The catalogue of public files (``sources.yaml``): URL, size, checksum and landing path."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote

import yaml

from qure.errors import ConfigError

GROUPS = ("annotations", "image_urls", "images", "weights")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_MD5 = re.compile(r"^[0-9a-f]{32}$")
_FIELDS = {"path", "group", "url", "mirror", "size", "sha256", "md5", "verified",
           "extract_to", "note"}


@dataclass(frozen=True)
class SourceFile:
    """One downloadable file and where it lands under its dataset root."""

    dataset: str
    path: str
    group: str
    url: str
    mirror: str
    size: int | None = None
    sha256: str | None = None
    md5: str | None = None
    verified: bool = False
    extract_to: str | None = None
    note: str | None = None
    substitute: str | None = None
    """Set when a substitutes file (:func:`apply_substitutes`) replaced the upstream pins:
    why, and the upstream size and digest the mirror's file does not have."""

    @property
    def pinned(self) -> bool:
        """True when a digest (sha256 or md5) is known."""
        return self.sha256 is not None or self.md5 is not None

    def dest(self, root: str | Path) -> Path:
        return Path(root).joinpath(*PurePosixPath(self.path).parts)

    def extract_dir(self, root: str | Path) -> Path | None:
        if self.extract_to is None:
            return None
        return Path(root).joinpath(*PurePosixPath(self.extract_to).parts)

    def resolve_url(self, base_url: str | None = None) -> str:
        """The upstream URL, or ``<base_url>/<mirror>`` when a mirror is given."""
        if not base_url:
            return self.url
        return base_url.rstrip("/") + "/" + quote(self.mirror)


@dataclass(frozen=True)
class DatasetSources:
    name: str
    default_root: str
    files: tuple[SourceFile, ...]
    upstream: str | None = None
    license: str | None = None

    def select(self, groups: tuple[str, ...] | list[str] | None = None,
               names: list[str] | None = None) -> list[SourceFile]:
        """Files of the given groups (all if None), optionally only the named paths."""
        chosen = [f for f in self.files if groups is None or f.group in groups]
        if names:
            known = {f.path: f for f in chosen} | {PurePosixPath(f.path).name: f for f in chosen}
            unknown = [n for n in names if n not in known]
            if unknown:
                raise ConfigError(f"{self.name}: unknown file(s) {', '.join(unknown)}; "
                                  f"expected one of {', '.join(sorted(known))}")
            chosen = list(dict.fromkeys(known[n] for n in names))
        return chosen


def _relative(value: Any, where: str, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: '{key}' must be a non-empty string")
    path = PurePosixPath(value)
    if path.is_absolute() or ".." in path.parts or "\\" in value:
        raise ConfigError(f"{where}: '{key}' must be a relative path inside the root, "
                          f"got {value!r}")
    return str(path)


def _parse_file(raw: Any, dataset: str, index: int, origin: str) -> SourceFile:
    where = f"{origin}: datasets.{dataset}.files[{index}]"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping")
    unknown = set(raw) - _FIELDS
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    for key in ("path", "group", "url", "mirror"):
        if key not in raw:
            raise ConfigError(f"{where}: missing '{key}'")
    if raw["group"] not in GROUPS:
        raise ConfigError(f"{where}: 'group' must be one of {', '.join(GROUPS)}, "
                          f"got {raw['group']!r}")
    url = raw["url"]
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ConfigError(f"{where}: 'url' must be an http(s) URL, got {url!r}")
    size = raw.get("size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        raise ConfigError(f"{where}: 'size' must be a non-negative integer or null")
    sha256, md5 = raw.get("sha256"), raw.get("md5")
    if sha256 is not None and not (isinstance(sha256, str) and _SHA256.match(sha256)):
        raise ConfigError(f"{where}: 'sha256' must be 64 lower-case hex digits or null")
    if md5 is not None and not (isinstance(md5, str) and _MD5.match(md5)):
        raise ConfigError(f"{where}: 'md5' must be 32 lower-case hex digits or null")
    verified = raw.get("verified", False)
    if not isinstance(verified, bool):
        raise ConfigError(f"{where}: 'verified' must be true or false")
    extract_to = raw.get("extract_to")
    return SourceFile(
        dataset=dataset,
        path=_relative(raw["path"], where, "path"),
        group=raw["group"],
        url=url,
        mirror=_relative(raw["mirror"], where, "mirror"),
        size=size,
        sha256=sha256,
        md5=md5,
        verified=verified,
        extract_to=None if extract_to is None else _relative(extract_to, where, "extract_to"),
        note=None if raw.get("note") is None else str(raw["note"]),
    )


def parse_sources(data: Any, origin: str = "sources.yaml") -> dict[str, DatasetSources]:
    """Validate a loaded catalogue; errors name the file and the entry."""
    if not isinstance(data, dict) or not isinstance(data.get("datasets"), dict):
        raise ConfigError(f"{origin}: expected a mapping with a 'datasets' mapping")
    if data.get("version") != 1:
        raise ConfigError(f"{origin}: unsupported 'version' {data.get('version')!r} "
                          "(expected 1)")
    out: dict[str, DatasetSources] = {}
    for name, block in data["datasets"].items():
        if not isinstance(block, dict) or not isinstance(block.get("files"), list):
            raise ConfigError(f"{origin}: datasets.{name} needs a 'files' list")
        files = tuple(_parse_file(raw, name, i, origin) for i, raw in enumerate(block["files"]))
        paths = [f.path for f in files]
        duplicates = sorted({p for p in paths if paths.count(p) > 1})
        if duplicates:
            raise ConfigError(f"{origin}: datasets.{name}: duplicate path(s) "
                              f"{', '.join(duplicates)}")
        out[name] = DatasetSources(
            name=name,
            default_root=_relative(block.get("default_root", name), f"{origin}: {name}",
                                   "default_root"),
            files=files,
            upstream=block.get("upstream"),
            license=block.get("license"),
        )
    return out


def load_sources(path: str | Path | None = None) -> dict[str, DatasetSources]:
    """The packaged catalogue, or the YAML file at ``path`` (same schema)."""
    if path is None:
        text = resources.files("qure.download").joinpath("sources.yaml").read_text("utf-8")
        origin = "qure/download/sources.yaml"
    else:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"{path}: sources file not found") from None
        origin = str(path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{origin}: not valid YAML: {err}") from err
    return parse_sources(data, origin)


def dataset_sources(name: str, path: str | Path | None = None,
                    substitutes: str | Path | None = None) -> DatasetSources:
    """One dataset's catalogue entries; ``substitutes``: see :func:`apply_substitutes`."""
    catalogue = load_sources(path)
    try:
        sources = catalogue[name]
    except KeyError:
        raise ConfigError(f"no sources for {name!r}; known: {', '.join(catalogue)}") from None
    if substitutes is not None:
        listed = load_substitutes(substitutes)
        unknown = sorted({d for d, _ in listed} - set(catalogue))
        if unknown:
            raise ConfigError(f"{substitutes}: files.{unknown[0]}: no such dataset in the "
                              f"catalogue (known: {', '.join(catalogue)})")
        sources = apply_substitutes(sources, listed, str(substitutes))
    return sources


# --- substitutes: a mirror whose files are not the upstream bytes -------------------------
#
# A mirror normally serves the upstream bytes, and the catalogue's pins apply unchanged.
# Where a mirror serves other bytes on purpose (the offline rehearsal's synthetic
# stand-ins), a substitutes file says so explicitly, file by file, with the reason and
# the exact size and sha256 of the mirror's file:
#
#   version: 1
#   reason: why these files differ from upstream (required)
#   files:
#     <dataset>:
#       <path in the catalogue>: {size: <bytes>, sha256: <64 hex>, reason: <optional>}
#
# Only the listed files change; each is then checked against its substitute pins (a
# sha256 always, so the check is never weaker than a digest check), and every manifest
# row of it records ``substitute`` with the upstream values it replaced. A listed path
# the catalogue does not have is an error, never ignored.

_SUBSTITUTE_FIELDS = {"size", "sha256", "reason"}


@dataclass(frozen=True)
class Substitute:
    size: int
    sha256: str
    reason: str


def parse_substitutes(data: Any, origin: str) -> dict[tuple[str, str], Substitute]:
    """Validate a loaded substitutes mapping; errors name the file and the entry."""
    if not isinstance(data, dict) or data.get("version") != 1:
        raise ConfigError(f"{origin}: expected a mapping with version: 1")
    unknown = set(data) - {"version", "reason", "files"}
    if unknown:
        raise ConfigError(f"{origin}: unknown key(s) {', '.join(sorted(unknown))}")
    reason = data.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        raise ConfigError(f"{origin}: 'reason' (why the mirror's files differ from upstream) "
                          "is required")
    files = data.get("files")
    if not isinstance(files, dict) or not files:
        raise ConfigError(f"{origin}: 'files' must map datasets to their substituted files")
    out: dict[tuple[str, str], Substitute] = {}
    for dataset, entries in files.items():
        if not isinstance(entries, dict):
            raise ConfigError(f"{origin}: files.{dataset}: expected a mapping of paths")
        for path, raw in entries.items():
            where = f"{origin}: files.{dataset}.{path}"
            if not isinstance(raw, dict) or set(raw) - _SUBSTITUTE_FIELDS:
                raise ConfigError(f"{where}: expected {{size, sha256, reason?}}")
            size, sha256 = raw.get("size"), raw.get("sha256")
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise ConfigError(f"{where}: 'size' must be a non-negative integer")
            if not (isinstance(sha256, str) and _SHA256.match(sha256)):
                raise ConfigError(f"{where}: 'sha256' must be 64 lower-case hex digits (a "
                                  "substitute is always pinned to the mirror's exact bytes)")
            out[(dataset, path)] = Substitute(size, sha256, str(raw.get("reason") or reason))
    return out


def load_substitutes(path: str | Path) -> dict[tuple[str, str], Substitute]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: substitutes file not found") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    return parse_substitutes(data, str(path))


def apply_substitutes(sources: DatasetSources,
                      substitutes: dict[tuple[str, str], Substitute],
                      origin: str = "substitutes") -> DatasetSources:
    """``sources`` with the pins of the substituted files replaced (and recorded);
    ``origin`` (the substitutes file) is named in errors."""
    known = {f.path for f in sources.files}
    unknown = sorted(p for d, p in substitutes if d == sources.name and p not in known)
    if unknown:
        raise ConfigError(f"{origin}: files.{sources.name}: no catalogue file(s) "
                          f"{', '.join(unknown)}")
    files = []
    for entry in sources.files:
        sub = substitutes.get((sources.name, entry.path))
        if sub is not None:
            upstream = (f"size {entry.size if entry.size is not None else 'unknown'}, "
                        + (f"sha256 {entry.sha256}" if entry.sha256 else
                           f"md5 {entry.md5}" if entry.md5 else "no digest"))
            entry = replace(entry, size=sub.size, sha256=sub.sha256, md5=None, verified=True,
                            substitute=f"{sub.reason} (upstream: {upstream})")
        files.append(entry)
    return replace(sources, files=tuple(files))
