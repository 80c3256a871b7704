"""Grain loaders: records → fixed-shape numpy batches for SFT and DPO, resumable exactly.

How a loader is put together (``make_loader``)::

    records ─(up front, main process, deterministic)─▶ example list
        SFT:  conversations with an assistant turn  |  mode 'best' (pairs.best_responses)
              | mode 'steerlm' (pairs.steerlm_examples)
        DPO:  pairs.make_pairs(rule, seed, margin)   (DPO-form records pass through)
      each example tokenized once (chat.tokenize / chat.tokenize_prompt_response) — that is
      how too-long examples are found *before* training: a prompt that does not fit is
      never truncated (image tokens cannot be cut) but skipped and listed in
      ``loader.skipped`` (id, reason) and logged; a DPO response longer than
      ``response_len`` is cut at the end (``truncate_responses=True``, listed in
      ``loader.truncated``) or skipped.  Token ids are kept in flat numpy arrays.
      Each image takes the model family's token count; for native-resolution families
      (Qwen2.5-VL) it depends on the image's size, read from its header (nothing decoded),
      and so does the image's patch budget.

    grain.MapDataset.range(N)            global example order:
      .shuffle(seed)                     a permutation per epoch (repeat reseeds each epoch)
      .repeat(num_epochs)                None = forever
      [GroupBySize]                      group_by_size > 0: examples of similar size share
                                         global batches (within windows of that many)
      [:n] / pad to a multiple of the    finite runs: every host gets the same number of
        global batch                     batches (dropped tail, or weight-0 padding rows)
      BatchNeeds                         each element learns the longest prompt/sequence and
                                         response and the largest image of its *global*
                                         batch, so every host picks the same shapes
      [shard_index::shard_count]         per host; host h's batch k holds global positions
                                         (kB+j)·H+h, so the *global* batch k is the same
                                         examples whatever the number of hosts
      .map(Featurize)                    images: load → the family's preprocess_image;
                                         tokens from the table
      .batch(B, batch_fn=Collate)        pad to the batch's shapes
      .to_iter_dataset(ReadOptions)      threads; .mp_prefetch(...) when worker_count > 0

Batches (numpy; B = batch_size per host, I = max_images):

SFT  ``input_ids`` int32[B,T] right-padded with pad_token_id · ``attention_mask`` int32[B,T]
     · ``target_mask`` bool[B,T] (True where input_ids[t] is a trained target token)
     · the family's image arrays (``empty_images``: LLaVA ``pixel_values``
     float32[B,I,S,S,3]; Qwen2.5-VL ``pixel_values`` float32[B,I,P,1176] and
     ``image_grid_thw`` int32[B,I,3]) · ``image_mask`` bool[B,I]
     · ``example_index`` int32[B] (into ``loader.example_ids``; -1 on padding rows)
     · ``weight`` float32[B] (1 real row, 0 padding row).
     T = seq_len, or with ``buckets`` the smallest bucket that fits the global batch's
     longest row. P = the smallest of ``image_buckets`` (default: the family's
     ``image_budgets``) that holds the global batch's largest image.
DPO  ``prompt_ids`` int32[B,P] LEFT-padded · ``prompt_mask`` int32[B,P]
     · ``chosen_ids``/``rejected_ids`` int32[B,R] right-padded (R = response_len, or the
     smallest of ``response_buckets`` that fits) · ``chosen_mask``/
     ``rejected_mask`` int32[B,R] (1 on response tokens, end-of-turn included)
     · image arrays · ``image_mask`` · ``example_index`` · ``weight``
     · ``ref_chosen_logps``/``ref_rejected_logps`` float32[B] when every pair carries
     ``ref_chosen_logp``/``ref_rejected_logp`` or ``ref_logps=`` is given.
     P = prompt_len, or with ``prompt_buckets`` the smallest that fits the global batch.
Text-only examples: image_mask all False, image arrays zero.

So a dataset of mixed image sizes compiles at most len(buckets) × len(image_buckets)
programs per step function; ``loader_stats`` counts shapes and padding.

Resume: ``loader.get_state()`` / ``loader.set_state(state)`` (JSON-serializable; wraps grain's
iterator state with a fingerprint of the example list and the order-defining config, so a
state cannot silently be restored into a different pipeline). Orbax::

    mngr.save(step, args=ocp.args.Composite(state=..., data=loader.checkpoint_args(loader)))
    mngr.restore(step, args=ocp.args.Composite(state=..., data=loader.restore_args(loader)))

Everything that runs in grain workers (``Featurize``, ``Collate``, the image table) is a
top-level, picklable class (grain spawns its worker processes).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import grain
import numpy as np

from . import images as images_lib
from . import records as records_lib

log = logging.getLogger(__name__)

KINDS = ("sft", "dpo")
SFT_MODES = ("conversation", "best", "steerlm")
STATE_VERSION = 1


# --------------------------------------------------------------------------- config
@dataclasses.dataclass
class LoaderConfig:
    """Everything that shapes the batches. Lengths are in tokens, images included."""

    template: str = "vicuna_v1"
    # Images without a model family (`family` None): LLaVA's fixed square images.
    image_size: int = 336
    image_mode: str = "pad"
    image_token_id: int = 32000
    num_image_tokens: int = 576
    # The model family (a `models.family.ModelFamily`) and its config: images are then
    # made, counted and batched by the family (`preprocess_image`, `image_tokens`,
    # `empty_images`; image_size / num_image_tokens unused). A family pickles as its
    # registry name (grain workers look it up), a config as itself.
    family: Any = None
    model_config: Any = None
    # Native-resolution families: the patch budgets of a batch's image slots (increasing;
    # each batch takes the smallest that holds its largest image). None: the family's.
    image_buckets: Sequence[int] | None = None
    # > 0: examples are grouped by size (patches, then tokens) within windows of this many
    # global batches, so a batch's images and rows are alike and pad little; the order of
    # the batches in a window is random (seeded). 0: plain shuffled order.
    group_by_size: int = 0
    max_images: int = 1                         # I; examples with more images are skipped
    # SFT: fixed length, or buckets (each batch padded to the smallest that fits it).
    seq_len: int | None = 2048
    buckets: Sequence[int] | None = None
    # DPO: prompt_len, or prompt_buckets (each batch: the smallest that fits its prompts)
    prompt_len: int = 1024
    prompt_buckets: Sequence[int] | None = None
    response_len: int = 1024
    response_buckets: Sequence[int] | None = None   # as prompt_buckets, for the responses
    truncate_responses: bool = True             # False: too-long responses are skipped
    pad_token_id: int = 0
    batch_size: int = 8                         # per host
    seed: int = 0
    shuffle: bool = True
    num_epochs: int | None = 1                  # None = forever
    drop_remainder: bool = True                 # False: last batch filled with weight-0 rows
    worker_count: int = 0                       # 0 = in-process; >0 = grain worker processes
    worker_buffer_size: int = 2                 # batches buffered per worker process
    read_threads: int = 4                       # threads for the map stage (per process)
    prefetch_buffer_size: int = 8               # elements prefetched by those threads
    # Which examples
    sft_mode: str = "conversation"              # 'conversation' | 'best' | 'steerlm'
    steerlm_format: str = "paper"
    pair_rule: str = "paper"
    pair_seed: int = 0
    pair_margin: int = 2

    def validate(self, kind: str) -> None:
        def need(cond, msg):
            if not cond:
                raise ValueError(f"LoaderConfig: {msg}")

        def increasing(name, b):
            b = list(b)
            need(all(int(x) >= 1 for x in b) and b == sorted(set(b)),
                 f"{name} must be increasing positive sizes, got {b}")
        need(kind in KINDS, f"kind must be one of {KINDS}, got {kind!r}")
        need(self.max_images >= 1, f"max_images must be ≥ 1, got {self.max_images}")
        need(self.batch_size >= 1, f"batch_size must be ≥ 1, got {self.batch_size}")
        need(self.worker_count >= 0, f"worker_count must be ≥ 0, got {self.worker_count}")
        need(self.num_epochs is None or self.num_epochs >= 1,
             f"num_epochs must be ≥ 1 or None (forever), got {self.num_epochs}")
        need(self.group_by_size >= 0, f"group_by_size must be ≥ 0, got {self.group_by_size}")
        if self.family is not None:
            need(self.model_config is not None,
                 f"family {self.family.name!r} needs model_config (the family's model config)")
        else:
            need(self.image_size >= 1, f"image_size must be ≥ 1, got {self.image_size}")
            need(self.num_image_tokens >= 1, "num_image_tokens must be ≥ 1")
        if self.image_buckets:
            increasing("image_buckets", self.image_buckets)
        if kind == "sft":
            need(self.sft_mode in SFT_MODES,
                 f"sft_mode must be one of {SFT_MODES}, got {self.sft_mode!r}")
            if self.buckets:
                increasing("buckets", self.buckets)
            else:
                need(self.seq_len is not None and self.seq_len >= 1,
                     "SFT needs seq_len (or buckets)")
        else:
            need(self.prompt_len >= 1 and self.response_len >= 1,
                 "prompt_len and response_len must be ≥ 1")
            for name in ("prompt_buckets", "response_buckets"):
                if getattr(self, name):
                    increasing(name, getattr(self, name))

    @property
    def max_seq_len(self) -> int:
        return int(max(self.buckets)) if self.buckets else int(self.seq_len)

    @property
    def max_prompt_len(self) -> int:
        return int(max(self.prompt_buckets)) if self.prompt_buckets else int(self.prompt_len)

    @property
    def max_response_len(self) -> int:
        return (int(max(self.response_buckets)) if self.response_buckets
                else int(self.response_len))


# --------------------------------------------------------------------------- token tables
class _Ragged:
    """A list of 1-D arrays stored as one flat array + offsets (compact, cheap to pickle)."""

    def __init__(self, arrays: Sequence[np.ndarray], dtype):
        lengths = np.fromiter((len(a) for a in arrays), np.int64, count=len(arrays))
        self.offsets = np.zeros(len(arrays) + 1, np.int64)
        np.cumsum(lengths, out=self.offsets[1:])
        self.flat = (np.concatenate([np.asarray(a, dtype) for a in arrays])
                     if arrays else np.zeros(0, dtype))

    def __getitem__(self, i: int) -> np.ndarray:
        return self.flat[self.offsets[i]:self.offsets[i + 1]]

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


@dataclasses.dataclass
class ExampleTable:
    """The example list a loader iterates, built once up front (see module docstring)."""
    kind: str
    ids: list[str]
    record_ids: list[str]
    record_index: np.ndarray              # int64[N]: which source record holds the images
    num_images: np.ndarray                # int32[N]
    tokens: dict[str, _Ragged]            # sft: input_ids, target_mask; dpo: prompt, chosen, rejected
    ref_logps: dict[str, np.ndarray] | None = None   # 'chosen'/'rejected' float32[N]
    image_tokens: _Ragged | None = None   # tokens of each image, in order (None: none known)
    patches: np.ndarray | None = None     # int32[N]: the largest image budget of the example

    def __len__(self) -> int:
        return len(self.ids)

    def needs(self) -> np.ndarray:
        """int64[N, 3]: what sets a batch's padded shapes — the token length (SFT:
        input_ids; DPO: the prompt), the longer response (DPO; 0 for SFT) and the largest
        image budget."""
        n = len(self)
        if self.kind == "sft":
            length, resp = self.tokens["input_ids"].lengths(), np.zeros(n, np.int64)
        else:
            length = self.tokens["prompt"].lengths()
            resp = np.maximum(self.tokens["chosen"].lengths(), self.tokens["rejected"].lengths())
        patches = np.zeros(n, np.int64) if self.patches is None else self.patches
        return np.stack([length, resp, patches], axis=1).astype(np.int64)


# --------------------------------------------------------------------------- images
class RecordImages:
    """Image references per record, for the map stage: either a TFDS split source (refs are
    the stored encoded bytes) or in-memory records (refs are file paths)."""

    def __init__(self, source=None, paths: Sequence[Sequence[str]] | None = None):
        self.source = source
        self.paths = [list(p) for p in paths] if paths is not None else None

    def __call__(self, record_index: int) -> list:
        if self.source is not None:
            return self.source.image_bytes(int(record_index))
        return self.paths[int(record_index)]

    def sizes(self, record_index: int) -> list[tuple[int, int]]:
        """`(width, height)` of each image of a record, from the headers (no decoding)."""
        return [image_header_size(ref) for ref in self(record_index)]


def image_header_size(ref) -> tuple[int, int]:
    """`(width, height)` of an image (path or encoded bytes) as PIL opens it, without
    decoding the pixels; ValueError naming the image if it cannot be read."""
    import io
    from PIL import Image
    what = ref if isinstance(ref, str) else f"<{len(ref)} stored bytes>"
    try:
        with Image.open(ref if isinstance(ref, str) else io.BytesIO(ref)) as im:
            return tuple(int(x) for x in im.size)
    except (OSError, ValueError, SyntaxError) as e:
        raise ValueError(f"image {what}: cannot read its size ({type(e).__name__}: {e})") from None


def default_image_loader(ref):
    """bytes or path → PIL image (``images.load_image``)."""
    return images_lib.load_image(ref)


class ImageSpec:
    """How a loader makes, counts and batches images: the model family's functions
    (`LoaderConfig.family`) or, without one, LLaVA's fixed `image_size` squares."""

    def __init__(self, cfg: LoaderConfig):
        self.cfg = cfg
        self.family = cfg.family

    @property
    def native(self) -> bool:
        """Token counts and patch budgets depend on each image's size."""
        return self.family is not None and bool(self.family.native_resolution)

    def tokens(self, size=None) -> int:
        if self.family is None:
            return int(self.cfg.num_image_tokens)
        return int(self.family.image_tokens(self.cfg.model_config, size))

    def budget_for_size(self, size) -> int:
        return int(self.family.image_budget_for_size(self.cfg.model_config, size)) \
            if self.native else 0

    def buckets(self) -> tuple:
        """The slot budgets batches are padded to (() for fixed-size images)."""
        if not self.native:
            return ()
        if self.cfg.image_buckets:
            return tuple(int(b) for b in self.cfg.image_buckets)
        return tuple(int(b) for b in self.family.image_budgets(self.cfg.model_config))

    def bucket(self, need: int) -> int:
        buckets = self.buckets()
        if not buckets:
            return 0
        for b in buckets:
            if need <= b:
                return b
        raise ValueError(f"an image needs {need} patches, more than the largest image "
                         f"bucket {buckets[-1]}")   # unreachable: checked up front

    def preprocess(self, image) -> dict:
        c = self.cfg
        if self.family is None:
            return {"pixel_values": images_lib.preprocess(image, c.image_size, mode=c.image_mode)}
        return self.family.preprocess_image(c.model_config, image, c.image_mode)

    def empty(self, batch: int, slots: int, budget: int) -> dict:
        c = self.cfg
        if self.family is None:
            return {"pixel_values": np.zeros((batch, slots, c.image_size, c.image_size, 3),
                                             np.float32)}
        return self.family.empty_images(c.model_config, batch, slots, budget)

    def place(self, slots: dict, row: int, slot: int, arrays: dict) -> None:
        if self.family is None:
            slots["pixel_values"][row, slot] = arrays["pixel_values"]
        else:
            self.family.place_image(slots, row, slot, arrays)


# --------------------------------------------------------------------------- worker-side ops
class Featurize:
    """`(global example index or -1 for a padding row, *the global batch's needs: longest
    length, longest response, largest image budget)` → one unpadded example dict."""

    def __init__(self, table: ExampleTable, record_images: RecordImages, cfg: LoaderConfig,
                 image_loader: Callable = default_image_loader):
        self.table, self.record_images, self.cfg = table, record_images, cfg
        self.image_loader = image_loader
        self.images = ImageSpec(cfg)

    def _images(self, idx: int) -> tuple[list[dict], np.ndarray]:
        c, t = self.cfg, self.table
        mask = np.zeros((c.max_images,), bool)
        out: list[dict] = []
        if idx < 0 or t.num_images[idx] == 0:
            return out, mask
        refs = self.record_images(t.record_index[idx])
        counts = t.image_tokens[idx] if t.image_tokens is not None else None
        for j, ref in enumerate(refs[:c.max_images]):
            try:
                img = self.image_loader(ref)
                arrays = self.images.preprocess(img)
                if self.images.native and counts is not None and \
                        self.images.tokens(img.size) != int(counts[j]):
                    raise ValueError(
                        f"decoded size {img.size} gives {self.images.tokens(img.size)} image "
                        f"tokens, its header {int(counts[j])}; the prompt would misplace them")
            except Exception as e:
                what = ref if isinstance(ref, str) else f"<{len(ref)} stored bytes>"
                raise ValueError(f"example {t.ids[idx]!r} (record "
                                 f"{t.record_ids[idx]!r}) image {j} {what}: "
                                 f"{type(e).__name__}: {e}") from e
            out.append(arrays)
            mask[j] = True
        return out, mask

    def __call__(self, item) -> dict:
        idx, *needs = (int(x) for x in item)
        t = self.table
        images, imask = self._images(idx)
        out = {"images": images, "image_mask": imask, "batch_needs": needs,
               "example_index": np.int32(idx), "weight": np.float32(idx >= 0)}
        if t.kind == "sft":
            for k in ("input_ids", "target_mask"):
                out[k] = t.tokens[k][idx] if idx >= 0 else t.tokens[k].flat[:0]
        else:
            for k in ("prompt", "chosen", "rejected"):
                out[k] = t.tokens[k][idx] if idx >= 0 else t.tokens[k].flat[:0]
            if t.ref_logps is not None:
                for k in ("chosen", "rejected"):
                    out[f"ref_{k}_logps"] = np.float32(t.ref_logps[k][idx] if idx >= 0 else 0.0)
        return out


def _bucket(longest: int, buckets: Sequence[int] | None, fixed: int) -> int:
    """The smallest bucket that holds `longest` (`fixed` without buckets)."""
    if not buckets:
        return int(fixed)
    for b in buckets:
        if longest <= b:
            return int(b)
    return int(buckets[-1])   # unreachable: longer examples were skipped up front


class Collate:
    """List of Featurize outputs → one batch padded to the shapes of its global batch
    (rows beyond the list are padding)."""

    def __init__(self, kind: str, cfg: LoaderConfig):
        self.kind, self.cfg = kind, cfg
        self.images = ImageSpec(cfg)

    def _common(self, rows: Sequence[dict]) -> dict:
        c, B = self.cfg, self.cfg.batch_size
        budget = self.images.bucket(max((r["batch_needs"][2] for r in rows), default=0))
        out = self.images.empty(B, c.max_images, budget)
        out.update(image_mask=np.zeros((B, c.max_images), bool),
                   example_index=np.full((B,), -1, np.int32),
                   weight=np.zeros((B,), np.float32))
        for i, r in enumerate(rows):
            for j, arrays in enumerate(r["images"]):
                self.images.place(out, i, j, arrays)
            for k in ("image_mask", "example_index", "weight"):
                out[k][i] = r[k]
        return out

    def __call__(self, rows: Sequence[dict]) -> dict:
        c, B = self.cfg, self.cfg.batch_size
        out = self._common(rows)
        longest, resp = (max((r["batch_needs"][k] for r in rows), default=0) for k in (0, 1))
        if self.kind == "sft":
            T = _bucket(longest, c.buckets, c.seq_len)
            ids = np.full((B, T), c.pad_token_id, np.int32)
            att = np.zeros((B, T), np.int32)
            tgt = np.zeros((B, T), bool)
            for i, r in enumerate(rows):
                n = len(r["input_ids"])
                ids[i, :n] = r["input_ids"]
                att[i, :n] = 1
                tgt[i, :n] = r["target_mask"]
            out.update(input_ids=ids, attention_mask=att, target_mask=tgt)
            return out
        P = _bucket(longest, c.prompt_buckets, c.prompt_len)
        R = _bucket(resp, c.response_buckets, c.response_len)
        p_ids = np.full((B, P), c.pad_token_id, np.int32)
        p_mask = np.zeros((B, P), np.int32)
        resp = {k: (np.full((B, R), c.pad_token_id, np.int32), np.zeros((B, R), np.int32))
                for k in ("chosen", "rejected")}
        for i, r in enumerate(rows):
            n = len(r["prompt"])
            if n:
                p_ids[i, P - n:] = r["prompt"]
                p_mask[i, P - n:] = 1
            for k, (ids, mask) in resp.items():
                m = len(r[k])
                ids[i, :m] = r[k]
                mask[i, :m] = 1
        out.update(prompt_ids=p_ids, prompt_mask=p_mask,
                   chosen_ids=resp["chosen"][0], chosen_mask=resp["chosen"][1],
                   rejected_ids=resp["rejected"][0], rejected_mask=resp["rejected"][1])
        if rows and "ref_chosen_logps" in rows[0]:
            for k in ("ref_chosen_logps", "ref_rejected_logps"):
                v = np.zeros((B,), np.float32)
                for i, r in enumerate(rows):
                    v[i] = r[k]
                out[k] = v
        return out


# --------------------------------------------------------------------------- grain helpers
class PadTo(grain.MapDataset):
    """``parent`` followed by ``length - len(parent)`` padding elements (-1)."""

    def __init__(self, parent, length: int):
        super().__init__(parent)
        self._n = len(parent)
        self._length = int(length)

    def __len__(self):
        return self._length

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        index = int(index)
        return self._parent[index] if index < self._n else -1

    def __str__(self):
        return f"PadTo(length={self._length})"


class _Windowed(grain.MapDataset):
    """Base of the order-aware stages below: element k is computed from the window of the
    parent's elements holding it (`_range`), cached per window (deterministic, so a cache
    miss in another thread or worker process computes the same)."""

    _CACHE = 4

    def __init__(self, parent, window: int):
        super().__init__(parent)
        self._n = len(parent)
        self._window = int(window)
        self._cache: dict = {}

    def __len__(self):
        return self._n

    def __getstate__(self):
        return {**self.__dict__, "_cache": {}}

    def _range(self, index: int) -> tuple[int, int]:
        """[lo, hi): the window holding `index`."""
        lo = index // self._window * self._window
        return lo, min(lo + self._window, self._n)

    def _block(self, lo: int, hi: int):
        got = self._cache.get(lo)
        if got is None:
            got = self._compute(lo, [self._parent[i] for i in range(lo, hi)])
            if len(self._cache) >= self._CACHE:
                self._cache.pop(next(iter(self._cache)), None)
            self._cache[lo] = got
        return got

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        index = int(index)
        lo, hi = self._range(index)
        return self._item(self._block(lo, hi), index - lo)


class GroupBySize(_Windowed):
    """Reorder the parent (shuffled example indices, `epoch` of them per epoch) within
    windows of `batches` global batches so that global batches hold examples of similar
    size: sorted by (patches, tokens, response tokens), cut into global batches, the
    batches in a random order (seeded by the window's start). Windows start at global
    batch boundaries and never cross an epoch (an example never meets itself in a batch),
    so an epoch's first and last windows may be shorter; positions of a window that do not
    fill a whole global batch keep their place (what `drop_remainder` drops stays a random
    choice)."""

    def __init__(self, parent, batches: int, global_batch: int, needs: np.ndarray, seed: int,
                 epoch: int):
        super().__init__(parent, int(batches) * int(global_batch))
        self._gb, self._seed, self._epoch = int(global_batch), int(seed), int(epoch)
        self._needs = needs

    def _range(self, index: int) -> tuple[int, int]:
        start = index // self._epoch * self._epoch
        end = min(start + self._epoch, self._n)
        first = -(-start // self._gb) * self._gb    # windows start at global batch bounds
        if index < first:   # the epoch's first positions finish a global batch: as they are
            return start, min(first, end)
        lo = first + (index - first) // self._window * self._window
        return lo, min(lo + self._window, end)

    def _compute(self, lo: int, block: list):
        whole = len(block) // self._gb * self._gb
        head = np.asarray(block[:whole], np.int64)
        n = self._needs[head]
        order = np.lexsort((n[:, 1], n[:, 0], n[:, 2]))   # by patches, then tokens
        chunks = head[order].reshape(-1, self._gb)
        perm = np.random.default_rng([self._seed, lo]).permutation(len(chunks))
        return np.concatenate([chunks[perm].reshape(-1), np.asarray(block[whole:], np.int64)])

    def _item(self, block, i):
        return int(block[i])

    def __str__(self):
        return f"GroupBySize(window={self._window}, epoch={self._epoch})"


class BatchNeeds(_Windowed):
    """Element k → `(example index, *needs)`: the column maxima of `needs [N, K]`
    (`ExampleTable.needs`) over the global batch holding k (padding elements, -1, count for
    nothing), so every host pads its part of a global batch to the same shapes."""

    def __init__(self, parent, global_batch: int, needs: np.ndarray):
        super().__init__(parent, global_batch)
        self._needs = needs

    def _compute(self, lo: int, block: list):
        idx = np.asarray([i for i in block if i >= 0], np.int64)
        top = (self._needs[idx].max(axis=0) if idx.size
               else np.zeros(self._needs.shape[1], np.int64))
        return block, tuple(int(x) for x in top)

    def _item(self, block, i):
        members, top = block
        return (int(members[i]),) + top

    def __str__(self):
        return f"BatchNeeds(global_batch={self._window})"


# --------------------------------------------------------------------------- example lists
def _as_records(source_or_records) -> tuple[list[records_lib.Record], RecordImages | None]:
    """(records, images from the source or None when images come from paths)."""
    if isinstance(source_or_records, records_lib.LoadResult):
        return list(source_or_records.records), None
    if hasattr(source_or_records, "records") and hasattr(source_or_records, "image_bytes"):
        return source_or_records.records(), RecordImages(source=source_or_records)
    recs = list(source_or_records)
    bad = [type(r).__name__ for r in recs if not isinstance(r, records_lib.Record)]
    if bad:
        raise TypeError(f"make_loader takes a tfds_builder.open_split(...) source, a LoadResult "
                        f"or a list of records.Record; got items of type {bad[0]}")
    return recs, None


def _record_lookup(recs: Sequence[records_lib.Record]) -> dict[str, int]:
    lookup: dict[str, int] = {}
    for i, r in enumerate(recs):
        if r.id in lookup:
            raise ValueError(f"duplicate record id {r.id!r} (positions {lookup[r.id]} and {i}); "
                             "load records with records.load_records, which rejects duplicates")
        lookup[r.id] = i
    return lookup


def _tok_kwargs(cfg: LoaderConfig, counts) -> dict:
    return dict(template=cfg.template, image_token_id=cfg.image_token_id,
                num_image_tokens=counts)


class _ImageCounts:
    """Per example: the token count of each image and the largest patch budget. With a
    native-resolution family they come from the images' sizes (headers read once per
    record); otherwise every image takes the fixed count (passed to `chat` as one int)."""

    def __init__(self, cfg: LoaderConfig, rec_images: RecordImages | None):
        self.spec = ImageSpec(cfg)
        self.rec_images = rec_images
        self._sizes: dict[int, list] = {}
        buckets = self.spec.buckets()
        self.largest = buckets[-1] if buckets else 0

    def __call__(self, record_index: int, n_img: int):
        """(counts for `chat.tokenize`, per-image counts, largest budget); ValueError when
        an image's size cannot be read."""
        if not self.spec.native:
            n = self.spec.tokens()
            return n, [n] * n_img, 0
        ri = int(record_index)
        if ri not in self._sizes:
            self._sizes[ri] = self.rec_images.sizes(ri)
        sizes = self._sizes[ri][:n_img]
        counts = [self.spec.tokens(sz) for sz in sizes]
        budgets = [self.spec.budget_for_size(sz) for sz in sizes]
        for sz, b in zip(sizes, budgets):
            if b > self.largest:
                raise _TooLargeImage(
                    f"an image of {sz[0]}x{sz[1]} (width x height) needs {b} patches, more "
                    f"than the largest image bucket {self.largest} (record {ri}); raise "
                    "image_buckets or lower the family's max_pixels")
        return counts, counts, max(budgets, default=0)

    def describe(self, counts) -> str:
        if isinstance(counts, int):
            return f"× {counts} tokens"
        return f"of {'+'.join(map(str, counts))} tokens"


class _TooLargeImage(ValueError):
    """An image the largest patch bucket cannot hold: a configuration error, raised."""


def _sft_examples(recs, cfg: LoaderConfig, skipped: list) -> list[tuple[records_lib.Record, int]]:
    from . import pairs as pairs_lib
    lookup = _record_lookup(recs)
    if cfg.sft_mode == "conversation":
        out, other = [], []
        for i, r in enumerate(recs):
            if any(t["role"] == "assistant" for t in r.conversation):
                out.append((r, i))
            else:
                other.append(r.id)
        if other:
            # Not SFT examples at all (prompts with candidate responses): counted, not
            # "skipped" — they would be examples under sft_mode 'best' or 'steerlm'.
            log.info("sft_mode='conversation': %d of %d records have no assistant turn and "
                     "are not SFT examples (e.g. %s); sft_mode='best'/'steerlm' trains on "
                     "their responses", len(other), len(recs), other[:3])
        return out
    exs = (pairs_lib.best_responses(recs) if cfg.sft_mode == "best"
           else pairs_lib.steerlm_examples(recs, cfg.steerlm_format))
    return [(e, lookup[e.meta.get("record_id", e.id)]) for e in exs]


def _sft_table(recs, cfg: LoaderConfig, tokenizer, skipped: list,
               image_counts: _ImageCounts) -> ExampleTable:
    from . import chat
    limit = cfg.max_seq_len
    ids, rids, ridx, nimg, toks, masks, per_image, patches = [], [], [], [], [], [], [], []
    for ex, ri in _sft_examples(recs, cfg, skipped):
        rid = ex.meta.get("record_id", ex.id) if cfg.sft_mode != "conversation" else ex.id
        n_img = len(ex.images)
        if n_img > cfg.max_images:
            skipped.append({"id": ex.id, "record_id": rid,
                            "reason": f"{n_img} images > max_images {cfg.max_images}"})
            continue
        try:
            counts, each, budget = image_counts(ri, n_img)
            tok = chat.tokenize(ex.conversation, tokenizer, **_tok_kwargs(cfg, counts),
                                max_length=None)
        except _TooLargeImage:
            raise
        except ValueError as e:   # ExampleTooLong, TokenizationMismatch, malformed turns
            skipped.append({"id": ex.id, "record_id": rid,
                            "reason": f"{type(e).__name__}: {e}"})
            continue
        input_ids = np.asarray(tok.input_ids, np.int32)
        target = np.asarray(tok.target_mask, bool)
        if len(input_ids) > limit:
            skipped.append({"id": ex.id, "record_id": rid, "reason": (
                f"{len(input_ids)} tokens > {'largest bucket' if cfg.buckets else 'seq_len'} "
                f"{limit} ({n_img} image(s) {image_counts.describe(counts)} included)")})
            continue
        if not target.any():
            skipped.append({"id": ex.id, "record_id": rid, "reason": "no target tokens"})
            continue
        ids.append(ex.id), rids.append(rid), ridx.append(ri), nimg.append(n_img)
        toks.append(input_ids), masks.append(target)
        per_image.append(np.asarray(each, np.int32)), patches.append(budget)
    return ExampleTable("sft", ids, rids, np.asarray(ridx, np.int64), np.asarray(nimg, np.int32),
                        {"input_ids": _Ragged(toks, np.int32),
                         "target_mask": _Ragged(masks, bool)},
                        image_tokens=_Ragged(per_image, np.int32),
                        patches=np.asarray(patches, np.int32))


def _dpo_table(recs, cfg: LoaderConfig, tokenizer, skipped: list, truncated: list,
               ref_logps: Mapping[str, Any] | None, image_counts: _ImageCounts) -> ExampleTable:
    from . import chat
    from . import pairs as pairs_lib
    lookup = _record_lookup(recs)
    prs = pairs_lib.make_pairs(recs, rule=cfg.pair_rule, seed=cfg.pair_seed,
                               margin=cfg.pair_margin)
    ids, rids, ridx, nimg, per_image, patches = [], [], [], [], [], []
    toks = {"prompt": [], "chosen": [], "rejected": []}
    refs: dict[str, list] = {"chosen": [], "rejected": []}
    have_refs = bool(prs) and all(p.get("ref_chosen_logp") is not None
                                  and p.get("ref_rejected_logp") is not None for p in prs)
    R = cfg.max_response_len
    for p in prs:
        n_img = len(p["images"])
        if n_img > cfg.max_images:
            skipped.append({"id": p["id"], "record_id": p["record_id"],
                            "reason": f"{n_img} images > max_images {cfg.max_images}"})
            continue
        try:
            counts, each, budget = image_counts(lookup[p["record_id"]], n_img)
            pc, rc = chat.tokenize_prompt_response(p["conversation"], p["chosen"], tokenizer,
                                                   **_tok_kwargs(cfg, counts))
            pr, rr = chat.tokenize_prompt_response(p["conversation"], p["rejected"], tokenizer,
                                                   **_tok_kwargs(cfg, counts))
        except _TooLargeImage:
            raise
        except ValueError as e:   # ExampleTooLong, TokenizationMismatch, malformed turns
            skipped.append({"id": p["id"], "record_id": p["record_id"],
                            "reason": f"{type(e).__name__}: {e}"})
            continue
        pc, pr = np.asarray(pc, np.int32), np.asarray(pr, np.int32)
        rc, rr = np.asarray(rc, np.int32), np.asarray(rr, np.int32)
        if not np.array_equal(pc, pr):
            skipped.append({"id": p["id"], "record_id": p["record_id"],
                            "reason": "prompt tokenizes differently with the chosen and the "
                                      "rejected response"})
            continue
        if len(pc) > cfg.max_prompt_len:
            what = "largest prompt bucket" if cfg.prompt_buckets else "prompt_len"
            skipped.append({"id": p["id"], "record_id": p["record_id"], "reason": (
                f"prompt {len(pc)} tokens > {what} {cfg.max_prompt_len} "
                f"({n_img} image(s) {image_counts.describe(counts)} included)")})
            continue
        long = {k: len(v) for k, v in (("chosen", rc), ("rejected", rr)) if len(v) > R}
        if long and not cfg.truncate_responses:
            skipped.append({"id": p["id"], "record_id": p["record_id"], "reason": ", ".join(
                f"{k} response {n} tokens > response_len {R}" for k, n in long.items())})
            continue
        for k, n in long.items():
            truncated.append({"id": p["id"], "side": k, "tokens": n, "kept": R})
        ids.append(p["id"]), rids.append(p["record_id"]), ridx.append(lookup[p["record_id"]])
        nimg.append(n_img), per_image.append(np.asarray(each, np.int32)), patches.append(budget)
        toks["prompt"].append(pc), toks["chosen"].append(rc[:R]), toks["rejected"].append(rr[:R])
        if have_refs:
            refs["chosen"].append(float(p["ref_chosen_logp"]))
            refs["rejected"].append(float(p["ref_rejected_logp"]))
    table_refs = None
    if ref_logps is not None:
        table_refs = _checked_ref_logps(ref_logps, len(ids))
    elif have_refs:
        table_refs = {k: np.asarray(v, np.float32) for k, v in refs.items()}
        if truncated:
            log.warning("%d pair(s) had a response truncated to response_len %d: their "
                        "stored reference log-probs cover the full response; recompute them "
                        "or raise response_len", len({t['id'] for t in truncated}), R)
    elif prs and any(p.get("ref_chosen_logp") is not None for p in prs):
        log.warning("only some pairs carry ref_chosen_logp/ref_rejected_logp: not used")
    return ExampleTable("dpo", ids, rids, np.asarray(ridx, np.int64), np.asarray(nimg, np.int32),
                        {k: _Ragged(v, np.int32) for k, v in toks.items()}, table_refs,
                        image_tokens=_Ragged(per_image, np.int32),
                        patches=np.asarray(patches, np.int32))


def _checked_ref_logps(ref_logps: Mapping[str, Any], n: int) -> dict[str, np.ndarray]:
    out = {}
    for k in ("chosen", "rejected"):
        if k not in ref_logps:
            raise ValueError(f"ref_logps needs keys 'chosen' and 'rejected', got "
                             f"{sorted(ref_logps)}")
        a = np.asarray(ref_logps[k], np.float32).reshape(-1)
        if len(a) != n:
            raise ValueError(
                f"ref_logps[{k!r}] has {len(a)} entries but the loader has {n} "
                "examples; compute them with a loader built from the same data and the "
                "same LoaderConfig lengths (they are indexed by example_index)")
        out[k] = a
    return out


class Examples(NamedTuple):
    """A split tokenized and paired once (`prepare_examples`), from which any number of
    loaders are made (`make_loader(..., examples=)`): shuffled or not, other epochs, with
    reference log-probs attached — without tokenizing the split again."""
    kind: str
    table: ExampleTable
    images: "RecordImages"
    skipped: list
    truncated: list

    def with_ref_logps(self, ref_logps: Mapping[str, Any]) -> "Examples":
        if self.kind != "dpo":
            raise ValueError("ref_logps is for DPO loaders")
        table = dataclasses.replace(self.table,
                                    ref_logps=_checked_ref_logps(ref_logps, len(self.table)))
        return self._replace(table=table)


def prepare_examples(kind: str, source_or_records, tokenizer, pcfg: LoaderConfig, *,
                     image_root: str | None = None,
                     ref_logps: Mapping[str, Any] | None = None) -> Examples:
    """The up-front part of `make_loader` (validation, pairing, tokenization), kept for reuse."""
    table, rec_images, recs, skipped, truncated = build_examples(
        kind, source_or_records, tokenizer, pcfg, ref_logps=ref_logps, image_root=image_root)
    return Examples(kind, table, rec_images, skipped, truncated)


def build_examples(kind: str, source_or_records, tokenizer, pcfg: LoaderConfig, *,
                   ref_logps: Mapping[str, Any] | None = None, image_root: str | None = None):
    """(ExampleTable, RecordImages, records, skipped, truncated) — the up-front part of
    ``make_loader``, usable alone (e.g. to count examples). Records given in memory read
    their images from ``image_root``/path."""
    from . import chat
    pcfg.validate(kind)
    chat.get_template(pcfg.template)      # unknown template: fail here, not per example
    recs, rec_images = _as_records(source_or_records)
    if rec_images is None:
        root = image_root or ""
        rec_images = RecordImages(paths=[[os.path.join(root, p) for p in r.images]
                                         for r in recs])
    counts = _ImageCounts(pcfg, rec_images)
    skipped: list[dict] = []
    truncated: list[dict] = []
    if kind == "sft":
        if ref_logps is not None:
            raise ValueError("ref_logps is for DPO loaders")
        table = _sft_table(recs, pcfg, tokenizer, skipped, counts)
    else:
        table = _dpo_table(recs, pcfg, tokenizer, skipped, truncated, ref_logps, counts)
    return table, rec_images, recs, skipped, truncated


# --------------------------------------------------------------------------- loader
def _fingerprint(kind: str, table: ExampleTable, cfg: LoaderConfig, shard: tuple[int, int]):
    h = hashlib.sha256()
    for i in table.ids:
        h.update(i.encode("utf-8"))
        h.update(b"\0")
    out = {"kind": kind, "num_examples": len(table), "ids_sha256": h.hexdigest()[:16],
           "batch_size": cfg.batch_size, "seed": cfg.seed, "shuffle": cfg.shuffle,
           "num_epochs": cfg.num_epochs, "drop_remainder": cfg.drop_remainder,
           "shard": list(shard), "worker_count": cfg.worker_count}
    if cfg.group_by_size:   # order-defining; absent when off (states saved before it match)
        out["group_by_size"] = cfg.group_by_size
    return out


class Loader:
    """Iterator of numpy batches with exact resume (``get_state``/``set_state``).

    Attributes: ``num_examples`` (kept examples), ``example_ids`` (``example_index`` →
    id), ``skipped`` (list of {id, record_id, reason}: examples not trained on, with why),
    ``truncated`` (DPO responses cut to response_len), ``steps_per_epoch`` (batches per
    host per epoch: N / global batch, floored when drop_remainder else rounded up),
    ``total_steps`` (batches this host yields; None when num_epochs is None),
    ``shard_index``/``shard_count``, ``global_batch_size``, ``dataset`` (the grain
    IterDataset), ``iterator`` (its grain DatasetIterator).
    """

    def __init__(self, kind, cfg, table, skipped, truncated, dataset, map_dataset,
                 shard_index, shard_count):
        self.kind, self.config, self.table = kind, cfg, table
        self.skipped, self.truncated = skipped, truncated
        self.dataset = dataset
        self.shard_index, self.shard_count = shard_index, shard_count
        self.global_batch_size = cfg.batch_size * shard_count
        n = len(table)
        self.num_examples = n
        self.example_ids = table.ids
        self.steps_per_epoch = (n // self.global_batch_size if cfg.drop_remainder
                                else -(-n // self.global_batch_size))
        self.total_steps = len(map_dataset) if cfg.num_epochs is not None else None
        self.fingerprint = _fingerprint(kind, table, cfg, (shard_index, shard_count))
        self.iterator = iter(dataset)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        return next(self.iterator)

    def get_state(self) -> dict:
        return {"version": STATE_VERSION, "fingerprint": self.fingerprint,
                "iterator": self.iterator.get_state()}

    def set_state(self, state: Mapping, check: bool = True) -> None:
        if isinstance(state, (bytes, str)):
            state = json.loads(state)
        if "iterator" not in state:
            raise ValueError("not a loader.Loader state (no 'iterator' key)")
        if check:
            saved = state.get("fingerprint", {})
            diff = {k: (saved.get(k), v) for k, v in self.fingerprint.items()
                    if saved.get(k) != v}
            if diff:
                raise ValueError(
                    "data iterator state was saved by a different pipeline — (saved, now): "
                    + ", ".join(f"{k}={a!r}/{b!r}" for k, (a, b) in diff.items())
                    + ". Restoring would not continue the same example order; rebuild the "
                      "loader as it was, or pass check=False to force it")
        self.iterator.set_state(state["iterator"])

    def restart(self) -> "Loader":
        """Back to the first batch: one finite loader (e.g. the eval split) reused for every
        pass instead of re-tokenizing the split each time."""
        self.close()
        self.iterator = iter(self.dataset)
        return self

    def close(self) -> None:
        close = getattr(self.iterator, "close", None)
        if close is not None:
            close()

    def skipped_report(self) -> str:
        lines = [f"{len(self.skipped)} example(s) skipped, {len(self.truncated)} response(s) "
                 f"truncated; {self.num_examples} kept"]
        lines += [f"  skipped {s['id']}: {s['reason']}" for s in self.skipped]
        lines += [f"  truncated {t['id']} {t['side']}: {t['tokens']} → {t['kept']} tokens"
                  for t in self.truncated]
        return "\n".join(lines)


def _ensure_absl_flags_parsed() -> None:
    """grain's worker processes read absl flags; outside an absl app (pytest, notebooks,
    plain scripts) they were never parsed and reading them raises. Mark them parsed with
    their defaults (an absl app parses its own argv before this and is unaffected)."""
    from absl import flags
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def make_loader(kind: str, source_or_records, tokenizer, pcfg: LoaderConfig, *,
                image_loader: Callable = default_image_loader, image_root: str | None = None,
                ref_logps: Mapping[str, Any] | None = None,
                shard_index: int | None = None, shard_count: int | None = None,
                examples: Examples | None = None) -> Loader:
    """A grain loader of fixed-shape numpy batches (layout: module docstring).

    kind: 'sft' (examples per ``pcfg.sft_mode``) or 'dpo' (pairs per ``pcfg.pair_*``).
    source_or_records: ``tfds_builder.open_split(data_dir, split)`` (images from the stored
        bytes), a ``records.LoadResult`` or a list of ``records.Record`` (images read from
        ``image_root``/path).
    tokenizer: what ``chat.tokenize`` takes (a transformers tokenizer, the demo tokenizer).
    image_loader: picklable callable, image ref (bytes or path) → PIL image.
    ref_logps: DPO only, ``{'chosen': [N], 'rejected': [N]}`` indexed by example_index.
    shard_index/shard_count: default ``jax.process_index()/jax.process_count()``.
    examples: a split already prepared by ``prepare_examples`` with the same lengths,
        template and pair settings (source_or_records, tokenizer and ref_logps are then
        unused; attach reference log-probs with ``examples.with_ref_logps``).
    """
    if (shard_index is None) != (shard_count is None):
        raise ValueError("give both shard_index and shard_count, or neither")
    if shard_index is None:
        import jax
        shard_index, shard_count = jax.process_index(), jax.process_count()
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index {shard_index} not in [0, {shard_count})")
    if examples is None:
        examples = prepare_examples(kind, source_or_records, tokenizer, pcfg,
                                    image_root=image_root, ref_logps=ref_logps)
    elif examples.kind != kind:
        raise ValueError(f"examples were prepared for {examples.kind!r}, not {kind!r}")
    else:
        pcfg.validate(kind)
    table, rec_images = examples.table, examples.images
    skipped, truncated = examples.skipped, examples.truncated
    n = len(table)
    if skipped or truncated:
        log.warning("%s loader: %d examples, %d skipped, %d truncated response(s); first: %s",
                    kind, n, len(skipped), len(truncated),
                    "; ".join(f"{s['id']}: {s['reason']}" for s in skipped[:3])
                    or "; ".join(f"{t['id']} {t['side']}" for t in truncated[:3]))
    if n == 0:
        raise ValueError(f"no {kind} examples left ({len(skipped)} skipped); first reasons: "
                         + "; ".join(f"{s['id']}: {s['reason']}" for s in skipped[:5]))
    gb = pcfg.batch_size * shard_count
    ds = grain.MapDataset.range(n)
    if pcfg.shuffle:
        ds = ds.shuffle(seed=pcfg.seed)
    ds = ds.repeat(pcfg.num_epochs)
    needs = table.needs()
    if pcfg.group_by_size:
        ds = GroupBySize(ds, pcfg.group_by_size, gb, needs, pcfg.seed, epoch=n)
    if pcfg.num_epochs is not None:
        total = len(ds)
        if pcfg.drop_remainder:
            if total < gb:
                raise ValueError(f"{total} examples × epochs < one global batch ({gb}); "
                                 "lower batch_size or set drop_remainder=False")
            ds = ds[: total // gb * gb]
        elif total % gb:
            ds = PadTo(ds, -(-total // gb) * gb)
    ds = BatchNeeds(ds, gb, needs)
    ds = ds[shard_index::shard_count]
    ds = ds.map(Featurize(table, rec_images, pcfg, image_loader))
    ds = ds.batch(pcfg.batch_size, drop_remainder=pcfg.drop_remainder,
                  batch_fn=Collate(kind, pcfg))
    it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=max(1, pcfg.read_threads),
                                                 prefetch_buffer_size=pcfg.prefetch_buffer_size))
    if pcfg.worker_count > 0:
        _ensure_absl_flags_parsed()
        it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(
            num_workers=pcfg.worker_count, per_worker_buffer_size=pcfg.worker_buffer_size))
    loader = Loader(kind, pcfg, table, skipped, truncated, it_ds, ds, shard_index, shard_count)
    log.info("%s loader: %d examples, global batch %d, %s steps/epoch, shard %d/%d",
             kind, n, gb, loader.steps_per_epoch, shard_index, shard_count)
    return loader


# --------------------------------------------------------------------------- orbax
# The orbax classes are created on first use (module ``__getattr__``): the handler must
# subclass ``ocp.CheckpointHandler`` for managers built with explicit ``item_handlers``,
# and this keeps orbax's registration out of module import.
_ORBAX_NAMES = ("LoaderCheckpointHandler", "LoaderSave", "LoaderRestore")


class _LoaderCheckpointHandlerImpl:
    """Orbax CheckpointHandler for ``Loader`` (``loader.LoaderCheckpointHandler`` is this
    mixed into ``ocp.CheckpointHandler``).

    Writes ``Loader.get_state()`` — grain's iterator state plus the pipeline fingerprint —
    as ``process_<i>-of-<n>.json`` (i, n: the loader's shard) in the item's folder; every
    host writes its own file. Restore reads the same host's file into the given loader.
    (``grain.checkpoint.CheckpointSave(loader.iterator)`` would also work, without the check.)
    """

    @staticmethod
    def _file(directory, loader):
        return directory / f"process_{loader.shard_index}-of-{loader.shard_count}.json"

    def save(self, directory, *args, **kwargs):
        loader = _item(args, kwargs)
        self._file(directory, loader).write_text(json.dumps(loader.get_state(), indent=1))

    def restore(self, directory, *args, **kwargs):
        loader = _item(args, kwargs)
        f = self._file(directory, loader)
        if not f.exists():
            raise FileNotFoundError(
                f"{f} does not exist: the checkpoint holds data states of another sharding "
                f"({sorted(p.name for p in directory.iterdir())})")
        loader.set_state(json.loads(f.read_text()))
        return loader

    def structure(self, directory):
        del directory
        return None

    def metadata(self, directory):
        del directory
        return None

    def finalize(self, directory):
        del directory

    def close(self):
        pass


def _item(args, kwargs):
    """The Loader from orbax's (item=..., args=...) calling conventions."""
    item = kwargs.get("item", args[0] if args else None)
    if item is None:
        a = kwargs.get("args", args[1] if len(args) > 1 else None)
        item = getattr(a, "item", None)
    if not isinstance(item, Loader):
        raise TypeError(f"expected a loader.Loader to checkpoint, got {type(item).__name__}")
    return item


def _orbax_classes() -> dict:
    g = globals()
    if "LoaderCheckpointHandler" in g:
        return {n: g[n] for n in _ORBAX_NAMES}
    import orbax.checkpoint as ocp

    class LoaderCheckpointHandler(_LoaderCheckpointHandlerImpl, ocp.CheckpointHandler):
        __doc__ = _LoaderCheckpointHandlerImpl.__doc__

    @ocp.args.register_with_handler(LoaderCheckpointHandler, for_save=True)
    @dataclasses.dataclass
    class LoaderSave(ocp.args.CheckpointArgs):
        item: Any

    @ocp.args.register_with_handler(LoaderCheckpointHandler, for_restore=True)
    @dataclasses.dataclass
    class LoaderRestore(ocp.args.CheckpointArgs):
        item: Any

    for cls in (LoaderCheckpointHandler, LoaderSave, LoaderRestore):
        cls.__module__, cls.__qualname__ = __name__, cls.__name__
        g[cls.__name__] = cls
    return {n: g[n] for n in _ORBAX_NAMES}


def __getattr__(name):
    if name in _ORBAX_NAMES:
        return _orbax_classes()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def checkpoint_args(loader: Loader):
    """Orbax save args: ``mngr.save(step, args=ocp.args.Composite(..., data=checkpoint_args(l)))``.
    Managers built with explicit ``item_handlers`` use ``loader.LoaderCheckpointHandler()``."""
    return _orbax_classes()["LoaderSave"](loader)


def restore_args(loader: Loader):
    """Orbax restore args; restores *into* ``loader``, which must be built as the saved one was:
    ``mngr.restore(step, args=ocp.args.Composite(..., data=restore_args(l)))``."""
    return _orbax_classes()["LoaderRestore"](loader)
