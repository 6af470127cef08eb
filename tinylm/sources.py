"""Where the text comes from: a Hub dataset, a local Hub-layout directory, text files, a
glob, or a built-in corpus, loaded with Hugging Face ``datasets`` as one column of text.

It imports no torch: ``check_source`` runs before the slow imports, so a missing file or an
unreachable Hub is reported in seconds.
"""

from __future__ import annotations

import codecs
import errno
import functools
import glob
import os
import re
import stat
import threading
import urllib.error
import urllib.request
from importlib.resources import files
from pathlib import Path

from huggingface_hub import constants

from tinylm.config import DataConfig
from tinylm.errors import TinyLMError

BUILTIN_PREFIX = "builtin:"
OFFLINE_HINT = ("offline alternatives: the default data.source=builtin:tiny_shakespeare, data=pydocs, "
                "or data.source=path/to/file.txt")
# Splits in the order their texts are joined; other splits follow in the source's order.
SPLIT_ORDER = ("train", "validation", "valid", "dev", "test")
FILE_BUILDERS = {".parquet": "parquet", ".csv": "csv", ".json": "json", ".jsonl": "json"}
HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")
HUB_PROBE_TIMEOUT_S = 5.0  # connect, and each read
HUB_PROBE_DEADLINE_S = 10.0  # the whole probe, whatever the server does


class DataError(TinyLMError):
    """The data source cannot give us text; the message names the key to change."""


def check_source(config: DataConfig) -> None:
    """Check data.source as far as can be done in seconds and without torch, so that these
    mistakes are reported before the slow imports: a named file exists, a built-in corpus
    exists, the Hub can be reached (or, offline, has the dataset in the cache)."""
    source = config.source
    if isinstance(source, str) and source.startswith(BUILTIN_PREFIX):
        builtin_name(source)
    elif (files := local_files(source)) is not None:
        check_text_files(files, config.encoding)
    elif Path(source).expanduser().is_dir():
        check_text_files(directory_files(Path(source).expanduser()), config.encoding)
    else:  # offline, the load (tinylm.loading) reads the cache at once or says it is not there
        check_hub_reachable(source)


TEXT_SUFFIXES = (".txt", ".text")
CHECK_CHUNK = 1 << 20  # bytes decoded at a time


def check_text_files(files: list[str], encoding: str = "utf-8") -> None:
    """Raise a DataError naming the file and the byte unless every file of ``files`` that holds
    text (all but parquet) decodes with ``encoding`` and is text, not a binary file."""
    for name in files:
        if FILE_BUILDERS.get(Path(name).suffix.lower()) == "parquet":
            continue
        _check_text_file(Path(name), encoding)


# Byte-order marks, the longer first (UTF-32 LE's begins with UTF-16 LE's), with the setting that reads each.
BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
        (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


def _check_text_file(path: Path, encoding: str) -> None:
    with path.open("rb") as file:
        start = file.read(4)
    marked = next((name for bom, name in BOMS if start.startswith(bom)), None)
    if marked is not None and not codecs.lookup(encoding).name.startswith(marked):
        raise DataError(f"data.source: {path} is {marked.upper()} text (it starts with a {marked.upper()} "
                        f"byte-order mark), not {encoding}; read it with data.encoding={marked}")
    _check_decodes(path, encoding)


def _check_decodes(path: Path, encoding: str) -> None:
    # A NUL byte means a binary file (a program, an archive, an image) in any encoding that
    # writes NUL as one zero byte (ASCII and its extensions, UTF-8); UTF-16 and -32 are full of them.
    nul_is_binary = "\0".encode(encoding) == b"\0"
    decoder = codecs.getincrementaldecoder(encoding)()
    offset = 0
    with path.open("rb") as file:
        while True:
            chunk = file.read(CHECK_CHUNK)
            if nul_is_binary and (nul := chunk.find(b"\0")) >= 0:
                if offset == 0 and (utf16 := _bomless_utf16(chunk)) is not None:
                    raise DataError(
                        f"data.source: {path} looks like UTF-16 text without a byte-order mark (a NUL "
                        f"byte beside every character), not {encoding}; read it with data.encoding={utf16}"
                    )
                raise DataError(
                    f"data.source: {path} is not text: it holds a NUL byte at byte {offset + nul:,} "
                    f"(a binary file: a program, an archive, an image?); give a text file"
                )
            pending = len(decoder.getstate()[0])  # bytes of a character the last chunk began
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as error:  # error.start counts from the pending bytes
                bad = " ".join(f"0x{b:02x}" for b in error.object[error.start:error.end])
                raise DataError(
                    f"data.source: {path} is not {encoding} text: byte {offset - pending + error.start:,} "
                    f"({bad}) does not decode; give the file's encoding, e.g. data.encoding=latin-1 "
                    f"(or cp1252, shift_jis, gb18030)"
                ) from None
            if not chunk:
                return
            offset += len(chunk)


def _bomless_utf16(start: bytes) -> str | None:
    """``utf-16-le`` or ``utf-16-be`` when ``start`` reads as ASCII-range text in it (every other
    byte NUL, none of the others), else None."""
    head = start[:256] if len(start) % 2 == 0 else start[:min(len(start) - 1, 256)]
    if len(head) < 8:
        return None
    for zeros, other, name in ((head[1::2], head[0::2], "utf-16-le"), (head[0::2], head[1::2], "utf-16-be")):
        if set(zeros) == {0} and 0 not in other:
            return name
    return None


def row_unit(source: str | tuple[str, ...]) -> str:
    """What one row of ``source`` is: a "file" of text (each is read whole), or a "row"."""
    try:
        files = local_files(source)
        if files is None and Path(source).expanduser().is_dir():
            files = directory_files(Path(source).expanduser()) or None
    except DataError:
        return "row"
    return "file" if files and Path(files[0]).suffix.lower() not in FILE_BUILDERS else "row"


def local_files(source: str | tuple[str, ...]) -> list[str] | None:
    """The files ``source`` names; None when it names a directory or a Hub id."""
    if isinstance(source, str):
        path = Path(source).expanduser()
        if path.is_dir() or not (os.path.lexists(path) or glob.has_magic(source) or _looks_like_path(source)):
            return None
    patterns = [source] if isinstance(source, str) else list(source)
    files: list[str] = []
    for pattern in patterns:
        expanded = os.path.expanduser(pattern)
        matches = sorted(glob.glob(expanded, recursive=True)) if glob.has_magic(expanded) else [expanded]
        if not matches:
            raise DataError(f"data.source: no file matches {pattern!r}; {OFFLINE_HINT}")
        for match in matches:
            if (kind := not_a_file(Path(match))) is not None:
                raise DataError(f"data.source: {kind}; give a text file, a directory of them, or a glob")
            if not Path(match).is_file():
                raise DataError(
                    f"data.source: file not found: {Path(match).absolute()}; fix the path, "
                    f"or use a Hub dataset id, or data=pydocs"
                )
        files.extend(matches)
    return files


SPECIAL_FILES = {stat.S_ISFIFO: "a FIFO (a named pipe)", stat.S_ISCHR: "a character device",
                 stat.S_ISBLK: "a block device", stat.S_ISSOCK: "a socket"}


def not_a_file(path: Path) -> str | None:
    """What ``path`` is when it exists but is no regular file or directory to read text from
    (a FIFO, a device, a socket, a loop of symbolic links), said with its path; else None."""
    try:
        mode = os.stat(path).st_mode
    except OSError as error:
        if error.errno == errno.ELOOP:
            return f"{path} is a loop of symbolic links (one points, through others, back at itself)"
        return None  # not there: said as such where it matters
    for test, kind in SPECIAL_FILES.items():
        if test(mode):
            return f"{path} is {kind}, not a file"
    return None


DATASET_CARD = "README.md"  # a Hub-layout directory's description, not its data


def directory_files(path: Path) -> list[str]:
    """The text files of directory ``path`` (recursively, in name order), each read whole as
    one document; [] when it holds data files of one kind laid out like a Hub repo, which
    datasets reads with their splits. Raises a DataError when it holds neither, or when a file
    of it would be left out (another kind of file beside them): every file is used, or the run
    is refused naming what would be left out and the glob that chooses."""
    entries = []
    for p in sorted(path.rglob("*")):
        if any(part.startswith(".") for part in p.relative_to(path).parts):
            continue
        if (kind := not_a_file(p)) is not None:
            raise DataError(f"data.source: {kind}, in the directory {path}; remove it, or choose the "
                            f"files with a glob, e.g. data.source='{path}/**/*.txt'")
        if p.is_file():
            entries.append(p)
    data = [p for p in entries if p.suffix.lower() in FILE_BUILDERS]
    if data:
        kinds = sorted({p.suffix.lower() for p in data})
        used = kinds[0] if len(kinds) == 1 else None
        left = [p for p in entries if p.suffix.lower() != used and p.relative_to(path) != Path(DATASET_CARD)]
        if left:
            _refuse_leaving_out(path, left, sorted({p.suffix.lower() for p in entries if p.suffix.lower()
                                                    in (*FILE_BUILDERS, *TEXT_SUFFIXES)}))
        return []
    texts = [str(p) for p in entries if p.suffix.lower() in TEXT_SUFFIXES]
    left = [p for p in entries if p.suffix.lower() not in TEXT_SUFFIXES]
    if texts and left:
        _refuse_leaving_out(path, left, [".txt"])
    found = entries
    if not texts:
        held = f"holds {len(found)} file(s), none of them" if found else "is empty: it holds no"
        raise DataError(
            f"data.source: the directory {path} {held} text (.txt) or data files "
            f"({', '.join(FILE_BUILDERS)}); give a directory of text files, a file, or a glob"
        )
    return texts


def _refuse_leaving_out(path: Path, left: list[Path], kinds: list[str]) -> None:
    names = [str(p.relative_to(path)) for p in left]
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    globs = " or ".join(f"data.source='{path}/**/*{kind}'" for kind in kinds)
    raise DataError(f"data.source: the directory {path} mixes kinds of files, and {len(names)} of them "
                    f"would be left out ({shown}); choose which to train on with a glob: {globs}, "
                    f"or a list: data.source=[file1,file2]")


def _looks_like_path(source: str) -> bool:
    """A Hub id is "name" or "owner/name"; anything else, or a file suffix, means a path."""
    suffix = Path(source).suffix.lower()
    return (
        not HUB_ID.match(source)
        or source.startswith((".", "~"))
        or suffix in (".txt", ".text", ".md", *FILE_BUILDERS)
    )


BUILTINS = ("tiny_shakespeare", "pydocs")


def embedded_corpus(name: str) -> Path:
    """The directory of a corpus shipped inside tinylm, laid out like a Hub dataset repo."""
    return Path(str(files("tinylm") / "corpora" / name))


def builtin_name(source: str) -> None:
    name = source.removeprefix(BUILTIN_PREFIX)
    if name not in BUILTINS:
        choices = ", ".join(BUILTIN_PREFIX + b for b in BUILTINS)
        raise DataError(f"data.source: unknown built-in corpus {name!r}; the built-ins are {choices}")


def hub_offline() -> bool:
    return constants.HF_HUB_OFFLINE


def check_hub_reachable(source: str) -> None:
    """Fail in seconds, not minutes, when the Hub cannot be reached (datasets retries long)."""
    if hub_offline():
        return  # datasets then uses its cache, or fails at once
    try:
        _probe(constants.ENDPOINT)
    except (OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        endpoint = constants.ENDPOINT
        raise DataError(
            f"data.source={source!r} looks like a Hugging Face Hub id, but the Hub at {endpoint} "
            f"cannot be reached ({reason}). If you meant a local path, it does not exist: "
            f"{Path(source).absolute()}. {OFFLINE_HINT.capitalize()}; or, if the dataset is "
            f"already in your Hugging Face cache, set HF_HUB_OFFLINE=1"
        ) from None


@functools.cache  # a successful probe holds for the process: the check and the load share it
def _probe(endpoint: str) -> None:
    """Raises OSError (or ValueError for a malformed address) unless ``endpoint`` answers, whole,
    within HUB_PROBE_DEADLINE_S: a timeout bounds each read only, and a server that trickles a
    byte a second would hold the probe for minutes."""
    outcome: dict[str, BaseException] = {}

    def ask() -> None:
        try:
            request = urllib.request.Request(endpoint, method="HEAD")
            urllib.request.urlopen(request, timeout=HUB_PROBE_TIMEOUT_S).close()
        except urllib.error.HTTPError:
            pass  # the server answered: it is reachable
        except BaseException as error:  # handed to the caller
            outcome["error"] = error

    asking = threading.Thread(target=ask, name="tinylm-hub-probe", daemon=True)
    asking.start()
    asking.join(HUB_PROBE_DEADLINE_S)
    if asking.is_alive():  # left to end on its own: a daemon thread keeps no process alive
        raise TimeoutError(f"no whole answer within {HUB_PROBE_DEADLINE_S:.0f} s")
    if "error" in outcome:
        raise outcome["error"]


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else "no details"


