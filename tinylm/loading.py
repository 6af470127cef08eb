"""Loading a data source with 🤗 ``datasets``: a built-in corpus, local files or a directory, or a
Hub dataset (whole, or streamed), as rows of text. What a source is, and the checks that run
before anything heavy loads, are in ``tinylm.sources``.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from pydoc_data.topics import topics

import datasets
import httpx2
from huggingface_hub import constants, get_session

from tinylm.config import DataConfig
from tinylm.sources import (
    BUILTIN_PREFIX,
    FILE_BUILDERS,
    OFFLINE_HINT,
    SPLIT_ORDER,
    DataError,
    builtin_name,
    check_hub_reachable,
    directory_files,
    embedded_corpus,
    first_line,
    hub_offline,
    local_files,
    row_unit,
)


def load_texts(config: DataConfig):
    """The source as a ``datasets.Dataset`` with one column, "text", in corpus order
    (the splits of a Hub dataset joined train, validation, test)."""
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
    datasets.disable_progress_bars()
    source = config.source
    if not isinstance(source, str) or source.startswith(BUILTIN_PREFIX) or local_files(source):
        raise DataError(f"data.streaming=true reads a Hub dataset or a local Hub-layout directory, "
                        f"not data.source={source!r}; set data.streaming=false")
    local = Path(source).expanduser()
    path = str(local) if local.is_dir() else source
    if not local.is_dir():
        check_hub_reachable(source)
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


def count_documents(source: str | tuple[str, ...], rows) -> int:
    """How many of ``row_unit(source)`` were read: text files are read a line at a time (one
    row per line) but counted as files."""
    if row_unit(source) != "file":
        return len(rows)
    files = local_files(source)
    return len(files if files is not None else directory_files(Path(source).expanduser()))


def from_cache(rows, since: float) -> bool:
    """Whether ``datasets`` read ``rows`` back from its cache: its files are older than ``since``,
    the time the load began."""
    files = [f["filename"] for f in rows.cache_files]
    return bool(files) and all(os.path.getmtime(f) < since for f in files)


def _load_rows(source: str | tuple[str, ...], revision: str | None, encoding: str = "utf-8"):
    """Load ``source`` with ``datasets`` as one Dataset (all splits, in order)."""
    if isinstance(source, str) and source.startswith(BUILTIN_PREFIX):
        return _builtin(source.removeprefix(BUILTIN_PREFIX))
    files = local_files(source)
    if files is None and Path(source).expanduser().is_dir():
        files = directory_files(Path(source).expanduser())
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
    check_hub_reachable(source)
    try:
        loaded = _watched(source, lambda: datasets.load_dataset(source, revision=revision))
    except HubStalled:
        raise
    except Exception as error:  # the Hub raises many types; every one means "no data"
        if hub_offline():
            raise DataError(
                f"data.source={source!r} (revision {revision!r}) is not in your Hugging Face "
                f"cache, and HF_HUB_OFFLINE=1 keeps tinylm from downloading it; unset "
                f"HF_HUB_OFFLINE, or use {OFFLINE_HINT}"
            ) from error
        raise DataError(
            f"data.source={source!r} (revision {revision!r}) could not be loaded from the "
            f"Hugging Face Hub: {type(error).__name__}: {first_line(error)}. "
            f"Check the id and data.revision, or use {OFFLINE_HINT}"
        ) from error
    return _concatenate_splits(loaded)


def _local(source, load):
    """``load()``, a load of local files by datasets: its failure as one DataError."""
    try:
        return load()
    except Exception as error:  # datasets wraps a builder's error; the innermost one says what
        while error.__cause__ is not None or error.__context__ is not None:
            error = error.__cause__ or error.__context__
        # An OSError on a file that opened (one of /proc's, a network file system's): a copy reads.
        hint = "; copy it into a regular file and give that" if isinstance(error, OSError) else ""
        raise DataError(f"data.source={source!r} could not be read: {type(error).__name__}: "
                        f"{first_line(error)}{hint}") from None


def _concatenate_splits(loaded):
    names = list(loaded)
    ordered = [s for s in SPLIT_ORDER if s in names] + [s for s in names if s not in SPLIT_ORDER]
    return datasets.concatenate_datasets([loaded[s] for s in ordered])


def _builtin(name: str):
    builtin_name(BUILTIN_PREFIX + name)
    if name == "pydocs":
        return datasets.Dataset.from_generator(_pydoc_topics)
    return _concatenate_splits(datasets.load_dataset(str(embedded_corpus(name))))


def _pydoc_topics():
    """Python's own documentation topics (shipped with every CPython): English prose, offline."""
    for name in sorted(topics):
        yield {"text": topics[name] + "\n\n"}


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
