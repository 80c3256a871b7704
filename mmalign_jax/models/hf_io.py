"""Hugging Face safetensors checkpoints ⇄ mmalign_jax parameter trees, for any family.

A family describes its checkpoint once, as an `HFMapping` (see `models/llava/hf.py`); the
loader, the saver and the checks here are driven by it and know no family:

    cfg, params = load(MAPPING, "/ckpt/folder", dtype="bfloat16")
    save(MAPPING, cfg, params, "/out", lora=lora_params, tokenizer_dir="/ckpt/folder")

Every HF tensor maps to one parameter path through `mapping.entries(cfg)`, with a transform
between HF's orientation and ours, and — for layers under `nn.scan` — an index into a
stacked parameter (a family may have several stacks of different depth).

Loading streams: headers are validated first (missing / unexpected / mis-shaped tensors,
missing shard files), then tensors are read one at a time; each stacked parameter is one
preallocated array in the target dtype, so the host holds about one copy of the model plus
one tensor — and with `sharding` each finished array goes straight to its devices and the
host copy is dropped. Saving writes safetensors files tensor by tensor with its own writer
(no second copy of the model, no torch).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import struct
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from mmalign_jax.models.family import CheckpointError

Path = Tuple[str, ...]

CONFIG_NAME = "config.json"
GENERATION_CONFIG_NAME = "generation_config.json"
SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
    "added_tokens.json", "vocab.json", "merges.txt", "preprocessor_config.json",
    "processor_config.json", "chat_template.json", "chat_template.jinja",
)
TRANSFORMS = ("id", "T", "conv", "flatT")


# --------------------------------------------------------------------------------------
# The mapping
# --------------------------------------------------------------------------------------


def rename_first(key: str, rules) -> str:
    """`key` with the first matching `(compiled pattern, replacement)` of `rules` applied
    (a family's key layouts → its canonical layout); unchanged when none matches."""
    for pattern, repl in rules:
        new, n = pattern.subn(repl, key, count=1)
        if n:
            return new
    return key


@dataclasses.dataclass(frozen=True)
class Entry:
    """One HF tensor: canonical key, our parameter path, HF shape, transform and — for a
    stacked (nn.scan) parameter — the layer index and the depth of that stack.

    Transforms: 'id'; 'T' (Linear [out, in] -> Dense kernel [in, out]); 'conv' (OIHW ->
    HWIO); 'flatT' (a conv weight [out, ...] used as a Dense kernel [prod(...), out], e.g. a
    patch embedding applied to pre-flattened patches)."""

    hf_key: str
    path: Path
    hf_shape: Tuple[int, ...]
    transform: str = "id"
    layer: Optional[int] = None
    stack: int = 0

    @property
    def shape(self) -> Tuple[int, ...]:
        """Shape of this tensor in our tree (one layer's slice for stacked parameters)."""
        if self.transform == "T":
            return tuple(reversed(self.hf_shape))
        if self.transform == "conv":
            o, i, h, w = self.hf_shape
            return (h, w, i, o)
        if self.transform == "flatT":
            return (math.prod(self.hf_shape[1:]), self.hf_shape[0])
        return self.hf_shape


def _to_ours(x: np.ndarray, e: Entry) -> np.ndarray:
    if e.transform == "T":
        return x.T
    if e.transform == "conv":
        return x.transpose(2, 3, 1, 0)
    if e.transform == "flatT":
        return x.reshape(x.shape[0], -1).T
    return x


def _to_hf(x: np.ndarray, e: Entry) -> np.ndarray:
    if e.transform == "T":
        return x.T
    if e.transform == "conv":
        return x.transpose(3, 2, 0, 1)
    if e.transform == "flatT":
        return x.T.reshape(e.hf_shape)
    return x


def _no_zero_fill(raw_config: dict, entry: Entry) -> bool:
    return False


def _no_extra_files(cfg) -> Dict[str, dict]:
    return {}


def _text_tied(cfg) -> bool:
    return bool(cfg.text.tie_word_embeddings)


def text_generation_config(cfg) -> dict:
    """`generation_config.json` from the language model's special token ids."""
    t = cfg.text
    return {"bos_token_id": t.bos_token_id, "eos_token_id": t.eos_token_id,
            "pad_token_id": t.pad_token_id}


@dataclasses.dataclass(frozen=True)
class HFMapping:
    """A family's checkpoint format: its tensors, key layouts and config.json both ways.

    `entries(cfg)`: every tensor, in HF save order. `canonical_key`: a key in any supported
    layout -> the canonical one (`Entry.hf_key`); `layout_key(canonical, layout)` back.
    `layouts[0]` is written by default. `detect_layout(raw key)`: the layout that key
    reveals, or None (missing keys are then shown canonical). `ignored`: canonical keys
    skipped silently (buffers such as rotary inv_freq). `tied_head_key`: the canonical head
    key tolerated (skipped) when `tied(cfg)`. `zero_fill(raw config.json, entry)`: a missing
    tensor that loads as zeros. `extra_files(cfg)`: more JSON files written on save, unless
    `tokenizer_dir` supplied a file of that name.
    """

    name: str
    hf_class: str
    entries: Callable[[Any], List[Entry]]
    canonical_key: Callable[[str], str]
    layout_key: Callable[[str, str], str]
    layouts: Tuple[str, ...]
    detect_layout: Callable[[str], Optional[str]]
    ignored: "re.Pattern"
    tied_head_key: Optional[str]
    config_from_hf: Callable[[dict], Any]
    config_to_hf: Callable[..., dict]
    generation_config: Callable[[Any], dict] = text_generation_config
    zero_fill: Callable[[dict, Entry], bool] = _no_zero_fill
    extra_files: Callable[[Any], Dict[str, dict]] = _no_extra_files
    tied: Callable[[Any], bool] = _text_tied


def _entries(mapping: HFMapping, cfg) -> List[Entry]:
    """`mapping.entries(cfg)`, checked for consistency (a bad table fails here, by name,
    rather than as a shape error deep in loading)."""
    entries = mapping.entries(cfg)
    keys, stacks = set(), {}
    for e in entries:
        if e.transform not in TRANSFORMS:
            raise ValueError(f"{mapping.name} entry {e.hf_key}: unknown transform "
                             f"{e.transform!r}; one of {TRANSFORMS}")
        if e.hf_key in keys:
            raise ValueError(f"{mapping.name}: two entries for {e.hf_key}")
        keys.add(e.hf_key)
        if e.layer is not None:
            if not 0 <= e.layer < e.stack:
                raise ValueError(f"{mapping.name} entry {e.hf_key}: layer {e.layer} outside "
                                 f"its stack of {e.stack}")
            if stacks.setdefault(e.path, (e.stack, e.shape)) != (e.stack, e.shape):
                raise ValueError(f"{mapping.name}: entries of {'/'.join(e.path)} disagree on "
                                 "stack depth or shape")
    return entries


def _layout(mapping: HFMapping, key_layout: Optional[str]) -> str:
    if key_layout is None:
        return mapping.layouts[0]
    if key_layout not in mapping.layouts:
        raise ValueError(f"unknown key layout {key_layout!r}; choose one of {mapping.layouts}")
    return key_layout


def param_shapes(mapping: HFMapping, cfg) -> Dict[Path, Tuple[int, ...]]:
    """Shapes of the full parameter tree for `cfg` (stacked params lead with their depth)."""
    return {e.path: e.shape if e.layer is None else (e.stack, *e.shape)
            for e in _entries(mapping, cfg)}


# --------------------------------------------------------------------------------------
# safetensors reading (headers ourselves; bf16 & friends through ml_dtypes)
# --------------------------------------------------------------------------------------

_ST_DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_), "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
}
_NP_TO_ST = {v: k for k, v in _ST_DTYPES.items()}


def read_safetensors_header(path: str) -> Tuple[Dict[str, dict], int]:
    """({key: {'dtype', 'shape', 'data_offsets'}}, byte offset of the data section)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) != 8:
                raise CheckpointError(f"{path}: not a safetensors file (shorter than 8 bytes)")
            (n,) = struct.unpack("<Q", head)
            if n > 100_000_000:
                raise CheckpointError(f"{path}: not a safetensors file (header length {n})")
            header = json.loads(fh.read(n))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read the safetensors header ({e}); the file "
                              "is damaged or incomplete — download it again") from None
    header.pop("__metadata__", None)
    return header, 8 + n


class _ShardReader:
    """Reads one tensor at a time: `safe_open(framework='numpy')` where numpy knows the
    dtype, raw bytes + ml_dtypes (bf16, fp8) where it does not."""

    def __init__(self, path: str, header: Dict[str, dict], data_start: int):
        self.path, self.header, self.data_start = path, header, data_start
        self._safe = None
        self._fh = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self._fh is not None:
            self._fh.close()
        self._safe = None

    def get(self, key: str) -> np.ndarray:
        info = self.header[key]
        if info["dtype"] not in ("BF16", "F8_E4M3", "F8_E5M2"):
            try:
                if self._safe is None:
                    from safetensors import safe_open

                    self._safe = safe_open(self.path, framework="numpy")
                return self._safe.get_tensor(key)
            except (TypeError, ImportError):
                pass  # fall through to the raw reader
        return self._raw(key, info)

    def _raw(self, key: str, info: dict) -> np.ndarray:
        dtype = _ST_DTYPES.get(info["dtype"])
        if dtype is None:
            raise CheckpointError(f"{self.path}: tensor {key!r} has unsupported dtype {info['dtype']}")
        begin, end = info["data_offsets"]
        if self._fh is None:
            self._fh = open(self.path, "rb")
        self._fh.seek(self.data_start + begin)
        buf = self._fh.read(end - begin)
        if len(buf) != end - begin:
            raise CheckpointError(f"{self.path}: truncated data for tensor {key!r}; the file "
                                  "is incomplete — download it again")
        return np.frombuffer(buf, dtype=dtype).reshape(info["shape"])


def _checkpoint_files(path: str, hf_class: str = "AutoModel") -> Tuple[List[str], Optional[str]]:
    """The safetensors files of a checkpoint folder, and the index file if sharded
    (`hf_class` names the transformers class in the hint for .bin checkpoints)."""
    index = os.path.join(path, SAFE_WEIGHTS_INDEX_NAME)
    if os.path.isfile(index):
        try:
            with open(index) as f:
                weight_map = json.load(f)["weight_map"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index}: not a valid safetensors index ({e!r}); it must "
                                  "be JSON with a 'weight_map' of tensor name -> shard file")
        names = sorted(set(weight_map.values()))
        absent = [n for n in names if not os.path.isfile(os.path.join(path, n))]
        if absent:
            raise CheckpointError(
                f"{path}: shard file(s) {', '.join(absent)} listed in {SAFE_WEIGHTS_INDEX_NAME} "
                "are missing; download/copy the complete checkpoint (every file the index names)")
        return [os.path.join(path, n) for n in names], index
    single = os.path.join(path, SAFE_WEIGHTS_NAME)
    if os.path.isfile(single):
        return [single], None
    others = sorted(n for n in os.listdir(path) if n.endswith(".safetensors"))
    if others:
        return [os.path.join(path, n) for n in others], None
    bins = [n for n in os.listdir(path) if n.endswith(".bin")]
    hint = (f" (found {', '.join(bins)}: PyTorch .bin checkpoints are not read; re-save it with "
            f"`{hf_class}.from_pretrained(p).save_pretrained(out)`, which "
            "writes safetensors)") if bins else ""
    raise CheckpointError(f"{path}: no {SAFE_WEIGHTS_NAME}, {SAFE_WEIGHTS_INDEX_NAME} or other "
                          f".safetensors file{hint}")


# --------------------------------------------------------------------------------------
# HF -> ours
# --------------------------------------------------------------------------------------

ShardingLike = Union[None, jax.sharding.Sharding, Callable[[str], Any], Mapping[str, Any]]


def _sharding_for(sharding: ShardingLike, path: Path):
    if sharding is None:
        return None
    if isinstance(sharding, jax.sharding.Sharding):
        return sharding
    if callable(sharding) and not isinstance(sharding, Mapping):
        return sharding("/".join(path))
    node = sharding
    try:
        for k in path:
            node = node[k]
    except (KeyError, TypeError, IndexError):
        raise ValueError(f"sharding pytree has no entry for parameter {'/'.join(path)}") from None
    return node


def _place(arr: np.ndarray, path: Path, sharding: ShardingLike) -> jax.Array:
    s = _sharding_for(sharding, path)
    if s is None:
        return jnp.asarray(arr)
    return jax.make_array_from_callback(arr.shape, s, lambda idx: arr[idx])


def _set_path(tree: dict, path: Path, value) -> None:
    node = tree
    for k in path[:-1]:
        node = node.setdefault(k, {})
    node[path[-1]] = value


class _Assembler:
    """Builds the params tree entry by entry; each stacked param fills one preallocated
    array of its entries' `stack` depth and is placed once every layer has arrived."""

    def __init__(self, dtype, sharding: ShardingLike):
        self.dtype, self.sharding = np.dtype(dtype), sharding
        self.params: dict = {}
        self._stacks: Dict[Path, Tuple[np.ndarray, set]] = {}

    def add(self, e: Entry, x: np.ndarray) -> None:
        x = _to_ours(x, e)
        if e.layer is None:
            _set_path(self.params, e.path, _place(np.asarray(x, dtype=self.dtype), e.path,
                                                  self.sharding))
            return
        if e.path not in self._stacks:
            self._stacks[e.path] = (np.empty((e.stack, *e.shape), self.dtype), set())
        buf, done = self._stacks[e.path]
        buf[e.layer] = x
        done.add(e.layer)
        if len(done) == e.stack:
            del self._stacks[e.path]
            _set_path(self.params, e.path, _place(buf, e.path, self.sharding))

    def finish(self) -> dict:
        if self._stacks:  # cannot happen after validation; guard anyway
            raise CheckpointError(f"incomplete stacked parameters: {sorted(self._stacks)}")
        return self.params


def _problems_message(mapping: HFMapping, where: str, layout: Optional[str],
                      missing: Sequence[Entry], unexpected: Sequence[str],
                      misshaped: Sequence[Tuple[str, tuple, tuple]],
                      duplicated: Sequence[str]) -> str:
    lines = [f"{where} does not match the model its config.json describes:"]
    def cap(items):
        items = list(items)
        return items[:40] + ([f"... and {len(items) - 40} more"] if len(items) > 40 else [])
    def display(canonical):  # missing keys in the layout the checkpoint uses
        return canonical if layout is None else mapping.layout_key(canonical, layout)
    if misshaped:
        lines.append("  mis-shaped tensors (key: got -> expected):")
        lines += [f"    {k}: {list(g)} -> {list(x)}" for k, g, x in misshaped][:40]
    if missing:
        lines.append("  missing tensors (key [expected shape]):")
        lines += cap(f"    {display(e.hf_key)} {list(e.hf_shape)}" for e in missing)
    if unexpected:
        lines.append("  unexpected tensors:")
        lines += cap(f"    {k}" for k in unexpected)
    if duplicated:
        lines.append("  tensors stored twice (under two key layouts or in two shards):")
        lines += cap(f"    {k}" for k in duplicated)
    lines.append("Check that config.json belongs to these weights (sizes, layer count, "
                 "vocab_size, tie_word_embeddings) and that every shard is complete.")
    return "\n".join(lines)


def load(mapping: HFMapping, path: Union[str, os.PathLike], dtype: str = "float32",
         sharding: ShardingLike = None) -> Tuple[Any, dict]:
    """Read a checkpoint folder of `mapping`'s family into `(cfg, params)`.

    `dtype`: dtype of the returned params ('float32', 'bfloat16', 'float16'); `cfg.dtype`
    and `cfg.param_dtype` are set to it. `sharding`: None (default device), one
    `jax.sharding.Sharding` for every param, a pytree of shardings matching params, or a
    callable `'/'-joined param path -> Sharding`; each array is placed as soon as it is
    complete. Raises `CheckpointError` naming what is wrong.
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise CheckpointError(f"{path}: not a folder; pass a {mapping.name} checkpoint folder "
                              "(config.json + *.safetensors)")
    cfg_file = os.path.join(path, CONFIG_NAME)
    if not os.path.isfile(cfg_file):
        raise CheckpointError(f"{path}: no {CONFIG_NAME}; copy the checkpoint's config.json "
                              "next to its safetensors files")
    try:
        with open(cfg_file) as f:
            raw = json.load(f)
        cfg = mapping.config_from_hf(raw)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfg_file}: not valid JSON ({e})") from None
    except ValueError as e:
        raise CheckpointError(str(e).replace("<config dict>", cfg_file)) from None
    target = jnp.dtype(dtype)
    cfg = cfg.replace(dtype=target.name, param_dtype=target.name)

    entries = _entries(mapping, cfg)
    by_key = {e.hf_key: e for e in entries}
    tied = mapping.tied_head_key is not None and mapping.tied(cfg)
    files, index = _checkpoint_files(path, mapping.hf_class)

    found: Dict[str, Tuple[int, str]] = {}  # canonical key -> (file number, key in file)
    headers = []
    unexpected, misshaped, duplicated = [], [], []
    layout = None  # the first layout a key reveals; None: show canonical keys
    for n, file in enumerate(files):
        header, start = read_safetensors_header(file)
        headers.append((header, start))
        for key, info in header.items():
            canon = mapping.canonical_key(key)
            layout = layout or mapping.detect_layout(key)
            if mapping.ignored.match(canon):
                continue
            e = by_key.get(canon)
            if e is None:
                if tied and canon == mapping.tied_head_key:
                    continue  # a tied head saved anyway: the embedding is the head
                unexpected.append(f"{key} ({os.path.basename(file)})")
                continue
            if canon in found:
                duplicated.append(key)
                continue
            found[canon] = (n, key)
            if tuple(info["shape"]) != e.hf_shape:
                misshaped.append((key, tuple(info["shape"]), e.hf_shape))
    zero_filled = [e for e in entries if e.hf_key not in found and mapping.zero_fill(raw, e)]
    missing = [e for e in entries if e.hf_key not in found and e not in zero_filled]
    if missing or unexpected or misshaped or duplicated:
        where = path if index is None else f"{path} ({SAFE_WEIGHTS_INDEX_NAME})"
        raise CheckpointError(_problems_message(mapping, where, layout, missing, unexpected,
                                                misshaped, duplicated))

    asm = _Assembler(target, sharding)
    per_file: Dict[int, List[Tuple[Entry, str]]] = {}
    for canon, (n, key) in found.items():
        per_file.setdefault(n, []).append((by_key[canon], key))
    for n, items in sorted(per_file.items()):
        header, start = headers[n]
        with _ShardReader(files[n], header, start) as reader:
            for e, key in items:
                asm.add(e, reader.get(key))
    for e in zero_filled:
        asm.add(e, np.zeros(e.hf_shape, np.float32))
    return cfg, asm.finish()


def state_dict_to_params(mapping: HFMapping, cfg, state_dict: Mapping[str, Any],
                         dtype: str = "float32") -> dict:
    """In-memory conversion of a HF state dict (numpy / torch tensors; any supported key
    layout) to our params tree; same validation as `load` (no zero-filling: no config.json)."""
    entries = _entries(mapping, cfg)
    by_key = {e.hf_key: e for e in entries}
    tied = mapping.tied_head_key is not None and mapping.tied(cfg)
    found, unexpected, misshaped = {}, [], []
    for key, x in state_dict.items():
        canon = mapping.canonical_key(key)
        if mapping.ignored.match(canon) or (tied and canon == mapping.tied_head_key):
            continue
        e = by_key.get(canon)
        if e is None:
            unexpected.append(key)
            continue
        x = _as_numpy(x)
        if tuple(x.shape) != e.hf_shape:
            misshaped.append((key, tuple(x.shape), e.hf_shape))
        found[canon] = x
    missing = [e for e in entries if e.hf_key not in found]
    if missing or unexpected or misshaped:
        raise CheckpointError(_problems_message(mapping, "state dict", None, missing,
                                                unexpected, misshaped, []))
    asm = _Assembler(jnp.dtype(dtype), None)
    for e in entries:
        asm.add(e, found[e.hf_key])
    return asm.finish()


def _as_numpy(x) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return x
    if type(x).__module__.startswith("torch"):
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":
            import torch

            return x.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        return x.numpy()
    return np.asarray(x)


# --------------------------------------------------------------------------------------
# ours -> HF
# --------------------------------------------------------------------------------------


def _flatten(tree, prefix: Path = ()) -> Dict[Path, Any]:
    out = {}
    if isinstance(tree, Mapping):
        for k, v in tree.items():
            out.update(_flatten(v, prefix + (str(k),)))
    else:
        out[prefix] = tree
    return out


def _unbox(x):
    # flax nn.Partitioned / LogicallyPartitioned boxes carry the array in `.value`.
    return x.value if hasattr(x, "value") and hasattr(x, "names") else x


def check_params(mapping: HFMapping, cfg, params) -> Dict[Path, Any]:
    """Flattened `params` after checking every path and shape against `cfg`."""
    flat = {p: _unbox(x) for p, x in _flatten(params).items()}
    expected = param_shapes(mapping, cfg)
    missing = [p for p in expected if p not in flat]
    unexpected = [p for p in flat if p not in expected]
    misshaped = [(p, tuple(flat[p].shape), s) for p, s in expected.items()
                 if p in flat and tuple(flat[p].shape) != s]
    if missing or unexpected or misshaped:
        j = "/".join
        lines = ["params do not match the model config:"]
        lines += [f"  missing {j(p)} {list(expected[p])}" for p in missing][:40]
        lines += [f"  unexpected {j(p)}" for p in unexpected][:40]
        lines += [f"  mis-shaped {j(p)}: {list(g)} (expected {list(s)})" for p, g, s in misshaped][:40]
        lines.append("Pass the config the params were created with (e.g. from the run's "
                     "config.json or preset) and plain params (merge LoRA with `lora=`).")
        raise CheckpointError("\n".join(lines))
    return flat


def _host_tensor(x, layer: Optional[int]) -> np.ndarray:
    if layer is not None:
        x = x[layer]  # on device for jax arrays: only one layer comes to the host
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        x = multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(jax.device_get(x))


def params_to_hf_tensors(mapping: HFMapping, cfg, params, dtype: Optional[str] = None,
                         key_layout: Optional[str] = None) -> Iterable[Tuple[str, np.ndarray]]:
    """Yield `(hf_key, numpy tensor)` one at a time (HF orientation, `dtype` or the
    param's own dtype; `key_layout` default `mapping.layouts[0]`)."""
    flat = check_params(mapping, cfg, params)
    layout = _layout(mapping, key_layout)
    out_dtype = None if dtype is None else np.dtype(jnp.dtype(dtype))
    for e in _entries(mapping, cfg):
        x = _to_hf(_host_tensor(flat[e.path], e.layer), e)
        x = np.ascontiguousarray(x, dtype=out_dtype or x.dtype)
        yield mapping.layout_key(e.hf_key, layout), x


def params_to_hf_state_dict(mapping: HFMapping, cfg, params, dtype: Optional[str] = None,
                            key_layout: Optional[str] = None) -> Dict[str, np.ndarray]:
    """The whole HF state dict as numpy arrays (a full copy: for small models and tests)."""
    return dict(params_to_hf_tensors(mapping, cfg, params, dtype, key_layout))


def _parse_size(size: Union[int, str]) -> int:
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?)B?\s*", str(size), re.IGNORECASE)
    if not m:
        raise ValueError(f"max_shard_size={size!r}: use bytes (int) or e.g. '5GB', '500MB'")
    base = 1024 if m.group(3) else 1000
    power = {"": 0, "K": 1, "M": 2, "G": 3, "T": 4}[m.group(2).upper()]
    return int(float(m.group(1)) * base**power)


def _write_safetensors(path: str, items: Sequence[Tuple[str, str, Tuple[int, ...], int]],
                       produce: Callable[[int], np.ndarray]) -> None:
    """Write one safetensors file: header from (key, st_dtype, shape, nbytes) up front, then
    each tensor's bytes from `produce(i)` — one tensor in memory at a time."""
    header: Dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for key, st_dtype, shape, nbytes in items:
        header[key] = {"dtype": st_dtype, "shape": list(shape),
                       "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as fh:
        fh.write(struct.pack("<Q", len(blob)))
        fh.write(blob)
        for i, (key, st_dtype, shape, nbytes) in enumerate(items):
            x = produce(i)
            if tuple(x.shape) != tuple(shape) or _NP_TO_ST[x.dtype] != st_dtype:
                raise AssertionError(f"{key}: produced {x.dtype}{list(x.shape)}")
            data = np.ascontiguousarray(x).reshape(-1).view(np.uint8)
            assert len(data) == nbytes
            fh.write(data)
    os.replace(tmp, path)


def save(mapping: HFMapping, cfg, params, out_dir: Union[str, os.PathLike], lora=None,
         tokenizer_dir: Optional[Union[str, os.PathLike]] = None,
         dtype: Optional[str] = None, max_shard_size: Union[int, str] = "5GB",
         key_layout: Optional[str] = None) -> List[str]:
    """Write a transformers-loadable checkpoint folder; returns the written files.

    `lora`: an adapter tree to merge first (`cfg.lora` must be set). `dtype`: tensor dtype
    on disk (default: each param's own). `max_shard_size`: bytes or '5GB'; more than one
    shard adds `model.safetensors.index.json`. `tokenizer_dir`: copy tokenizer / processor
    files from there. `key_layout`: one of `mapping.layouts` (default the first). Only
    process 0 writes (all processes must call it for sharded params).
    """
    out_dir = os.fspath(out_dir)
    if lora is not None:
        if cfg.lora is None:
            raise ValueError(f"save_hf(lora=...) needs cfg.lora (rank/alpha) to merge the "
                             f"adapters; pass the training config's {type(cfg).__name__}")
        from mmalign_jax.models import lora as lora_lib

        params = lora_lib.merge(cfg, params, lora)
    flat = check_params(mapping, cfg, params)
    entries = _entries(mapping, cfg)
    layout = _layout(mapping, key_layout)
    limit = _parse_size(max_shard_size)
    out_np = None if dtype is None else np.dtype(jnp.dtype(dtype))
    if out_np is not None and out_np not in _NP_TO_ST:
        raise ValueError(f"dtype={dtype!r} cannot be stored in safetensors")

    plan = []  # (entry, key, st_dtype, shape, nbytes, numpy dtype)
    dtype_counts: Dict[str, int] = {}
    for e in entries:
        leaf_dtype = np.dtype(flat[e.path].dtype)
        dt = out_np or leaf_dtype
        nbytes = int(np.prod(e.hf_shape, dtype=np.int64)) * dt.itemsize
        plan.append((e, mapping.layout_key(e.hf_key, layout), _NP_TO_ST[dt], e.hf_shape,
                     nbytes, dt))
        dtype_counts[dt.name] = dtype_counts.get(dt.name, 0) + nbytes
    shards: List[List[int]] = [[]]
    size = 0
    for i, item in enumerate(plan):
        if shards[-1] and size + item[4] > limit:
            shards.append([])
            size = 0
        shards[-1].append(i)
        size += item[4]
    saved_dtype = max(dtype_counts, key=dtype_counts.get)
    hf_config = mapping.config_to_hf(cfg, dtype=saved_dtype)

    written = []
    if jax.process_index() == 0:
        os.makedirs(out_dir, exist_ok=True)
        for name in os.listdir(out_dir):  # stale weights would shadow or mix with ours
            if name == SAFE_WEIGHTS_NAME or name == SAFE_WEIGHTS_INDEX_NAME or re.fullmatch(
                    r"model-\d+-of-\d+\.safetensors", name):
                os.remove(os.path.join(out_dir, name))

    def produce(i: int) -> np.ndarray:
        e, dt = plan[i][0], plan[i][5]
        x = _to_hf(_host_tensor(flat[e.path], e.layer), e)
        return np.ascontiguousarray(x, dtype=dt)

    names = ([SAFE_WEIGHTS_NAME] if len(shards) == 1 else
             [f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors" for k in range(len(shards))])
    weight_map = {}
    for name, idxs in zip(names, shards):
        items = [plan[i][1:5] for i in idxs]
        if jax.process_index() == 0:
            _write_safetensors(os.path.join(out_dir, name), items, lambda j: produce(idxs[j]))
        else:  # still take part in the all-gathers of non-addressable params
            for i in idxs:
                produce(i)
        weight_map.update({plan[i][1]: name for i in idxs})
        written.append(os.path.join(out_dir, name))
    if jax.process_index() != 0:
        return written

    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(p[4] for p in plan)},
                 "weight_map": dict(sorted(weight_map.items()))}
        _write_json(os.path.join(out_dir, SAFE_WEIGHTS_INDEX_NAME), index)
        written.append(os.path.join(out_dir, SAFE_WEIGHTS_INDEX_NAME))
    _write_json(os.path.join(out_dir, CONFIG_NAME), hf_config)
    _write_json(os.path.join(out_dir, GENERATION_CONFIG_NAME), mapping.generation_config(cfg))
    written += [os.path.join(out_dir, CONFIG_NAME),
                os.path.join(out_dir, GENERATION_CONFIG_NAME)]
    copied = []
    if tokenizer_dir is not None:
        copied = copy_tokenizer_files(tokenizer_dir, out_dir)
        written += copied
    # the source's own files (e.g. its preprocessor_config.json) win over generated ones
    supplied = {os.path.basename(f) for f in copied}
    for name, obj in mapping.extra_files(cfg).items():
        if name not in supplied:
            _write_json(os.path.join(out_dir, name), obj)
            written.append(os.path.join(out_dir, name))
    return written


def copy_tokenizer_files(src: Union[str, os.PathLike], out_dir: Union[str, os.PathLike]) -> List[str]:
    """Copy tokenizer / processor files (those of `TOKENIZER_FILES` present) to `out_dir`."""
    src, out_dir = os.fspath(src), os.fspath(out_dir)
    if not os.path.isdir(src):
        raise CheckpointError(f"tokenizer folder {src} does not exist")
    copied = []
    for name in TOKENIZER_FILES:
        f = os.path.join(src, name)
        if os.path.isfile(f):
            shutil.copyfile(f, os.path.join(out_dir, name))
            copied.append(os.path.join(out_dir, name))
    if not copied:
        raise CheckpointError(f"{src}: no tokenizer files found (looked for "
                              f"{', '.join(TOKENIZER_FILES)})")
    return copied


def _write_json(path: str, obj) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")
