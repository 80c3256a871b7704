"""The trainer's view of the data: tokenizer, TFDS splits, grain loaders, reference log-probs.

Every run reads TFDS splits built by `python -m mmalign_jax.data build` (the demo presets
build theirs first, `mmalign_jax/demo/recipe.py`), so the offline demo runs through exactly
the same TFDS → grain path as a real dataset.
"""
from __future__ import annotations

import logging
import os

import jax
import numpy as np

from mmalign_jax import loading, parallel
from mmalign_jax.data import loader as loader_lib
from mmalign_jax.data import tfds_builder
from mmalign_jax.models import registry
from mmalign_jax.train import methods

log = logging.getLogger("mmalign_jax.train")

def load_tokenizer(c):
    """`(tokenizer, folder)` of run `c` (`loading.load_tokenizer`)."""
    return loading.load_tokenizer(c)


class TrainData:
    """Loaders for the train and eval splits with the batch layout of `data/loader_lib.py`."""

    def __init__(self, c, cfg, kind: str | None = None):
        self.c, self.cfg = c, cfg
        # the batch layout ('sft' | 'dpo'): the method's unless given
        self.kind = kind or methods.get(c.method).batch
        self.tokenizer, self.tokenizer_dir = load_tokenizer(c)
        self.data_dir = c.data.data_dir
        self.ref_logps: dict | None = None
        self._eval: loader_lib.Loader | None = None
        self.sources = {"train": tfds_builder.open_split(self.data_dir, c.data.train_split)}
        if c.data.eval_split and c.train.eval_every:
            self.sources["eval"] = tfds_builder.open_split(self.data_dir, c.data.eval_split)
        self._examples: dict[str, loader_lib.Examples] = {}   # each split tokenized once
        gb = c.train.global_batch_size
        if gb % jax.process_count():
            raise ValueError(f"train.global_batch_size={gb} must divide over "
                             f"{jax.process_count()} processes")
        probe = self._loader("train", shuffle=True, epochs=None)
        self.num_examples = probe.num_examples
        self.steps_per_epoch = probe.steps_per_epoch
        self._train = probe

    def pcfg(self, shuffle: bool, epochs, drop_remainder: bool = True) -> loader_lib.LoaderConfig:
        c, cfg = self.c, self.cfg
        family = registry.for_config(cfg)
        tok = self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else (cfg.text.pad_token_id or 0)
        data = c.data
        return loader_lib.LoaderConfig(
            template=data.template or family.default_template,
            image_mode=data.image_mode or family.default_image_mode,
            image_token_id=cfg.image_token_id, family=family, model_config=cfg,
            image_buckets=tuple(data.get("image_buckets", ())) or None,
            group_by_size=int(data.get("group_by_size", 0)),
            max_images=data.max_images, seq_len=data.seq_len,
            buckets=tuple(data.get("seq_buckets", ())) or None,
            prompt_len=data.prompt_len,
            prompt_buckets=tuple(data.get("prompt_buckets", ())) or None,
            response_len=data.response_len,
            response_buckets=tuple(data.get("response_buckets", ())) or None,
            pad_token_id=int(pad),
            batch_size=c.train.global_batch_size // jax.process_count(), seed=c.seed,
            shuffle=shuffle, num_epochs=epochs, drop_remainder=drop_remainder,
            worker_count=c.data.worker_count, sft_mode=c.data.sft_mode,
            steerlm_format=c.data.steerlm_format, pair_rule=c.data.pair_rule,
            pair_seed=c.seed, pair_margin=c.data.pair_margin)

    def _loader(self, split, shuffle, epochs, drop_remainder=True, ref=None):
        pcfg = self.pcfg(shuffle, epochs, drop_remainder)
        if split not in self._examples:
            self._examples[split] = loader_lib.prepare_examples(
                self.kind, self.sources[split], self.tokenizer, pcfg)
        ex = self._examples[split]
        return loader_lib.make_loader(self.kind, None, None, pcfg,
                                    examples=ex if ref is None else ex.with_ref_logps(ref))

    def train_iterator(self) -> loader_lib.Loader:
        """The endless, shuffled training stream (epochs follow each other seamlessly)."""
        if self.ref_logps is not None:
            self._train = self._loader("train", True, None, ref=self.ref_logps["train"])
        return self._train

    def eval_iterator(self):
        """A fresh pass over the whole eval split (last batch padded with weight-0 rows)."""
        if "eval" not in self.sources:
            return iter(())
        if self._eval is None:
            ref = None if self.ref_logps is None else self.ref_logps["eval"]
            self._eval = self._loader("eval", False, 1, drop_remainder=False, ref=ref)
            return self._eval
        return self._eval.restart()

    def attach_reference_logps(self, run, reference_step) -> None:
        """The published recipe: reference log-probs computed once, stored in the workdir
        (`reference_logps.npz`, reused on rerun), then read from the batches."""
        path = os.path.join(self.c.workdir, "reference_logps.npz")
        self._eval = None  # remade with the reference log-probs attached
        out = dict(np.load(path)) if os.path.exists(path) else {}
        missing = [s for s in self.sources if f"{s}_chosen" not in out]
        if out:
            log.info("reference log-probs read from %s%s", path,
                     f"; computing the missing split(s) {missing}" if missing else "")
        if missing:
            step = jax.jit(reference_step)
        for split in missing:   # e.g. the eval split of a rerun that turned evaluation on
            loader = self._loader(split, False, 1, drop_remainder=False)
            chosen = np.zeros(loader.num_examples, np.float32)
            rejected = np.zeros(loader.num_examples, np.float32)
            from tqdm.auto import tqdm
            for local in tqdm(loader, total=loader.total_steps, desc=f"reference logps ({split})",
                              disable=not self.c.train.progress or jax.process_index() != 0):
                batch = parallel.global_batch(local, run.mesh, run.shardings["rules"])
                pc, pr = step(batch, run.frozen, run.ref)
                idx = _gather(batch["example_index"])
                pc, pr = _gather(pc), _gather(pr)
                keep = idx >= 0
                chosen[idx[keep]] = pc[keep]
                rejected[idx[keep]] = pr[keep]
            out[f"{split}_chosen"], out[f"{split}_rejected"] = chosen, rejected
        if missing and jax.process_index() == 0:
            tmp = path + ".tmp.npz"
            np.savez(tmp, **out)
            os.replace(tmp, path)
        self.ref_logps = {s: {"chosen": out[f"{s}_chosen"], "rejected": out[f"{s}_rejected"]}
                          for s in self.sources}


def _gather(x) -> np.ndarray:
    """A global (possibly multi-host) array as one numpy array on every host."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))
