"""Where a dataset task's rows come from: a Hugging Face hub name, a local file, or a `save_to_disk` directory.

Every reader returns the same thing, `{split name: datasets.Dataset}`, and leaves the meaning of the splits to
tasks/dataset.py:

| source | read with |
|---|---|
| `hf:NAME[:CONFIG]` | `datasets.load_dataset(NAME, CONFIG)` (the network, or the HF cache when `HF_HUB_OFFLINE=1`) |
| a `.parquet`, `.json`, `.jsonl`, `.csv` file (also gzipped etc.) | `load_dataset("parquet" / "json" / "csv", data_files=PATH)` |
| a `save_to_disk` directory (a Dataset or a DatasetDict) | `datasets.load_from_disk(PATH)` |
| any other directory (e.g. a downloaded hub snapshot) | `datasets.load_dataset(PATH)` |

`datasets` is imported inside the readers (it costs seconds and is the optional extra `r1kit[data]`). Whatever
goes wrong (no such file, an unreadable one, the hub out of reach) is a one-line UserError that says what to do.
"""

from __future__ import annotations

import os
from pathlib import Path

from r1kit.errors import UserError

FILE_BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".ndjson": "json", ".csv": "csv"}
COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst", ".lz4")  # read through by datasets' file openers
_SAVED_MARKERS = ("dataset_dict.json", "state.json")  # what save_to_disk leaves (DatasetDict, Dataset)
_MAX_REASON = 240  # characters of a library's error message quoted in ours


def _datasets():
    try:
        import datasets
    except ImportError:
        raise UserError("reading datasets needs the `datasets` package: pip install 'r1kit[data]'") from None
    return datasets


def reason(error: BaseException) -> str:
    """A library error as one short line: its innermost cause (datasets wraps the real one), first line only."""
    while error.__cause__ is not None or (error.__context__ is not None and not str(error).strip()):
        error = error.__cause__ or error.__context__
    lines = str(error).strip().splitlines()
    text = lines[0] if lines else type(error).__name__
    text = text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 3] + "..."
    return f"{type(error).__name__}: {text}"


def as_splits(loaded) -> dict:
    """{split name: Dataset} of a Dataset (one split, named `train` as datasets names a lone file's) or a
    DatasetDict."""
    if hasattr(loaded, "column_names") and not isinstance(loaded.column_names, dict):  # a Dataset
        return {"train": loaded}
    return dict(loaded)


def load_hub(name: str, config: str | None = None, local_hint: str = "data:PATH") -> dict:
    """The splits of a hub dataset, through `datasets.load_dataset(name, config)`."""
    datasets = _datasets()
    label = f"{name}:{config}" if config else name
    try:
        loaded = datasets.load_dataset(name, config)
    except Exception as e:  # ConnectionError offline, DatasetNotFoundError, ValueError for a bad config, ...
        raise UserError(
            f"cannot load {label!r} from the Hugging Face hub ({reason(e)}): it needs a network or a copy in the "
            f"HF cache (load it once online; HF_HUB_OFFLINE=1 then reads the cache), or give a local file or "
            f"save_to_disk directory: {local_hint}"
        ) from None
    return as_splits(loaded)


def file_builder(path: Path) -> str:
    """The `datasets` builder for a data file, from its extension (a compression suffix is looked through)."""
    suffixes = [s.lower() for s in path.suffixes]
    while suffixes and suffixes[-1] in COMPRESSIONS:
        suffixes.pop()
    ext = suffixes[-1] if suffixes else ""
    if ext not in FILE_BUILDERS:
        raise UserError(
            f"{path}: unknown data file type {ext or '(no extension)'!r}: give a "
            f"{', '.join(FILE_BUILDERS)} file or a save_to_disk directory"
        )
    return FILE_BUILDERS[ext]


def load_local(path: str | os.PathLike) -> dict:
    """The splits of a local file (one split, `train`) or directory (its own splits)."""
    datasets = _datasets()
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"{path}: no such file or directory: give a data file or a save_to_disk directory")
    try:
        if path.is_dir() and any((path / marker).is_file() for marker in _SAVED_MARKERS):
            return as_splits(datasets.load_from_disk(str(path)))
        if path.is_dir():
            return as_splits(datasets.load_dataset(str(path)))
        builder = file_builder(path)
        return as_splits(datasets.load_dataset(builder, data_files=str(path)))
    except UserError:
        raise
    except Exception as e:  # ArrowInvalid, DatasetGenerationError, UnicodeDecodeError, PermissionError, ...
        if "corresponds to no data" in str(e) or (path.is_file() and path.stat().st_size == 0):
            raise UserError(f"{path} has no rows: check the file") from None  # datasets' words for an empty file
        what = "a dataset directory" if path.is_dir() else f"a {path.suffix or 'data'} file"
        raise UserError(f"cannot read {path} as {what} ({reason(e)}): check the file, or convert it to "
                        "JSONL or parquet") from None


def load_split_files(train: str | None, test: str | None) -> dict:
    """{train: ..., test: ...} from one file (or directory) per split; a split without one is left out. A
    source with several splits of its own must be a single one here."""
    splits = {}
    for split, path in (("train", train), ("test", test)):
        if path is None:
            continue
        found = load_local(path)
        if len(found) != 1:
            raise UserError(f"{split}={path} holds the splits {', '.join(found)}: give one split per file, or "
                            f"give the directory as path= with train_split=/test_split=")
        splits[split] = next(iter(found.values()))
    return splits
