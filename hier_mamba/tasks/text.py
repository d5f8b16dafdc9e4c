"""Text corpora for the language-model task: local files, a directory, a `datasets` dataset, or the bundled one.

A corpus is a sequence of documents (one per file, dataset row or help topic) that
:func:`encode_documents` tokenizes into one stream of ids, with a separator between documents and
a progress bar. `datasets` is optional: it is imported only when a config asks for a dataset.
"""

from __future__ import annotations

import glob as globbing
import logging
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

ENCODE_BATCH = 256  # documents tokenized per call of the (Rust, multi-threaded) fast tokenizer


class Corpus(NamedTuple):
    """Documents to tokenize; ``count`` sizes the progress bar (None: unknown)."""

    documents: Iterable[str]
    count: int | None
    separator: str


def pydoc_corpus() -> Corpus:
    """The help topics of the running CPython (``pydoc_data.topics``, ~460 KB of English), sorted by name."""
    from pydoc_data.topics import topics

    return Corpus([topics[name] for name in sorted(topics)], len(topics), "\n\n")


def text_files(sources: str | Path | Sequence[str | Path], pattern: str = "**/*.txt") -> list[Path]:
    """Files named by ``sources``: files, directories (their files matching ``pattern``) or glob patterns.

    The list is sorted within each source, so the corpus (and its held-out tail) is reproducible.
    """
    if isinstance(sources, (str, Path)):
        sources = [sources]
    files: list[Path] = []
    for source in sources:
        path = Path(source).expanduser()
        if path.is_file():
            found = [path]
        elif path.is_dir():
            found = sorted(p for p in path.glob(pattern) if p.is_file())
            if not found:
                raise ValueError(f"text directory {str(source)!r} holds no file matching {pattern!r}")
        else:
            found = sorted(Path(p) for p in globbing.glob(str(path), recursive=True) if Path(p).is_file())
            if not found:
                raise ValueError(f"text source {str(source)!r} is not a file, a directory or a glob matching files")
        files.extend(found)
    return files


def file_corpus(sources: str | Path | Sequence[str | Path], pattern: str = "**/*.txt",
                encoding: str = "utf-8", separator: str = "\n\n") -> Corpus:
    """One document per file of :func:`text_files`, read lazily (undecodable bytes raise, naming the file)."""
    files = text_files(sources, pattern)

    def read() -> Iterator[str]:
        for path in files:
            try:
                yield path.read_text(encoding=encoding)
            except UnicodeDecodeError as error:
                raise ValueError(f"{path} is not {encoding} text ({error}); set data.encoding") from error

    logger.info("text corpus: %d files from %s", len(files), sources)
    return Corpus(read(), len(files), separator)


def dataset_corpus(spec: str | dict, split: str = "train", text_column: str = "text", separator: str = "\n") -> Corpus:
    """One document per row of a `datasets` dataset.

    spec: a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``, or the arguments
    of ``datasets.load_dataset`` (a name or path, or a mapping such as ``{"path": "text", "data_files":
    {"train": "corpus/*.txt"}}``). split: the split to read (ignored for a saved single Dataset).
    The default separator is one newline, because the ``text`` builder makes one row per line.
    """
    try:
        import datasets
    except ImportError as error:
        raise ImportError("data.dataset needs the `datasets` library: pip install datasets "
                          "(or name local files with data.text_files instead)") from error
    # 1. Load: a save_to_disk folder, or load_dataset's arguments.
    saved = isinstance(spec, (str, Path)) and any((Path(spec) / name).is_file()
                                                  for name in ("dataset_dict.json", "state.json"))
    if saved:
        loaded = datasets.load_from_disk(str(spec))
    elif isinstance(spec, dict):
        loaded = datasets.load_dataset(**spec)
    else:
        loaded = datasets.load_dataset(str(spec))
    # 2. Pick the split and the text column.
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise ValueError(f"dataset split {split!r} not found; the dataset has {sorted(loaded)}")
        loaded = loaded[split]
    if text_column not in loaded.column_names:
        raise ValueError(f"text column {text_column!r} not found; the dataset has columns {loaded.column_names}"
                         " (set data.text_column)")
    column = loaded[text_column]
    return Corpus(column, len(column), separator)


def encode_documents(corpus: Corpus, tokenizer: PreTrainedTokenizerBase, desc: str = "tokenizing") -> torch.Tensor:
    """The corpus as one (n,) int32 stream of token ids: documents joined by the separator's ids.

    No special tokens are added (no BOS/EOS per document): the separator text marks the boundaries.
    A tqdm progress bar counts the documents.
    """
    separator_ids = tokenizer(corpus.separator, add_special_tokens=False)["input_ids"] if corpus.separator else []
    separator = torch.tensor(separator_ids, dtype=torch.int32)
    pieces: list[torch.Tensor] = []
    batch: list[str] = []

    def flush(progress: tqdm) -> None:
        for ids in tokenizer(batch, add_special_tokens=False)["input_ids"]:
            if pieces:
                pieces.append(separator)
            pieces.append(torch.tensor(ids, dtype=torch.int32))
        progress.update(len(batch))
        batch.clear()

    with tqdm(total=corpus.count, desc=desc, unit="doc") as progress:
        for document in corpus.documents:
            batch.append(document)
            if len(batch) == ENCODE_BATCH:
                flush(progress)
        if batch:
            flush(progress)
    if not pieces:
        raise ValueError("the text corpus is empty")
    return torch.cat(pieces)
