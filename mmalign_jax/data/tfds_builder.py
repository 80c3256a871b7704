"""Records JSONL + image folder → a TFDS dataset (ArrayRecord shards), read back without TF.

Why TFDS: it gives a versioned, self-describing on-disk dataset (``dataset_info.json``,
``features.json``, split sizes) whose ArrayRecord shards grain reads with random access —
what deterministic shuffling, per-host sharding and exact resume need. Nothing here imports
TensorFlow: the features are only ``Text`` and ``Sequence(Scalar(object))`` (raw bytes),
which TFDS serializes and parses with its numpy code path.

One example per *record* (not per pair or per SFT example — those are derived at load time
by ``pipeline``, so the pair rule, its seed or the SFT mode can change without a rebuild)::

    id      Text     the record id
    record  Text     ``json.dumps(Record.to_json())`` — images referenced by name
    images  Sequence(bytes)  the image files' encoded bytes, in record order (not re-encoded)

Validation is ``records.load_records``: strict stops at the first bad record (a
``RecordError`` naming file, line, id and field); lenient skips bad records — malformed
rows, lines that are not UTF-8, schema errors, missing, undecodable or oversized images,
scores outside 0–4, duplicate ids — and lists every one in the reject file (``{"file",
"line", "offset", "id", "reason", "raw"}`` per row; ``offset``: the line's first byte).

Splits: ``build(..., split='train')`` then ``build(..., split='eval')`` into the same
``out_dir`` gives one dataset with both splits (each call is built in a staging folder and
merged: shard files moved, ``dataset_info.json`` split list updated). Rebuilding a split that
exists is an error unless ``overwrite=True``; a dict ``{split: records_path}`` builds
several splits in one call.

Reading: ``open_split(data_dir, split)`` → a picklable random-access source of decoded
dicts ``{'id': str, 'record': dict, 'images': list[bytes]}``; equivalently
``tfds.data_source(name, split=..., data_dir=...)`` gives the raw (bytes) dicts.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import os
import shutil
import tempfile
import threading
import types
from typing import Iterator, Mapping, Sequence

import numpy as np

from . import records as records_lib

log = logging.getLogger(__name__)

DEFAULT_NAME = "mmalign_records"
VERSION = "1.0.0"
FILE_FORMAT = "array_record"


# --------------------------------------------------------------------------- summary
@dataclasses.dataclass
class SplitSummary:
    split: str
    records_path: str
    n_read: int
    kept: int
    skipped: int
    reject_path: str | None

    def line(self) -> str:
        rej = f" (rejects: {self.reject_path})" if self.skipped else ""
        return (f"{self.split}: kept {self.kept} of {self.n_read} records, "
                f"skipped {self.skipped}{rej}")


@dataclasses.dataclass
class BuildSummary:
    """What ``build`` wrote. ``dataset_dir`` is ``<out_dir>/<name>/<version>``."""
    name: str
    data_dir: str
    dataset_dir: str
    splits: dict[str, SplitSummary]

    @property
    def kept(self) -> int:
        return sum(s.kept for s in self.splits.values())

    @property
    def skipped(self) -> int:
        return sum(s.skipped for s in self.splits.values())

    @property
    def n_read(self) -> int:
        return sum(s.n_read for s in self.splits.values())

    @property
    def reject_path(self) -> str | None:
        """The reject file of a single-split build (None when strict)."""
        paths = [s.reject_path for s in self.splits.values() if s.reject_path]
        return paths[0] if len(paths) == 1 else None

    def __str__(self) -> str:
        lines = [s.line() for s in self.splits.values()]
        if len(lines) == 1:
            return f"{self.name} → {self.dataset_dir}: {lines[0]}"
        return f"{self.name} → {self.dataset_dir}:\n" + "\n".join("  " + x for x in lines)


# --------------------------------------------------------------------------- builder
def _features():
    import tensorflow_datasets as tfds
    return tfds.features.FeaturesDict({
        "id": tfds.features.Text(),
        "record": tfds.features.Text(),
        # Encoded image bytes (jpeg/png/... as on disk). Scalar(object) is TF-free, unlike
        # tfds.features.Image, whose encoding path needs TensorFlow.
        "images": tfds.features.Sequence(tfds.features.Scalar(dtype=np.object_)),
    })


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _builder_class(name: str):
    """A GeneratorBasedBuilder subclass called ``name`` (not registered globally, so any
    number of names can coexist in one process)."""
    import tensorflow_datasets as tfds

    class _RecordsBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version(VERSION)
        RELEASE_NOTES = {str(VERSION): "Records (JSON) + encoded image bytes; mmalign-jax."}

        # TFDS looks for a checksums file next to the builder's code via importlib
        # resources (an optional dependency that may be missing); there is nothing to
        # download, so there is no code path to look at.
        @tfds.core.utils.classproperty
        @classmethod
        def code_path(cls):
            return None

        def __init__(self, *, split_records: Mapping[str, tuple[list, str | None]], **kw):
            self._split_records = split_records
            self._progress = True
            super().__init__(**kw)

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self, features=_features(),
                description="mmalign-jax records: one example per prompt record; the record "
                            "as JSON and its images as encoded bytes.",
                disable_shuffling=True)   # keep record order: example i == record i

        def _split_generators(self, dl_manager):
            del dl_manager
            return {split: self._generate_examples(split)
                    for split in self._split_records}

        def _generate_examples(self, split):
            from tqdm.auto import tqdm
            recs, image_root = self._split_records[split]
            for i, rec in enumerate(tqdm(recs, desc=f"{self.name}/{split}", unit=" records",
                                         disable=not self._progress)):
                images = [_read_bytes(os.path.join(image_root or "", p)) for p in rec.images]
                # Keys are the record position: with disable_shuffling the shards keep it.
                yield i, {"id": rec.id,
                          "record": json.dumps(rec.to_json(), ensure_ascii=False),
                          "images": images}

    cls = types.new_class(
        "MmalignRecords", (_RecordsBuilder,), {"skip_registration": True},
        lambda ns: ns.update({"name": name, "__module__": __name__}))
    return cls


def _reject_path_for(split: str, records_path: str, reject_path, n_splits: int):
    if reject_path is None:
        return None   # load_records' default: <records>.rejects.jsonl
    if isinstance(reject_path, Mapping):
        return reject_path.get(split)
    reject_path = os.fspath(reject_path)
    if n_splits == 1:
        return reject_path
    if "{split}" in reject_path:
        return reject_path.format(split=split)
    stem, ext = os.path.splitext(reject_path)
    return f"{stem}.{split}{ext or '.jsonl'}"


def _dataset_dir(data_dir: str, name: str) -> str:
    return os.path.join(data_dir, name, VERSION)


def _existing_splits(dataset_dir: str) -> dict[str, dict]:
    info_path = os.path.join(dataset_dir, "dataset_info.json")
    if not os.path.exists(info_path):
        return {}
    with open(info_path, encoding="utf-8") as f:
        info = json.load(f)
    return {s["name"]: s for s in info.get("splits", [])}


def _split_files(dataset_dir: str, name: str, split: str) -> list[str]:
    prefix = f"{name}-{split}.{FILE_FORMAT}-"
    return sorted(f for f in os.listdir(dataset_dir) if f.startswith(prefix))


def _merge_into(staged_dir: str, final_dir: str, name: str, splits: Sequence[str]) -> None:
    """Move the staged splits' shards into ``final_dir`` and merge dataset_info.json."""
    if not os.path.exists(os.path.join(final_dir, "dataset_info.json")):
        os.makedirs(os.path.dirname(final_dir), exist_ok=True)
        if os.path.exists(final_dir):          # an empty or leftover folder
            shutil.rmtree(final_dir)
        shutil.move(staged_dir, final_dir)
        return
    with open(os.path.join(final_dir, "features.json"), encoding="utf-8") as f:
        old_features = json.load(f)
    with open(os.path.join(staged_dir, "features.json"), encoding="utf-8") as f:
        new_features = json.load(f)
    if old_features != new_features:
        raise ValueError(f"{final_dir} holds a dataset with different features; build into "
                         "another --out folder or delete it")
    info_path = os.path.join(final_dir, "dataset_info.json")
    with open(info_path, encoding="utf-8") as f:
        info = json.load(f)
    with open(os.path.join(staged_dir, "dataset_info.json"), encoding="utf-8") as f:
        staged_info = json.load(f)
    new_entries = {s["name"]: s for s in staged_info.get("splits", [])}
    for split in splits:
        for fname in _split_files(final_dir, name, split):
            os.remove(os.path.join(final_dir, fname))
        for fname in _split_files(staged_dir, name, split):
            shutil.move(os.path.join(staged_dir, fname), os.path.join(final_dir, fname))
    kept = [s for s in info.get("splits", []) if s["name"] not in new_entries]
    info["splits"] = kept + [new_entries[s] for s in splits if s in new_entries]
    fd, tmp = tempfile.mkstemp(prefix=".dataset_info.", suffix=".tmp", dir=final_dir)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(info, f, indent=2)
    os.replace(tmp, info_path)


def build(records_path: str | Mapping[str, str], image_root: str | None, out_dir: str, *,
          split: str = "train", strict: bool = False,
          reject_path: str | Mapping[str, str] | None = None,
          name: str = DEFAULT_NAME, overwrite: bool = False, fmt: str = "auto",
          progress: bool = True) -> BuildSummary:
    """Validate records and write them as split(s) of the TFDS dataset ``name`` in ``out_dir``.

    records_path: one JSONL/JSON file (written as ``split``), or ``{split: path}``.
    image_root: folder the records' image paths are relative to (default: the records
        file's folder). Every image is checked (exists, PIL decodes it) before writing.
    strict: raise ``records.RecordError`` on the first bad record; else skip bad records
        and list them in ``reject_path`` (default ``<records>.rejects.jsonl``; with several
        splits a str gets ``.{split}`` inserted or may contain ``{split}``).
    overwrite: replace splits that already exist in ``out_dir`` (else ``FileExistsError``).
    Returns a ``BuildSummary`` (kept/skipped per split, reject files, dataset folder).
    """
    import tensorflow_datasets as tfds

    split_paths = (dict(records_path) if isinstance(records_path, Mapping)
                   else {split: os.fspath(records_path)})
    if not split_paths:
        raise ValueError("no records given")
    out_dir = os.path.abspath(os.fspath(out_dir))
    final_dir = _dataset_dir(out_dir, name)
    existing = _existing_splits(final_dir)
    clash = sorted(set(split_paths) & set(existing))
    if clash and not overwrite:
        raise FileExistsError(
            f"{final_dir} already has split(s) {clash}; pass overwrite=True (CLI: --overwrite) "
            "to rebuild them, or choose another --out / --split")

    # 1. Validate (strict raises here, before anything is written).
    loaded: dict[str, tuple[list, str | None]] = {}
    summaries: dict[str, SplitSummary] = {}
    for sp, path in split_paths.items():
        if not os.path.exists(path):
            raise FileNotFoundError(f"records file {path} (split {sp!r}) does not exist")
        root = image_root if image_root is not None else os.path.dirname(os.path.abspath(path))
        res = records_lib.load_records(
            path, image_root=root, strict=strict,
            reject_path=_reject_path_for(sp, path, reject_path, len(split_paths)), fmt=fmt)
        loaded[sp] = (res.records, root)
        summaries[sp] = SplitSummary(sp, path, res.n_read, len(res.records), len(res.rejected),
                                     res.reject_path)
        if not res.records:
            log.warning("split %s: no valid records in %s", sp, path)

    # 2. Write in a staging folder next to the final one, then merge.
    os.makedirs(out_dir, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".staging-{name}-", dir=out_dir)
    from tensorflow_datasets.core.utils import tqdm_utils
    was_active = tqdm_utils._active
    try:
        tqdm_utils._active = False          # our own per-record bar instead of TFDS's three
        builder = _builder_class(name)(split_records=loaded, data_dir=staging,
                                       file_format=FILE_FORMAT)
        cfg = tfds.download.DownloadConfig(
            download_mode=tfds.download.GenerateMode.FORCE_REDOWNLOAD)
        builder._progress = progress
        # TFDS prints "Downloading and preparing dataset Unknown size ..." to stdout for
        # the staging folder; our summary says what was written where.
        with contextlib.redirect_stdout(io.StringIO()):
            builder.download_and_prepare(download_dir=os.path.join(staging, "downloads"),
                                         download_config=cfg)
        _merge_into(_dataset_dir(staging, name), final_dir, name, list(loaded))
    finally:
        tqdm_utils._active = was_active
        shutil.rmtree(staging, ignore_errors=True)
    summary = BuildSummary(name, out_dir, final_dir, summaries)
    log.info("%s", summary)
    return summary


# --------------------------------------------------------------------------- reading
def resolve_dataset_dir(data_dir: str, name: str = DEFAULT_NAME) -> str:
    """``data_dir`` may be the versioned dataset folder itself, ``<root>/<name>`` or the
    root passed to ``build(out_dir=...)``; returns the folder holding dataset_info.json."""
    data_dir = os.path.abspath(os.fspath(data_dir))
    for cand in (data_dir, os.path.join(data_dir, VERSION),
                 os.path.join(data_dir, name, VERSION)):
        if os.path.exists(os.path.join(cand, "dataset_info.json")):
            return cand
    named = os.path.join(data_dir, name)
    if os.path.isdir(named):
        versions = sorted(v for v in os.listdir(named)
                          if os.path.exists(os.path.join(named, v, "dataset_info.json")))
        if versions:
            return os.path.join(named, versions[-1])
    found = sorted(os.listdir(data_dir)) if os.path.isdir(data_dir) else "no such folder"
    raise FileNotFoundError(
        f"no TFDS dataset {name!r} under {data_dir} (contents: {found}); build it with "
        f"`python -m mmalign_jax.data build --records X.jsonl --out {data_dir}`")


_OPEN_LOCK = threading.Lock()


def _text(x) -> str:
    return x.decode("utf-8") if isinstance(x, (bytes, bytearray)) else str(x)


class SplitSource:
    """Random-access, picklable view of one split: ``src[i]`` →
    ``{'id': str, 'record': dict, 'images': list[bytes]}``.

    Also ``src.record(i)`` → ``records.Record`` and ``src.image_bytes(i)`` → list[bytes].
    The underlying TFDS ArrayRecord data source is opened lazily (and re-opened after
    unpickling, e.g. inside a grain worker process).
    """

    def __init__(self, data_dir: str, split: str, name: str = DEFAULT_NAME):
        self.dataset_dir = resolve_dataset_dir(data_dir, name)
        self.split = split
        self.name = name
        splits = _existing_splits(self.dataset_dir)
        if split not in splits:
            raise KeyError(f"split {split!r} not in {self.dataset_dir}; it has "
                           f"{sorted(splits)}")
        self._length = sum(int(n) for n in splits[split].get("shardLengths", []))
        self._ds = None

    def _source(self):
        if self._ds is None:
            # Serialized and warmed up: grain's read threads call this concurrently in a
            # fresh worker process, and TFDS's lazy imports (etils) deadlock when first
            # triggered from two threads at once.
            with _OPEN_LOCK:
                if self._ds is None:
                    import tensorflow_datasets as tfds
                    ds = tfds.builder_from_directory(self.dataset_dir).as_data_source(
                        self.split)
                    if self._length:
                        ds[0]
                    self._ds = ds
        return self._ds

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_ds"] = None
        return state

    def __len__(self) -> int:
        return self._length

    @staticmethod
    def _decode(ex: dict) -> dict:
        return {"id": _text(ex["id"]), "record": json.loads(_text(ex["record"])),
                "images": [bytes(b) for b in ex["images"]]}

    def __getitem__(self, i: int) -> dict:
        i = int(i)
        if not -self._length <= i < self._length:
            raise IndexError(f"index {i} out of range for split {self.split!r} "
                             f"({self._length} examples)")
        return self._decode(self._source()[i % self._length])

    def __getitems__(self, idx: Sequence[int]) -> list[dict]:
        return [self._decode(e) for e in self._source().__getitems__([int(i) for i in idx])]

    def __iter__(self) -> Iterator[dict]:
        for i in range(self._length):
            yield self[i]

    def record(self, i: int) -> records_lib.Record:
        return records_lib.Record.from_json(self[i]["record"], fmt="ours")

    def records(self) -> list[records_lib.Record]:
        """Every record of the split, in order (reads the whole split once)."""
        return [records_lib.Record.from_json(ex["record"], fmt="ours") for ex in self]

    def image_bytes(self, i: int) -> list[bytes]:
        """The encoded images of record ``i`` (skips parsing the record JSON)."""
        i = int(i)
        if not -self._length <= i < self._length:
            raise IndexError(f"index {i} out of range for split {self.split!r}")
        return [bytes(b) for b in self._source()[i % self._length]["images"]]

    def __repr__(self) -> str:
        return f"SplitSource({self.dataset_dir!r}, split={self.split!r}, n={self._length})"


def open_split(data_dir: str, split: str, name: str = DEFAULT_NAME) -> SplitSource:
    """Random-access source of decoded examples of ``split`` (see ``SplitSource``)."""
    return SplitSource(data_dir, split, name)


def splits(data_dir: str, name: str = DEFAULT_NAME) -> dict[str, int]:
    """``{split: number of examples}`` of a built dataset."""
    d = resolve_dataset_dir(data_dir, name)
    return {k: sum(int(n) for n in v.get("shardLengths", []))
            for k, v in _existing_splits(d).items()}
