"""Where the text comes from: a Hub dataset, a local Hub-layout directory, text files, a
glob, or a built-in corpus, loaded with Hugging Face ``datasets`` as one column of text.

It imports no torch: ``check_source`` runs before the slow imports, so a missing file or an
unreachable Hub is reported in seconds.
"""

from __future__ import annotations

import codecs
import functools
import glob
import os
import re
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from tinylm.config import DataConfig
from tinylm.errors import TinyLMError

BUILTIN_PREFIX = "builtin:"
OFFLINE_HINT = ("offline alternatives: the default data.source=builtin:tiny_shakespeare, data=pydocs, "
                "or data.source=path/to/file.txt")
# Splits in the order their texts are joined; other splits follow in the source's order.
SPLIT_ORDER = ("train", "validation", "valid", "dev", "test")
FILE_BUILDERS = {".parquet": "parquet", ".csv": "csv", ".json": "json", ".jsonl": "json"}
HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")
HUB_PROBE_TIMEOUT_S = 5.0


class DataError(TinyLMError):
    """The data source cannot give us text; the message names the key to change."""


def check_source(config: DataConfig) -> None:
    """Check data.source as far as can be done in seconds and without torch, so that these
    mistakes are reported before the slow imports: a named file exists, a built-in corpus
    exists, the Hub can be reached (or, offline, has the dataset in the cache)."""
    source = config.source
    if isinstance(source, str) and source.startswith(BUILTIN_PREFIX):
        _builtin_name(source)
    elif (files := _local_files(source)) is not None:
        check_text_files(files, config.encoding)
    elif Path(source).expanduser().is_dir():
        check_text_files(_directory_files(Path(source).expanduser()), config.encoding)
    elif _hub_offline():
        # Loading from the cache is quick, and the only sure way to know it is there.
        _load_rows(source, config.revision, config.encoding)
    else:
        _check_hub_reachable(source)


TEXT_SUFFIXES = (".txt", ".text")
CHECK_CHUNK = 1 << 20  # bytes decoded at a time


def check_text_files(files: list[str], encoding: str = "utf-8") -> None:
    """Raise a DataError naming the file and the byte unless every file of ``files`` that holds
    text (all but parquet) decodes with ``encoding`` and is text, not a binary file."""
    for name in files:
        if FILE_BUILDERS.get(Path(name).suffix.lower()) == "parquet":
            continue
        _check_text_file(Path(name), encoding)


def _check_text_file(path: Path, encoding: str) -> None:
    # A NUL byte means a binary file (a program, an archive, an image) in any encoding that
    # writes NUL as one zero byte (ASCII and its extensions, UTF-8); UTF-16 and -32 are full of them.
    nul_is_binary = "\0".encode(encoding) == b"\0"
    decoder = codecs.getincrementaldecoder(encoding)()
    offset = 0
    with path.open("rb") as file:
        while True:
            chunk = file.read(CHECK_CHUNK)
            if nul_is_binary and (nul := chunk.find(b"\0")) >= 0:
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


# --------------------------------------------------------------------------- loading


def load_texts(config: DataConfig):
    """The source as a ``datasets.Dataset`` with one column, "text", in corpus order
    (the splits of a Hub dataset joined train, validation, test)."""
    import datasets

    datasets.disable_progress_bars()
    source = config.source
    rows = _load_rows(source, config.revision, config.encoding)
    if config.text_column not in rows.column_names:
        raise DataError(
            f"data.text_column={config.text_column!r} is not a column of data.source={source!r}; "
            f"its columns are {rows.column_names}"
        )
    rows = rows.select_columns([config.text_column])
    if config.text_column != "text":
        rows = rows.rename_column(config.text_column, "text")
    return rows


def load_streams(config: DataConfig):
    """``data.streaming``: the source's "train" split as a ``datasets.IterableDataset`` (read as
    it is iterated, never downloaded whole) and its first validation split ("validation",
    "valid", "dev" or "test") as an in-memory Dataset; both with one column, "text"."""
    import datasets

    datasets.disable_progress_bars()
    source = config.source
    if not isinstance(source, str) or source.startswith(BUILTIN_PREFIX) or _local_files(source):
        raise DataError(f"data.streaming=true reads a Hub dataset or a local Hub-layout directory, "
                        f"not data.source={source!r}; set data.streaming=false")
    local = Path(source).expanduser()
    path = str(local) if local.is_dir() else source
    if not local.is_dir():
        _check_hub_reachable(source)
    streams = datasets.load_dataset(path, revision=config.revision, streaming=True)
    held_out = [s for s in SPLIT_ORDER[1:] if s in streams]
    if "train" not in streams or not held_out:
        raise DataError(f"data.source={source!r} has splits {list(streams)}; streaming needs a "
                        f"'train' split and a validation split ({', '.join(SPLIT_ORDER[1:])})")
    column = config.text_column

    def text_only(stream):
        if column not in stream.column_names:
            raise DataError(f"data.text_column={column!r} is not a column of data.source={source!r}; "
                            f"its columns are {stream.column_names}")
        stream = stream.select_columns([column])
        return stream.rename_column(column, "text") if column != "text" else stream

    validation = datasets.Dataset.from_list(list(text_only(streams[held_out[0]])))
    return text_only(streams["train"]), validation


def row_unit(source: str | tuple[str, ...]) -> str:
    """What one row of ``source`` is: a "file" of text (each is read whole), or a "row"."""
    try:
        files = _local_files(source)
        if files is None and Path(source).expanduser().is_dir():
            files = _directory_files(Path(source).expanduser()) or None
    except DataError:
        return "row"
    return "file" if files and Path(files[0]).suffix.lower() not in FILE_BUILDERS else "row"


def count_documents(source: str | tuple[str, ...], rows) -> int:
    """How many of ``row_unit(source)`` were read: text files are read a line at a time (one
    row per line) but counted as files."""
    if row_unit(source) != "file":
        return len(rows)
    files = _local_files(source)
    return len(files if files is not None else _directory_files(Path(source).expanduser()))


def from_cache(rows, since: float) -> bool:
    """Whether ``datasets`` read ``rows`` back from its cache: its files are older than ``since``,
    the time the load began."""
    files = [f["filename"] for f in rows.cache_files]
    return bool(files) and all(os.path.getmtime(f) < since for f in files)


def _load_rows(source: str | tuple[str, ...], revision: str | None, encoding: str = "utf-8"):
    """Load ``source`` with ``datasets`` as one Dataset (all splits, in order)."""
    import datasets

    if isinstance(source, str) and source.startswith(BUILTIN_PREFIX):
        return _builtin(source.removeprefix(BUILTIN_PREFIX))
    files = _local_files(source)
    if files is None and Path(source).expanduser().is_dir():
        files = _directory_files(Path(source).expanduser())
        if not files:  # laid out like a Hub repo: datasets finds its splits
            return _local(source, lambda: _concatenate_splits(
                datasets.load_dataset(str(Path(source).expanduser()))))
    if files is not None:
        builder = FILE_BUILDERS.get(Path(files[0]).suffix.lower(), "text")
        # One row per line, line breaks kept: joined, the rows are the text exactly as read, and
        # datasets reads a file in 10 MB pieces rather than whole (a 1 GB file is no 1 GB row).
        # Empty files give no lines, which datasets refuses: then one empty row per file.
        some_text = any(Path(f).stat().st_size for f in files)
        by = {"sample_by": "line", "keep_linebreaks": True} if some_text else {"sample_by": "document"}
        options = by if builder == "text" else {}
        if builder != "parquet":
            options["encoding"] = encoding
        return _local(source, lambda: datasets.load_dataset(builder, data_files=files, split="train",
                                                            **options))
    _check_hub_reachable(source)
    try:
        loaded = _watched(source, lambda: datasets.load_dataset(source, revision=revision))
    except HubStalled:
        raise
    except Exception as error:  # the Hub raises many types; every one means "no data"
        if _hub_offline():
            raise DataError(
                f"data.source={source!r} (revision {revision!r}) is not in your Hugging Face "
                f"cache, and HF_HUB_OFFLINE=1 keeps tinylm from downloading it; unset "
                f"HF_HUB_OFFLINE, or use {OFFLINE_HINT}"
            ) from error
        raise DataError(
            f"data.source={source!r} (revision {revision!r}) could not be loaded from the "
            f"Hugging Face Hub: {type(error).__name__}: {_first_line(error)}. "
            f"Check the id and data.revision, or use {OFFLINE_HINT}"
        ) from error
    return _concatenate_splits(loaded)


def _local_files(source: str | tuple[str, ...]) -> list[str] | None:
    """The files ``source`` names; None when it names a directory or a Hub id."""
    if isinstance(source, str):
        path = Path(source).expanduser()
        if path.is_dir() or not (path.exists() or glob.has_magic(source) or _looks_like_path(source)):
            return None
    patterns = [source] if isinstance(source, str) else list(source)
    files: list[str] = []
    for pattern in patterns:
        expanded = os.path.expanduser(pattern)
        matches = sorted(glob.glob(expanded)) if glob.has_magic(expanded) else [expanded]
        if not matches:
            raise DataError(f"data.source: no file matches {pattern!r}; {OFFLINE_HINT}")
        for match in matches:
            if not Path(match).is_file():
                raise DataError(
                    f"data.source: file not found: {Path(match).resolve()}; fix the path, "
                    f"or use a Hub dataset id, or data=pydocs"
                )
        files.extend(matches)
    return files


def _directory_files(path: Path) -> list[str]:
    """The text files of directory ``path`` (recursively, in name order), each read whole as
    one document; [] when it holds data files laid out like a Hub repo, which datasets reads
    with their splits. Raises a DataError when it holds neither."""
    found = sorted(p for p in path.rglob("*") if p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(path).parts))
    if any(p.suffix.lower() in FILE_BUILDERS for p in found):
        return []
    texts = [str(p) for p in found if p.suffix.lower() in TEXT_SUFFIXES]
    if not texts:
        held = f"holds {len(found)} file(s), none of them" if found else "is empty: it holds no"
        raise DataError(
            f"data.source: the directory {path} {held} text (.txt) or data files "
            f"({', '.join(FILE_BUILDERS)}); give a directory of text files, a file, or a glob"
        )
    return texts


def _local(source, load):
    """``load()``, a load of local files by datasets: its failure as one DataError."""
    try:
        return load()
    except Exception as error:  # datasets wraps a builder's error; the innermost one says what
        while error.__cause__ is not None or error.__context__ is not None:
            error = error.__cause__ or error.__context__
        raise DataError(f"data.source={source!r} could not be read: {type(error).__name__}: "
                        f"{_first_line(error)}") from None


def _looks_like_path(source: str) -> bool:
    """A Hub id is "name" or "owner/name"; anything else, or a file suffix, means a path."""
    suffix = Path(source).suffix.lower()
    return (
        not HUB_ID.match(source)
        or source.startswith((".", "~"))
        or suffix in (".txt", ".text", ".md", *FILE_BUILDERS)
    )


def _concatenate_splits(loaded):
    import datasets

    names = list(loaded)
    ordered = [s for s in SPLIT_ORDER if s in names] + [s for s in names if s not in SPLIT_ORDER]
    return datasets.concatenate_datasets([loaded[s] for s in ordered])


BUILTINS = ("tiny_shakespeare", "pydocs")


def _builtin(name: str):
    import datasets

    _builtin_name(BUILTIN_PREFIX + name)
    if name == "pydocs":
        return datasets.Dataset.from_generator(_pydoc_topics)
    return _concatenate_splits(datasets.load_dataset(str(embedded_corpus(name))))


def embedded_corpus(name: str) -> Path:
    """The directory of a corpus shipped inside tinylm, laid out like a Hub dataset repo."""
    from importlib.resources import files

    return Path(str(files("tinylm") / "corpora" / name))


def _builtin_name(source: str) -> None:
    name = source.removeprefix(BUILTIN_PREFIX)
    if name not in BUILTINS:
        choices = ", ".join(BUILTIN_PREFIX + b for b in BUILTINS)
        raise DataError(f"data.source: unknown built-in corpus {name!r}; the built-ins are {choices}")


def _pydoc_topics():
    """Python's own documentation topics (shipped with every CPython): English prose, offline."""
    from pydoc_data.topics import topics

    for name in sorted(topics):
        yield {"text": topics[name] + "\n\n"}


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return constants.HF_HUB_OFFLINE


def _check_hub_reachable(source: str) -> None:
    """Fail in seconds, not minutes, when the Hub cannot be reached (datasets retries long)."""
    from huggingface_hub import constants

    if _hub_offline():
        return  # datasets then uses its cache, or fails at once
    try:
        _probe(constants.ENDPOINT)
    except (OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        endpoint = constants.ENDPOINT
        raise DataError(
            f"data.source={source!r} looks like a Hugging Face Hub id, but the Hub at {endpoint} "
            f"cannot be reached ({reason}). If you meant a local path, it does not exist: "
            f"{Path(source).resolve()}. {OFFLINE_HINT.capitalize()}; or, if the dataset is "
            f"already in your Hugging Face cache, set HF_HUB_OFFLINE=1"
        ) from None


@functools.cache  # a successful probe holds for the process: the check and the load share it
def _probe(endpoint: str) -> None:
    """Raises OSError (or ValueError for a malformed address) unless ``endpoint`` answers."""
    try:
        urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=HUB_PROBE_TIMEOUT_S)
    except urllib.error.HTTPError:
        return  # the server answered: it is reachable


HUB_REQUEST_TIMEOUT_S = 8.0  # connect, and each read: a request that stalls fails after this
HUB_STALL_S = 10.0  # no answer and no progress from the Hub this long (retries and all): give up
# A download moves when this much more of it has come in: a Hub that trickles a byte now and
# then, each read inside the timeout, would otherwise hold the load open for hours.
HUB_PROGRESS_BYTES = 16 * 1024


class HubStalled(DataError):
    """The Hub stopped answering while loading; retries would only wait longer."""


def _watched(source: str, load):
    """``load()``, which talks to the Hub, under watch: every request is bounded in time, and when
    nothing comes back (no answer, and no HUB_PROGRESS_BYTES more of a download) for HUB_STALL_S,
    the load is abandoned with a DataError, instead of waiting out the libraries' retries."""
    import httpx2
    from huggingface_hub import constants, get_session

    last = [time.monotonic()]
    unseen = [0]  # bytes come in since the last progress

    def touch(*_: object) -> None:
        last[0], unseen[0] = time.monotonic(), 0

    class Touching(httpx2.SyncByteStream):  # a download's body: HUB_PROGRESS_BYTES more is progress
        def __init__(self, stream) -> None:
            self.stream = stream

        def __iter__(self):
            for chunk in self.stream:
                unseen[0] += len(chunk)
                if unseen[0] >= HUB_PROGRESS_BYTES:
                    touch()
                yield chunk

        def close(self) -> None:
            self.stream.close()

    def watch(response) -> None:
        touch()
        response.stream = Touching(response.stream)

    client = get_session()
    client.timeout = httpx2.Timeout(HUB_REQUEST_TIMEOUT_S)
    hooks = [hook for hook in client.event_hooks["response"] if getattr(hook, "__name__", "") != "watch"]
    client.event_hooks = {**client.event_hooks, "response": [*hooks, watch]}  # this load's watch only
    result: dict = {}

    def work() -> None:
        try:
            result["value"] = load()
        except BaseException as error:  # handed to the main thread
            result["error"] = error

    worker = threading.Thread(target=work, name="tinylm-hub", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(timeout=0.5)
        if worker.is_alive() and time.monotonic() - last[0] > HUB_STALL_S:
            raise HubStalled(
                f"data.source={source!r}: the Hub at {constants.ENDPOINT} stopped answering (nothing, "
                f"or next to nothing, came back for {HUB_STALL_S:.0f} s); try again later, or use "
                f"{OFFLINE_HINT}; or, if the dataset is already in your Hugging Face cache, set "
                f"HF_HUB_OFFLINE=1"
            )
    if "error" in result:
        raise result["error"]
    return result["value"]


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else "no details"


