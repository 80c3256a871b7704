"""The model under evaluation: loading it from a path, and its answers — batched, greedy by
default, cached and resumable.

    model = load_model("/ckpt/llava-1.5-7b-hf")        # a llava-hf folder …
    model = load_model("workdir/dpo-demo")              # … or a training workdir of ours
    answers = generate_answers(model, items, "out/answers.jsonl",
                               sampling=SamplingConfig(max_new_tokens=1024), batch_size=8)

`items` are `AnswerItem(key, conversation, images)`; every finished batch is appended to a
`JsonlStore` before the next one starts, so a killed run loses at most one batch and a
rerun generates only what is missing. A cached answer is reused only when its prompt (the
conversation and the image references; the row stores a hash of it), the model name and
the decoding settings are unchanged, so editing a question or changing `max_new_tokens`
re-asks it instead of returning a stale answer.

Anything with `.name` and `.answer(conversations, images, sampling, seed) -> list[str]`
can stand in for a model (an `Answerer`): the benchmark runners only use that.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from typing import Any, Callable, Optional, Protocol, Sequence, Union

from mmalign_jax.store import JsonlStore

log = logging.getLogger("mmalign_jax.evaluate")

# An image in an AnswerItem: a path, encoded bytes, a PIL image or a function returning one.
ImageRef = Union[str, bytes, Any, Callable[[], Any]]


@dataclasses.dataclass
class AnswerItem:
    """One prompt to answer. `conversation`: `[{'role', 'content'}]` ending with a user turn
    (`<image>` marks images); `images`: one per marker — a file path, encoded bytes, a PIL
    image or a zero-argument function returning one (decoded only when its batch runs).
    `image_ids`: how the images are named in the prompt hash (default: the paths, or a hash of
    the bytes; give stable names for PIL images or functions)."""
    key: str
    conversation: list
    images: list = dataclasses.field(default_factory=list)
    image_ids: Optional[list] = None

    def prompt_hash(self) -> str:
        ids = self.image_ids
        if ids is None:
            ids = [_image_id(im) for im in self.images]
        blob = json.dumps({"conversation": self.conversation, "images": ids},
                          sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def _image_id(im) -> str:
    if isinstance(im, (str, os.PathLike)):
        return os.fspath(im)
    if isinstance(im, (bytes, bytearray)):
        return "sha256:" + hashlib.sha256(im).hexdigest()[:16]
    if hasattr(im, "tobytes"):  # PIL
        return "pixels:" + hashlib.sha256(im.tobytes()).hexdigest()[:16]
    raise ValueError("give AnswerItem.image_ids for images passed as functions")


def open_image(im):
    """A PIL RGB image from a path, encoded bytes, a PIL image or a function returning one;
    paths and bytes through `images.load_image` (errors that name the file, and the pixel
    budget checked before decoding)."""
    if callable(im) and not hasattr(im, "convert"):
        im = im()
    if isinstance(im, (str, os.PathLike, bytes, bytearray)):
        from mmalign_jax.data.images import load_image
        return load_image(im).convert("RGB")
    return im.convert("RGB")


class Answerer(Protocol):
    name: str

    def answer(self, conversations: Sequence[list], images: Sequence[list], sampling,
               seed: int = 0) -> list:
        ...


# ----------------------------------------------------------------------------- the model


@dataclasses.dataclass
class EvalModel:
    """A loaded model ready to answer: the family's module, its variables, tokenizer and the
    conversation template / image mode it was trained with."""
    name: str
    path: str
    cfg: Any
    model: Any
    variables: dict
    tokenizer: Any
    template: Optional[str] = None      # None: the model family's default
    image_mode: str = "pad"
    batch_size: int = 8
    _generators: dict = dataclasses.field(default_factory=dict, repr=False)

    def generator(self, batch_size: Optional[int] = None):
        from mmalign_jax.generate import Generator

        b = int(batch_size or self.batch_size)
        if b not in self._generators:
            self._generators[b] = Generator(self.model, self.variables, self.tokenizer,
                                            self.template, image_mode=self.image_mode,
                                            batch_size=b)
        return self._generators[b]

    def answer(self, conversations, images, sampling, seed: int = 0,
               batch_size: Optional[int] = None) -> list:
        out = self.generator(batch_size).generate(conversations, images, sampling, seed=seed)
        return [texts[0] for texts in out]


def load_model(path: str, *, name: Optional[str] = None, dtype: Optional[str] = None,
               tokenizer: Optional[str] = None, template: Optional[str] = None,
               image_mode: Optional[str] = None, batch_size: int = 8) -> EvalModel:
    """The model at `path` (`loading.load_model`): a Hugging Face folder of any registered
    family (`config.json` + safetensors + tokenizer files) or the workdir of a `python -m
    mmalign_jax.train` run (its final weights, LoRA merged; tokenizer, template and image
    mode from the run's config), on one device.

    dtype: parameter/compute dtype (default float32). tokenizer: a tokenizer folder
    overriding the model's. template/image_mode: override the conversation template and
    image preprocessing (default: the run's, else the family's — LLaVA-1.5: `vicuna_v1`,
    `pad`). name: how reports call the model (default: the folder name).
    """
    from mmalign_jax import loading

    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"--model {path}: not a folder; pass a Hugging Face checkpoint "
                                "folder or a training workdir")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"--model {path}: no config.json; expected a Hugging Face "
                                "folder or a training workdir")
    m = loading.load_model(path, dtype=dtype or "float32", tokenizer=tokenizer or "")
    return EvalModel(name=name or os.path.basename(os.path.abspath(path).rstrip("/")),
                     path=path, cfg=m.cfg, model=m.model, variables={"params": m.params},
                     tokenizer=m.tokenizer, template=template or m.template,
                     image_mode=image_mode or m.image_mode, batch_size=batch_size)


# ---------------------------------------------------------------------------- answering


def default_sampling(max_new_tokens: int = 1024):
    """Greedy decoding, as every benchmark of the study was run."""
    from mmalign_jax.generate import SamplingConfig

    return SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0)


def generate_answers(model: Answerer, items: Sequence[AnswerItem], store: Union[str, JsonlStore],
                     *, sampling=None, batch_size: int = 8, seed: int = 0,
                     progress: bool = True) -> dict:
    """`{key: answer}` for every item, generating only those not already in `store` (a
    `JsonlStore` or its path) with the same prompt hash. Items are sorted by prompt length
    and answered `batch_size` at a time; each batch is stored before the next starts."""
    store = store if isinstance(store, JsonlStore) else JsonlStore(store, key="key")
    sampling = sampling or default_sampling()
    keys = [it.key for it in items]
    if len(set(keys)) != len(keys):
        dup = sorted({k for k in keys if keys.count(k) > 1})[:5]
        raise ValueError(f"duplicate answer keys: {dup}")
    hashes = {it.key: it.prompt_hash() for it in items}
    settings = {"model": getattr(model, "name", ""),
                "max_new_tokens": getattr(sampling, "max_new_tokens", None),
                "temperature": getattr(sampling, "temperature", None)}
    todo = []
    for it in items:
        row = store.get(it.key)
        if (row is None or row.get("prompt_hash") != hashes[it.key]
                or any(row.get(k) != v for k, v in settings.items())):
            todo.append(it)
    if todo:
        log.info("%s: %d of %d answers to generate (%d cached)", getattr(model, "name", "model"),
                 len(todo), len(items), len(items) - len(todo))
        todo.sort(key=lambda it: -sum(len(str(m.get("content", ""))) for m in it.conversation))
        bar = _progress(len(todo), "answers", progress)
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            images = [[open_image(im) for im in it.images] for it in batch]
            kwargs = {"batch_size": batch_size} if isinstance(model, EvalModel) else {}
            texts = model.answer([it.conversation for it in batch], images, sampling,
                                 seed=seed, **kwargs)
            if len(texts) != len(batch):
                raise RuntimeError(f"{getattr(model, 'name', model)} returned {len(texts)} "
                                   f"answers for {len(batch)} prompts")
            for it, text in zip(batch, texts):
                store.append({"key": it.key, "answer": str(text), "prompt_hash": hashes[it.key],
                              **settings})
            if bar is not None:
                bar.update(len(batch))
        if bar is not None:
            bar.close()
    return {k: store.get(k)["answer"] for k in keys}


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        return None
    return tqdm(total=total, desc=desc, unit="q", leave=False)
