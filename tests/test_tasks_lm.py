"""hier_mamba.tasks.lm and .text: the language-model task on your own text (files, a folder, a glob, a dataset)."""

import sys

import pytest
import torch

from hier_mamba.tasks import lm, text
from hier_mamba.tokenization import byte_tokenizer

DOCS = {"a.txt": "alpha beta gamma\n" * 8, "b.txt": "delta epsilon\n" * 8, "sub/c.txt": "zeta ēta θ\n" * 8}


@pytest.fixture
def corpus(tmp_path):
    """A folder of three small UTF-8 files (one in a subfolder) and one file that is not .txt."""
    for name, content in DOCS.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(content, encoding="utf-8")
    (tmp_path / "notes.md").write_text("not read by default")
    return tmp_path


def stream(*names: str) -> list[int]:
    return list("\n\n".join(DOCS[name] for name in names).encode("utf-8"))


def test_default_corpus_is_the_help_topics_one_token_per_byte():
    from pydoc_data.topics import topics

    train, held_out = lm.build_datasets({"block_size": 64}, seed=0)
    data = "\n\n".join(topics[name] for name in sorted(topics)).encode("utf-8")
    cut = int(len(data) * 0.95)
    assert train.ids.tolist() == list(data[:cut]) and held_out.ids.tolist() == list(data[cut:])


def test_a_folder_of_text_files_with_a_held_out_tail(corpus):
    train, held_out = lm.build_datasets({"text_files": str(corpus), "block_size": 16, "eval_fraction": 0.25}, seed=0)
    everything = stream("a.txt", "b.txt", "sub/c.txt")  # sorted, recursive, *.txt only
    cut = int(len(everything) * 0.75)
    assert train.ids.tolist() == everything[:cut] and held_out.ids.tolist() == everything[cut:]
    assert len(train) == (cut - 16) // 16 + 1
    first = train[1]
    assert first["input_ids"].tolist() == everything[16:32] and torch.equal(first["input_ids"], first["labels"])


def test_files_globs_and_a_named_held_out_text(corpus):
    data_cfg = {"text_files": [str(corpus / "b.txt"), str(corpus / "a.*")], "eval_text_files": str(corpus / "sub"),
                "block_size": 8, "stride": 4}
    train, held_out = lm.build_datasets(data_cfg, seed=0)
    assert train.ids.tolist() == stream("b.txt", "a.txt")  # in the order given, no tail cut
    assert held_out.ids.tolist() == stream("sub/c.txt")
    assert len(train) == (len(stream("b.txt", "a.txt")) - 8) // 4 + 1 and held_out.stride == 8
    md_only = lm.build_datasets({"text_files": str(corpus), "text_glob": "*.md", "block_size": 4,
                                 "eval_fraction": 0.5}, seed=0)[0]
    assert md_only.ids.tolist() == list(b"not read "), "only the .md file, its first half"


def test_bad_text_sources_are_named(corpus):
    with pytest.raises(ValueError, match="'/no/such' is not a file, a directory or a glob"):
        lm.build_datasets({"text_files": "/no/such"}, seed=0)
    (corpus / "empty").mkdir()
    with pytest.raises(ValueError, match=r"holds no file matching '\*\*/\*.txt'"):
        lm.build_datasets({"text_files": str(corpus / "empty")}, seed=0)
    (corpus / "latin1.txt").write_bytes(b"caf\xe9")
    with pytest.raises(ValueError, match="latin1.txt is not utf-8 text"):
        lm.build_datasets({"text_files": str(corpus / "latin1.txt")}, seed=0)
    assert lm.build_datasets({"text_files": str(corpus / "latin1.txt"), "encoding": "latin-1", "block_size": 2,
                             "eval_fraction": 0.5},
                             seed=0)[0].ids.tolist()[:1] == [99]
    with pytest.raises(ValueError, match="the training text has 129 tokens, fewer than one block of 256"):
        lm.build_datasets({"text_files": str(corpus / "a.txt")}, seed=0)
    with pytest.raises(ValueError, match=r"unknown data keys for task 'lm': \['text_file'\]"):
        lm.build_datasets({"text_file": "x"}, seed=0)
    with pytest.raises(ValueError, match="both name a corpus"):
        lm.build_datasets({"text_files": "x", "dataset": "y"}, seed=0)


def test_dataset_without_the_datasets_library_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(ImportError, match="pip install datasets"):
        lm.build_datasets({"dataset": {"path": "text", "data_files": "x.txt"}}, seed=0)


def test_a_datasets_text_dataset_with_its_validation_split(corpus):
    datasets = pytest.importorskip("datasets")
    rows = ["first line", "second line", "third line"] * 4
    saved = corpus / "saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"body": rows}),
                          "validation": datasets.Dataset.from_dict({"body": ["held out", "text"]})}).save_to_disk(saved)
    data_cfg = {"dataset": str(saved), "text_column": "body", "eval_split": "validation", "block_size": 4}
    train, held_out = lm.build_datasets(data_cfg, seed=0)
    assert train.ids.tolist() == list("\n".join(rows).encode()) and held_out.ids.tolist() == list(b"held out\ntext")
    text_builder = {"path": "text", "data_files": {"train": str(corpus / "a.txt")}, "cache_dir": str(corpus / "hf")}
    loaded = {"dataset": text_builder, "block_size": 4, "eval_fraction": 0.5}
    train, held_out = lm.build_datasets(loaded, seed=0)  # the `text` builder: one row per line
    assert train.ids.tolist() + held_out.ids.tolist() == list(DOCS["a.txt"].rstrip("\n").encode())
    with pytest.raises(ValueError, match=r"text column 'text' not found; the dataset has columns \['body'\]"):
        lm.build_datasets({"dataset": str(saved)}, seed=0)
    with pytest.raises(ValueError, match="dataset split 'test' not found"):
        lm.build_datasets({"dataset": str(saved), "text_column": "body", "eval_split": "test"}, seed=0)


def test_encode_documents_batches_and_separates(monkeypatch):
    monkeypatch.setattr(text, "ENCODE_BATCH", 2)  # several tokenizer calls
    documents = ["one", "two", "", "three", "four"]
    ids = text.encode_documents(text.Corpus(iter(documents), None, "|"), byte_tokenizer())
    assert bytes(ids.tolist()) == b"one|two||three|four" and ids.dtype == torch.int32
    with pytest.raises(ValueError, match="the text corpus is empty"):
        text.encode_documents(text.Corpus([], 0, "\n"), byte_tokenizer())
