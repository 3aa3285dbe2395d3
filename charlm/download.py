"""The corpora the docs use, fetched from their pinned sources and checked against a SHA-256.

Each corpus is one or more files at a fixed commit of a public GitHub repository, read from
raw.githubusercontent.com (or a mirror of it: `--base-url`, or the CHARLM_DOWNLOAD_BASE
environment variable, which is how the tests serve a local copy). The text is assembled in
memory (a few megabytes), its SHA-256 compared with the one recorded here, and only then
written: to a temporary file beside the destination, renamed into place, so an interrupted
or corrupted download never leaves a file that looks finished. Every failure (offline, a
file gone from its source, a wrong checksum) is one line naming what went wrong.

- tinyshakespeare: karpathy/char-rnn's data/tinyshakespeare/input.txt, byte for byte.
- korean: 50 Korean short stories and novels of the 1920s to 1940s from storidient/KoCoNovel
  (CC BY-SA 4.0; the stories themselves are in the public domain). The repository later
  deleted the folder that holds the text, so it is rebuilt from the commit before: the
  `text` field of every record of the 50 `text/*.jsonl` files, novels in order 1..50,
  records joined by newlines, novels by a blank line, CRLF made LF.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import CharlmError, UsageError

DEFAULT_BASE = "https://raw.githubusercontent.com"
TIMEOUT = 30  # seconds without a byte before a download is given up


@dataclass(frozen=True)
class Source:
    name: str
    sha256: str
    size: int  # bytes of the finished text
    paths: tuple[str, ...]  # under the base URL: owner/repo/commit/path
    build: Callable[[list[bytes]], bytes]  # the fetched files -> the corpus
    about: str

    @property
    def filename(self) -> str:
        return f"{self.name}.txt"


def _whole_file(files: list[bytes]) -> bytes:
    return files[0]


def _korean_text(files: list[bytes]) -> bytes:
    """The recipe of shared/corpora/SOURCES.md: each novel's records' `text`, one per line;
    novels apart by a blank line; LF line ends."""
    novels = []
    for data in files:
        lines = data.decode("utf-8").splitlines()
        novels.append("\n".join(json.loads(line)["text"] for line in lines if line.strip()))
    return ("\n\n".join(novels) + "\n").replace("\r\n", "\n").encode("utf-8")


_KOCONOVEL = "storidient/KoCoNovel/100ff95b9d5e728805ed66786053babb6d268d4b/text/"
_KOREAN_FILES = (
    "1_Ms._B_and_Love_Letters", "2_A_Sweetheart", "3_A_Fictional_Rogue_Girl", "4_Wedding", "5_Kyung-hee",
    "6_A_Strange_Monk", "7_The_Woman", "8_Dark_Moon", "9_A_Field_of_Beans_Where_Gold_is_Buried", "10_Rich_Mine",
    "11_The_Daedong_River_Whispers", "12_City_and_Ghost", "13_Ddaraji", "14_Manmubang", "15_When_the_Sun_Rises",
    "16_When_Buckwheat_Flowers_Blossom", "17_Good_Sentences", "18_The_Unknown_Woman", "19_The_Mother_and_the_Son",
    "20_Anemone", "21_The_Death_of_Park_Chum-ji", "22_The_Mute_Samurai", "23_Spring_Spring",
    "24_The_Father_and_the_Son", "25_Fire", "26_A_Poverty-Stricken_Wife", "27_The_Son-in-Law", "28_A_Boy_s_Woes",
    "29_The_Calf", "30_Purehearted_Prince_Hodong", "31_Society_Authorizing_Alcohol", "32_The_Newspaper_and_the_Cage",
    "33_Miracles_of_Coincidence", "34_A_Lucky_Day", "35_Enemies_to_Benefactors", "36_Presence", "37_Girl_of_Doubt",
    "38_Eisig_and_Doseung", "39_The_Rose_is_Diseased", "40_Passionate_Princess_Nangnang", "41_Jeong-hee",
    "42_Youth", "43_The_Bachelor_and_the_Blind_Eel", "44_Escape_Chronicles", "45_Break_at_Dawn", "46_Sunrise",
    "47_Floral_Tribute", "48_The_Bull_and_the_Goblin", "49_Later_Baekje_Chronicles", "50_Baptism_of_Soil",
)

CORPORA = {
    "tinyshakespeare": Source(
        "tinyshakespeare", "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed", 1_115_394,
        ("karpathy/char-rnn/6f9487a6fe5b420b7ca9afb0d7c078e37c1d1b4e/data/tinyshakespeare/input.txt",),
        _whole_file, "Shakespeare's plays, 1.1 MB, 65 characters (public domain)"),
    "korean": Source(
        "korean", "cc20ea58a25842eed3f1e172c7571fc39004e72f9711bd3260a3b3ad6b6c696f", 1_694_968,
        tuple(f"{_KOCONOVEL}{name}.jsonl" for name in _KOREAN_FILES),
        _korean_text, "50 Korean stories of 1920-1940, 1.7 MB (KoCoNovel, CC BY-SA 4.0)"),
}


def fetch_corpus(name: str, out: Path | None = None, base_url: str | None = None,
                 on_message: Callable[[str], None] | None = None) -> Path:
    """Download corpus `name` to `out` (default: <name>.txt here), checked; returns the path."""
    source = CORPORA[name]
    say = on_message or (lambda text: None)
    out = Path(out) if out is not None else Path(source.filename)
    if out.is_dir():
        out = out / source.filename
    if out.exists():
        if _sha256(out.read_bytes()) == source.sha256:
            say(f"{out} is already there, checksum right")
            return out
        raise UsageError(f"--out {out}: a different file is already there; remove it or choose another --out")
    base = (base_url or DEFAULT_BASE).rstrip("/")
    say(f"downloading {name}: {source.about}, from {base}/{source.paths[0].split('/')[0]}/...")
    files = [_get(f"{base}/{path}") for path in source.paths]
    text = source.build(files)
    digest = _sha256(text)
    if digest != source.sha256:
        raise CharlmError(f"{name}: checksum mismatch: the download's SHA-256 is {digest[:16]}..., not "
                          f"{source.sha256[:16]}... ({len(text):,} bytes, {source.size:,} expected); "
                          "nothing written")
    _write_atomically(out, text)
    say(f"wrote {out} ({len(text):,} bytes, SHA-256 checked)")
    return out


def _get(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
            return response.read()
    except urllib.error.HTTPError as e:
        raise CharlmError(f"cannot download {url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", None) or e
        raise CharlmError(f"cannot download {url}: {reason} (offline? a mirror can be given with "
                          "--base-url or CHARLM_DOWNLOAD_BASE)") from None


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_atomically(out: Path, data: bytes) -> None:
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    except OSError as e:
        raise CharlmError(f"--out {out}: cannot write there: {e.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise CharlmError(f"--out {out}: cannot write there: {e.strerror}") from None
        raise
