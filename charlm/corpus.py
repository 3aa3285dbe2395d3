"""Where training text comes from: files, folders, or the built-in default corpus.

Text is read in chunks through an incremental decoder, so a corpus of any size is never
held in memory whole, and a bad byte is reported with its file and byte offset. The
default corpus is the Python standard library of the running interpreter: about 12 MB of
real code on every machine, rich in brackets, quotes and indentation.

A folder is read recursively, each real file once: a link to a file already read, or a
second path to it, is skipped, and so are hidden and binary files; `Corpus.skipped` says
what was left out and why, so a command can tell its user. Anything wrong with the text the
user named (missing, empty, binary, undecodable) is a UsageError: bad input exits 2.
"""

from __future__ import annotations

import codecs
import os
import sysconfig
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .errors import CharlmError, UsageError

CHUNK_BYTES = 4 << 20
SNIFF_BYTES = 8192
_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
# Why a file of a folder is not read: one, many.
_SKIP_REASONS = {
    "link": ("link to a file already read", "links to files already read"),
    "twice": ("file named twice", "files named twice"),
    "hidden": ("hidden file", "hidden files"),
    "hidden folder": ("hidden folder", "hidden folders"),
    "binary": ("binary file", "binary files"),
    "special": ("broken link or special file", "broken links or special files"),
}


@dataclass(frozen=True)
class Corpus:
    """An ordered list of text files, read as one text (files joined by newlines)."""

    files: tuple[Path, ...]
    encoding: str = "utf-8"
    errors: str = "strict"  # or "replace": undecodable bytes become U+FFFD
    # (path, why) for each file of the folders given that is not read: hidden, binary, or a
    # second path to a file already read (a symbolic link, or a file named twice); why is a
    # key of _SKIP_REASONS
    skipped: tuple[tuple[Path, str], ...] = field(default=(), compare=False)

    @property
    def total_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.files)

    @property
    def name(self) -> str:
        return self.files[0].stem if len(self.files) == 1 else f"{self.files[0].parent.name or 'corpus'}"

    def chunks(self, chunk_bytes: int | None = None) -> Iterator[str]:
        """Yield the text in pieces of at most `chunk_bytes` bytes (default CHUNK_BYTES) of the
        file; each file ends with a newline before the next begins."""
        for path in self.files:
            yield from _read_file(path, self.encoding, self.errors, chunk_bytes or CHUNK_BYTES)

    def read(self) -> str:
        return "".join(self.chunks())

    def skipped_summary(self) -> str | None:
        """One line on what was skipped, e.g. `skipped 2 links to files already read (a.txt,
        b.txt); 1 binary file (photo.jpg)`; None when nothing was."""
        if not self.skipped:
            return None
        by_reason: dict[str, list[Path]] = {}
        for path, why in self.skipped:
            by_reason.setdefault(why, []).append(path)
        parts = []
        for why, paths in by_reason.items():
            names = ", ".join(p.name for p in paths[:3]) + (", ..." if len(paths) > 3 else "")
            one, many = _SKIP_REASONS[why]
            parts.append(f"{len(paths)} {one if len(paths) == 1 else many} ({names})")
        return "skipped " + "; ".join(parts)


def default_corpus_files() -> list[Path]:
    """The standard library's .py files in a fixed order, without tests or installed packages."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        files.extend(Path(dirpath) / f for f in sorted(filenames) if f.endswith(".py"))
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def open_corpus(paths: Sequence[Path | str], encoding: str = "utf-8", errors: str = "strict",
                purpose: str = "train on") -> Corpus:
    """Resolve files and folders (recursively) into a Corpus; no paths means the default corpus.

    `purpose` finishes the message for a corpus with no text: "is empty, nothing to <purpose>"."""
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise UsageError(f"--encoding: unknown encoding {encoding!r}") from None
    if errors not in ("strict", "replace"):
        raise UsageError(f"--errors: expected 'strict' or 'replace', got {errors!r}")
    if not paths:
        files = default_corpus_files()
        if not files:
            raise CharlmError("no default corpus: the Python standard library sources were not found")
        return Corpus(tuple(files), "utf-8", "replace")
    files: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    seen: dict[Path, Path] = {}  # real path -> the path it is read under

    def add(path: Path) -> None:
        real = path.resolve()
        if real in seen:
            earlier = seen[real]
            if earlier.is_symlink() and not path.is_symlink():  # read the file under its own name
                files[files.index(earlier)] = seen[real] = path
                path = earlier
            skipped.append((path, "link" if path.is_symlink() else "twice"))
        else:
            seen[real] = path
            files.append(path)

    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found, left_out = _walk_text_files(path, sniff=not _wide(encoding))
            skipped.extend(left_out)
            if not found:
                raise UsageError(f"{path}: folder holds no text files")
            for file in found:
                add(file)
        elif path.is_file():
            if not _wide(encoding):
                _check_text_file(path)
            add(path)
        else:
            raise UsageError(f"{path}: no such file or folder")
    if all(f.stat().st_size == 0 for f in files):
        raise UsageError(f"{files[0] if len(files) == 1 else 'corpus'}: is empty, nothing to {purpose}")
    return Corpus(tuple(files), encoding, errors, tuple(skipped))


def _wide(encoding: str) -> bool:
    """UTF-16 and UTF-32 text is full of NUL bytes, so the binary sniff does not apply."""
    return codecs.lookup(encoding).name.startswith(("utf-16", "utf-32"))


def _walk_text_files(folder: Path, sniff: bool) -> tuple[list[Path], list[tuple[Path, str]]]:
    """The text files under `folder` in a fixed order, following links to folders (each real
    folder once, so a link loop ends), and the (path, why) of the files left out."""
    found: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    visited: set[Path] = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = Path(dirpath).resolve()
        if real in visited:  # reached again through a link
            dirnames[:] = []
            continue
        visited.add(real)
        hidden = [d for d in dirnames if d.startswith(".")]
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        skipped.extend((Path(dirpath) / d, "hidden folder") for d in sorted(hidden))
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if name.startswith("."):
                skipped.append((path, "hidden"))
            elif not path.is_file():
                skipped.append((path, "special"))
            elif sniff and _nul_offset(path) is not None:
                skipped.append((path, "binary"))
            else:
                found.append(path)
    return found, skipped


def _nul_offset(path: Path) -> int | None:
    try:
        with open(path, "rb") as f:
            head = f.read(SNIFF_BYTES)
    except OSError as e:
        raise UsageError(f"{path}: cannot read: {e.strerror}") from None
    at = head.find(b"\x00")
    return None if at < 0 else at


def _check_text_file(path: Path) -> None:
    at = _nul_offset(path)
    if at is not None:
        raise UsageError(f"{path}: looks like a binary file (NUL byte at offset {at}), not text")


def _read_file(path: Path, encoding: str, errors: str, chunk_bytes: int) -> Iterator[str]:
    decoder = codecs.getincrementaldecoder(encoding)(errors=errors)
    offset = 0
    last = ""
    try:
        f = open(path, "rb")
    except OSError as e:
        raise UsageError(f"{path}: cannot read: {e.strerror}") from None
    with f:
        while True:
            data = f.read(chunk_bytes)
            final = not data
            pending = len(decoder.getstate()[0])
            try:
                text = decoder.decode(data, final=final)
            except UnicodeDecodeError as e:
                at = offset - pending + e.start
                raise UsageError(
                    f"{path}: byte 0x{e.object[e.start]:02x} at offset {at} is not valid {encoding} "
                    f"(use --encoding, or --errors replace)"
                ) from None
            except UnicodeError as e:  # e.g. UTF-16 with no byte-order mark, whatever --errors says
                raise UsageError(f"{path}: cannot be read as {encoding}: {e} (use --encoding)") from None
            offset += len(data)
            if "\x00" in text:
                raise UsageError(f"{path}: holds NUL characters; it looks binary, not text")
            if text:
                last = text
                yield text
            if final:
                break
    if last and not last.endswith("\n"):
        yield "\n"
