"""Batched KV-cache generation: greedy, temperature, top-k and top-p (nucleus) sampling.

(The library half of `mmalign_jax.generate`; `candidates.py` is the sampling command built
on it. Import from `mmalign_jax.generate`, which re-exports everything below.)

Two layers:

* `generate_tokens(model, variables, prompt_ids, prompt_mask, pixel_values, image_mask,
  sampling, rng)` — the device part, one `jax.jit`-compiled function per (model, input
  shapes, the structural part of `SamplingConfig`: max_new_tokens, n, greedy or sampled,
  top_k, top-p on/off, number of EOS ids; temperature, top_p, EOS and pad values are
  runtime inputs). It encodes the images once, embeds the prompt, prefills
  it into a KV cache of `P + max_new_tokens` slots (the family's `init_cache`), replicates the cache
  `n` times per prompt (row order prompt0-sample0, prompt0-sample1, …, prompt1-sample0, …)
  and then runs a `jax.lax.while_loop` that samples one token per iteration, feeds it back
  through the model's `decode` at position `prompt_length + t` and stops as soon as every row has
  emitted one of `eos_token_ids` (or after `max_new_tokens`). Rows that are finished emit
  `pad_token_id`.

* `Generator` — the host part: renders and tokenizes conversations with the chat template
  (generation prompt appended, `<image>` expanded to `cfg.num_image_tokens` tokens),
  left-pads prompts into power-of-two length buckets and fixed-size batches (bounded
  recompiles), preprocesses images, calls `generate_tokens` and turns tokens into text.

Stopping
--------
On device only token ids stop a row: `SamplingConfig.eos_token_ids`. Stop *strings* (the
template's turn separators, e.g. ``"</s>"`` or ``"USER:"``; `chat.stop_strings(template)`)
are applied on the host after decoding: the text is cut at the first occurrence of any of
them. A row whose template ends turns with a string rather than an EOS token therefore
keeps generating until `max_new_tokens` or EOS; only the text is cut.

Sampling semantics (as Hugging Face's logits processors, in the same order)
---------------------------------------------------------------------------
``temperature == 0`` → greedy argmax (top-k / top-p ignored). Otherwise logits are divided
by the temperature, then top-k keeps the tokens whose logit is ≥ the k-th largest (ties at
the boundary are kept), then top-p keeps the smallest set of most probable tokens whose
probability mass reaches ``top_p`` (the most probable token is always kept; ties at the
boundary logit are kept), and a token is drawn from the softmax of what is left. Random
numbers: the key of row ``r`` at step ``t`` is ``fold_in(fold_in(rng, t), r)``, so results
are a deterministic function of ``rng`` (and of the batch layout). With one key per prompt
(``rng`` of shape ``[B]``, typed, or ``[B, 2]`` raw uint32) sample ``j`` of prompt ``b`` uses
``fold_in(fold_in(rng[b], j), t)`` instead: a prompt's samples then do not depend on which
other prompts share its batch (what the candidate sampler uses: one key per record id).

`GenerationOutput.logps` are the log-probabilities of the emitted tokens under the *raw*
model distribution (softmax of the unmodified logits — no temperature, no filtering),
0 after EOS; summing them over ``lengths`` gives the sequence log-likelihood.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Mapping, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mmalign_jax.models import registry
from mmalign_jax.models.family import place_image

__all__ = [
    "SamplingConfig",
    "GenerationOutput",
    "generate_tokens",
    "sample_logits",
    "filter_top_k",
    "filter_top_p",
    "Generator",
    "Completion",
    "bucket_length",
    "cut_at_stop_strings",
]

_NEG_INF = -jnp.inf


# --------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How to sample. Frozen and hashable: it is a static argument of the compiled loop.

    max_new_tokens: tokens generated per row at most (the cache has `P + max_new_tokens` slots).
    temperature:    0 → greedy argmax; > 0 → sample from softmax(logits / temperature).
    top_p:          nucleus mass in (0, 1]; 1.0 = off.
    top_k:          keep the k most likely tokens; 0 = off.
    n:              samples per prompt (rows prompt0-sample0, prompt0-sample1, …).
    eos_token_ids:  ids that end a row (the EOS is kept in the output and counted in `lengths`).
    pad_token_id:   emitted by finished rows.
    """

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    n: int = 1
    eos_token_ids: tuple = ()
    pad_token_id: int = 0

    def __post_init__(self):
        eos = self.eos_token_ids
        if eos is None:
            eos = ()
        elif isinstance(eos, (int, np.integer)):
            eos = (int(eos),)
        else:
            eos = tuple(int(e) for e in eos)
        object.__setattr__(self, "eos_token_ids", eos)
        object.__setattr__(self, "max_new_tokens", int(self.max_new_tokens))
        object.__setattr__(self, "temperature", float(self.temperature))
        object.__setattr__(self, "top_p", float(self.top_p))
        object.__setattr__(self, "top_k", int(self.top_k))
        object.__setattr__(self, "n", int(self.n))
        object.__setattr__(self, "pad_token_id", int(self.pad_token_id))
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1; got {self.max_new_tokens}")
        if not (self.temperature >= 0.0 and math.isfinite(self.temperature)):
            raise ValueError(
                f"temperature must be finite and >= 0 (0 = greedy); got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1] (1.0 = off); got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off); got {self.top_k}")
        if self.n < 1:
            raise ValueError(f"n (samples per prompt) must be >= 1; got {self.n}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def replace(self, **kw) -> "SamplingConfig":
        return dataclasses.replace(self, **kw)


class GenerationOutput(NamedTuple):
    """`tokens [B*n, max_new]` int32 (pad after EOS), `lengths [B*n]` int32 (tokens up to and
    including EOS; `max_new` when no EOS), `logps [B*n, max_new]` float32 (raw-model
    log-probabilities of the emitted tokens, 0 after EOS). Row `b*n + j` is sample `j` of
    prompt `b`."""

    tokens: jax.Array
    lengths: jax.Array
    logps: jax.Array


# --------------------------------------------------------------------------- sampling


def filter_top_k(logits: jax.Array, k: int) -> jax.Array:
    """Set every logit below the k-th largest (per row, last axis) to -inf; k = 0 is off.

    Ties with the k-th largest value are kept (as `transformers.TopKLogitsWarper`)."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = jax.lax.top_k(logits, k)[0][..., -1:]
    return jnp.where(logits < kth, _NEG_INF, logits)


def filter_top_p(logits: jax.Array, p: float) -> jax.Array:
    """Nucleus filtering: keep the smallest set of most probable tokens whose probability
    (softmax of `logits`) sums to at least `p`, set the others to -inf. The most probable
    token is always kept; tokens tied with the least probable kept one are kept too.
    p = 1.0 is off. `p` may be a traced scalar."""
    if isinstance(p, (int, float)) and p >= 1.0:
        return logits
    sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]  # descending
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs  # exclusive cumulative mass
    keep = mass_before < p
    keep = keep.at[..., 0].set(True)
    # The smallest kept logit is the threshold (kept entries are a prefix of the sort).
    threshold = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(logits < threshold, _NEG_INF, logits)


def processed_logits(logits: jax.Array, sampling: SamplingConfig,
                     temperature=None, top_p=None) -> jax.Array:
    """Temperature, then top-k, then top-p (HF order): the logits sampled from.

    `temperature` / `top_p` override the config's values (traced scalars inside the loop, so
    changing them does not recompile); which filters run is decided by `sampling`."""
    temperature = sampling.temperature if temperature is None else temperature
    top_p = sampling.top_p if top_p is None else top_p
    logits = logits.astype(jnp.float32) / temperature
    logits = filter_top_k(logits, sampling.top_k)
    if sampling.top_p < 1.0:
        logits = filter_top_p(logits, top_p)
    return logits


def sample_logits(keys: jax.Array, logits: jax.Array, sampling: SamplingConfig,
                  temperature=None, top_p=None) -> jax.Array:
    """One token id per row of `logits [R, V]` (int32 `[R]`); `keys`: one PRNG key per row
    (`[R]` typed keys or `[R, 2]` raw uint32 keys). Greedy when `sampling.temperature == 0`."""
    if sampling.greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    filtered = processed_logits(logits, sampling, temperature, top_p)
    return jax.vmap(lambda k, l: jax.random.categorical(k, l))(keys, filtered).astype(jnp.int32)


def _static_part(s: SamplingConfig) -> SamplingConfig:
    """What changes the compiled program: lengths, n, greedy or not, top-k, whether top-p
    is on, how many EOS ids. Temperature, top-p, EOS and pad values are passed traced."""
    return s.replace(temperature=0.0 if s.greedy else 1.0, top_p=1.0 if s.top_p >= 1.0 else 0.5,
                     eos_token_ids=(-1,) * len(s.eos_token_ids), pad_token_id=0)


def _dynamic_part(s: SamplingConfig) -> dict:
    return {"temperature": jnp.float32(s.temperature if not s.greedy else 1.0),
            "top_p": jnp.float32(s.top_p),
            "eos": jnp.asarray(s.eos_token_ids or (-1,), jnp.int32),
            "pad": jnp.int32(s.pad_token_id)}


def _row_keys(rng: jax.Array, step: jax.Array, rows: int) -> jax.Array:
    step_key = jax.random.fold_in(rng, step)
    return jax.vmap(lambda r: jax.random.fold_in(step_key, r))(jnp.arange(rows))


def _is_key_per_prompt(rng, batch: int) -> bool:
    """`rng` holds one key per prompt: typed keys `[B]` or raw uint32 keys `[B, 2]`."""
    typed = jnp.issubdtype(rng.dtype, jax.dtypes.prng_key)
    shape = tuple(rng.shape)
    if typed:
        if shape == ():
            return False
        if shape == (batch,):
            return True
    else:
        if len(shape) == 1:
            return False
        if len(shape) == 2 and shape[0] == batch:
            return True
    raise ValueError(f"rng must be one PRNG key or one key per prompt ([{batch}] typed keys or "
                     f"[{batch}, 2] raw keys); got shape {shape} dtype {rng.dtype}")


def _sample_keys(rng: jax.Array, batch: int, n: int):
    """`step -> [batch * n] keys`: one stream per (prompt, sample) when `rng` holds a key per
    prompt, else row `r` at step `t` uses `fold_in(fold_in(rng, t), r)`."""
    rows = batch * n
    if not _is_key_per_prompt(rng, batch):
        return lambda t: _row_keys(rng, t, rows)
    if not jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
        rng = jax.random.wrap_key_data(rng)
    base = jax.vmap(jax.random.fold_in)(jnp.repeat(rng, n, axis=0),
                                        jnp.tile(jnp.arange(n, dtype=jnp.uint32), batch))
    return lambda t: jax.vmap(lambda k: jax.random.fold_in(k, t))(base)


# --------------------------------------------------------------------------- the loop


def _apply(model, variables, *args, method):
    return model.apply(variables, *args, method=method)


@functools.partial(jax.jit, static_argnames=("model", "sampling"))
def _generate(model, sampling: SamplingConfig, dynamic, variables, prompt_ids, prompt_mask,
              pixel_values, image_mask, rng) -> GenerationOutput:
    cls = type(model)
    b, p = prompt_ids.shape
    n, max_new = sampling.n, sampling.max_new_tokens
    slots = p + max_new
    rows = b * n

    # Prefill: images encoded once per prompt, the prompt written into slots [0, P).
    # Padding slots are masked, but their ids still go through the embedding lookup: make
    # them a valid id (an out-of-range id would gather NaN into the cache).
    prompt_ids = jnp.where(prompt_mask > 0, prompt_ids, 0)
    features = None
    if pixel_values is not None:
        features = _apply(model, variables, pixel_values, method=cls.encode_images)
    embeds = _apply(model, variables, prompt_ids, features, image_mask, method=cls.embed)
    prompt_mask = prompt_mask.astype(jnp.int32)
    slot_mask = jnp.concatenate([prompt_mask, jnp.zeros((b, max_new), jnp.int32)], axis=1)
    # The family's positions (M-RoPE: 3 streams over the images' grids) and where the
    # generated tokens continue (the number of real tokens, or past the images' extents).
    positions, next_position = _apply(model, variables, prompt_ids, prompt_mask, pixel_values,
                                      image_mask, method=cls.positions)
    cache = registry.for_config(model.cfg).init_cache(model.cfg, b, slots)
    hidden, cache = _apply(model, variables, embeds, slot_mask, positions, cache,
                           method=cls.decode)
    # Left padding: the last slot of every row holds its last real token.
    logits = _apply(model, variables, hidden[:, -1], method=cls.lm_logits)

    # n samples per prompt: rows b*n .. b*n + n - 1 share prompt b's cache.
    def rep(x):
        return jnp.repeat(x, n, axis=0) if n > 1 else x

    cache = {"k": jnp.repeat(cache["k"], n, axis=1) if n > 1 else cache["k"],
             "v": jnp.repeat(cache["v"], n, axis=1) if n > 1 else cache["v"],
             "index": cache["index"]}
    logits, slot_mask = rep(logits), rep(slot_mask)
    prompt_len = rep(next_position)

    eos, pad = dynamic["eos"], dynamic["pad"]
    keys_at = _sample_keys(rng, b, n)

    def cond(state):
        t, _, _, _, _, _, done, _ = state
        return (t < max_new) & ~jnp.all(done)

    def body(state):
        t, cache, slot_mask, logits, tokens, logps, done, lengths = state
        tok = sample_logits(keys_at(t), logits, sampling,
                            dynamic["temperature"], dynamic["top_p"])
        tok = jnp.where(done, pad, tok)
        lp = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), tok[:, None], axis=1)[:, 0]
        tokens = tokens.at[:, t].set(tok)
        logps = logps.at[:, t].set(jnp.where(done, 0.0, lp))
        lengths = jnp.where(done, lengths, t + 1)
        done = done | jnp.any(tok[:, None] == eos[None, :], axis=1)

        def feed(operands):
            cache, slot_mask = operands
            slot_mask = jax.lax.dynamic_update_slice_in_dim(
                slot_mask, jnp.ones((rows, 1), jnp.int32), p + t, axis=1)
            fed = jnp.where(done, 0, tok)[:, None]  # pad_token_id may be outside the vocab
            emb = _apply(model, variables, fed, None, None, method=cls.embed)
            hidden, cache = _apply(model, variables, emb, slot_mask, (prompt_len + t)[:, None],
                                   cache, method=cls.decode)
            logits = _apply(model, variables, hidden[:, 0], method=cls.lm_logits)
            return cache, slot_mask, logits

        def skip(operands):
            cache, slot_mask = operands
            return cache, slot_mask, jnp.zeros_like(logits)

        # The last step's decode would only produce logits nobody reads.
        cache, slot_mask, logits = jax.lax.cond(
            (t + 1 < max_new) & ~jnp.all(done), feed, skip, (cache, slot_mask))
        return t + 1, cache, slot_mask, logits, tokens, logps, done, lengths

    state = (
        jnp.int32(0), cache, slot_mask, logits,
        jnp.full((rows, max_new), pad, jnp.int32),
        jnp.zeros((rows, max_new), jnp.float32),
        jnp.zeros((rows,), bool),
        jnp.zeros((rows,), jnp.int32),
    )
    state = jax.lax.while_loop(cond, body, state)
    _, _, _, _, tokens, logps, _, lengths = state
    return GenerationOutput(tokens, lengths, logps)


def generate_tokens(
    model,
    variables: Mapping[str, Any],
    prompt_ids,
    prompt_mask,
    pixel_values=None,
    image_mask=None,
    sampling: Optional[SamplingConfig] = None,
    rng: Optional[jax.Array] = None,
) -> GenerationOutput:
    """Generate up to `sampling.max_new_tokens` tokens for each of `n` samples per prompt.

    model:        the family's module, e.g. `Llava(cfg)` (hashable; part of the compilation key).
    variables:    `{'params': ...}` (+ `'lora': ...` to generate with adapters).
    prompt_ids:   int32 `[B, P]`, LEFT padded (the last column is every row's last token);
                  each image already expanded to its image tokens.
    prompt_mask:  `[B, P]`, 1 on real tokens. Every row needs at least one real token.
    pixel_values: the family's image input (LLaVA float32 `[B, I, H, W, 3]`, Qwen2.5-VL
                  a dict of patches and grids) or None (text-only).
    image_mask:   bool `[B, I]` or None (all images real).
    sampling:     `SamplingConfig`. Compiled once per (max_new_tokens, n, greedy or not,
                  top_k, top-p on/off, number of EOS ids); temperature, top_p, EOS and pad
                  values are runtime inputs (changing them does not recompile).
    rng:          PRNG key (typed or raw), or one key per prompt (`[B]` typed / `[B, 2]`
                  raw: sample j of prompt b then depends only on `rng[b]`, see the module
                  docstring); ignored for greedy decoding.

    Returns `GenerationOutput(tokens [B*n, max_new], lengths [B*n], logps [B*n, max_new])`.
    """
    sampling = sampling or SamplingConfig()
    prompt_ids = jnp.asarray(prompt_ids, jnp.int32)
    prompt_mask = jnp.asarray(prompt_mask, jnp.int32)
    if prompt_ids.ndim != 2 or prompt_mask.shape != prompt_ids.shape:
        raise ValueError(f"prompt_ids and prompt_mask must both be [batch, length]; got "
                         f"{prompt_ids.shape} and {prompt_mask.shape}")
    m = None
    if getattr(prompt_mask, "is_fully_addressable", True):  # multi-host arrays: not checked
        try:
            m = np.asarray(prompt_mask)
        except jax.errors.TracerArrayConversionError:  # called under jit: cannot check
            m = None
    if m is not None and m.size and not np.all(m[:, -1]):
        raise ValueError("prompts must be LEFT padded: prompt_mask[:, -1] must be 1 for "
                         "every row (the last column holds each prompt's last token)")
    if pixel_values is not None:
        pixel_values = jax.tree.map(jnp.asarray, pixel_values)
        lead = {tuple(x.shape[:2]) for x in jax.tree.leaves(pixel_values)}
        if len(lead) != 1 or next(iter(lead))[0] != prompt_ids.shape[0]:
            raise ValueError(f"pixel_values must be [batch, images, ...] with batch "
                             f"{prompt_ids.shape[0]}; got shapes "
                             f"{jax.tree.map(lambda x: x.shape, pixel_values)}")
        if image_mask is not None:
            image_mask = jnp.asarray(image_mask, bool)
            if image_mask.shape != next(iter(lead)):
                raise ValueError(f"image_mask must be [batch, images] = "
                                 f"{next(iter(lead))}; got {image_mask.shape}")
    else:
        image_mask = None
    if rng is None:
        rng = jax.random.key(0)
    _is_key_per_prompt(rng, prompt_ids.shape[0])  # a wrong shape fails here, not in the trace
    return _generate(model, _static_part(sampling), _dynamic_part(sampling), variables,
                     prompt_ids, prompt_mask, pixel_values, image_mask, rng)


# --------------------------------------------------------------------------- host side


def image_slots(family, cfg, rows, preprocess):
    """The family's image arrays by batch key (`family.model_images` makes the model's
    input of them) and `image_mask [B, I]` for `rows` (a list of image lists)
    — slots a power of two in number, and for variable-size images (Qwen2.5-VL) a
    power-of-two patch budget at least the largest image's: few distinct shapes, so few
    compilations. `preprocess(image)` gives one image's arrays."""
    arrays = [[preprocess(im) for im in row] for row in rows]
    slots = bucket_length(max(len(r) for r in arrays), 1)
    need = max((family.image_budget(a) for r in arrays for a in r), default=0)
    out = family.empty_images(cfg, len(rows), slots, bucket_length(need, 1) if need else 0)
    image_mask = np.zeros((len(rows), slots), bool)
    for r, row in enumerate(arrays):
        for j, a in enumerate(row):
            place_image(out, r, j, a)
            image_mask[r, j] = True
    return out, image_mask


def bucket_length(n: int, minimum: int = 16) -> int:
    """The smallest power of two >= max(n, minimum)."""
    n = max(int(n), int(minimum), 1)
    return 1 << (n - 1).bit_length()


def cut_at_stop_strings(text: str, stops: Sequence[str]) -> str:
    """`text` up to (not including) the earliest occurrence of any non-empty stop string."""
    cut = len(text)
    for s in stops:
        if s:
            i = text.find(s)
            if i != -1:
                cut = min(cut, i)
    return text[:cut]


class Completion(NamedTuple):
    """One generated answer with its details (`Generator.generate(..., details=True)`)."""

    text: str                # decoded (special tokens skipped), cut at stop strings, stripped
    token_ids: list          # generated ids up to and including EOS
    logp: float              # sum of raw-model log-probs of token_ids
    finished: bool           # ended with an EOS token (False: hit max_new_tokens)


class Generator:
    """Host-side batched generation from conversations.

        gen = Generator(model, {'params': params}, tokenizer, template="vicuna_v1")
        texts = gen.generate([[{"role": "user", "content": "<image>\\nWhat is this?"}]],
                             [[pil_image]], SamplingConfig(max_new_tokens=64), seed=0)
        # texts[i] holds sampling.n strings for conversation i

    Each conversation ends with a user turn; it is rendered with the generation prompt and
    tokenized by `chat.tokenize(..., add_generation_prompt=True)` (every `<image>` expanded
    to `cfg.num_image_tokens` image tokens; `images[i]` must hold one PIL image per marker,
    preprocessed by the model family's `preprocess_image(cfg, image, image_mode)`).

    Batching: prompts are sorted by length and cut into batches of `batch_size`; each batch
    is LEFT padded to a power-of-two length (at least `min_prompt_bucket`), its image slots
    to a power-of-two count, and its rows to `batch_size` (or to a power of two when there
    are fewer prompts; filler rows repeat a real prompt and are dropped), so the number of
    compilations stays logarithmic in the prompt lengths. Results come back in input order.

    Stopping: EOS ids stop a row on device; `chat.stop_strings(template)` are applied to the
    decoded text here, on the host (see the module docstring). When `sampling.eos_token_ids`
    is empty the tokenizer's `eos_token_id` is used; `sampling.pad_token_id` only fills
    finished rows and never reaches the text.

    Randomness: batch `k` uses `fold_in(key(seed), k)`; the same inputs, batch size and seed
    give the same texts.
    """

    def __init__(self, model, variables, tokenizer, template: Optional[str] = None, *,
                 image_size: Optional[int] = None, image_mode: Optional[str] = None,
                 batch_size: int = 8, min_prompt_bucket: int = 16):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        self.model = model
        self.variables = variables
        self.tokenizer = tokenizer
        self.cfg = model.cfg
        self.family = registry.for_config(self.cfg)
        self.template = template or self.family.default_template
        self.image_size = getattr(self.cfg, "image_size", None)   # None: native resolution
        if image_size is not None and int(image_size) != self.image_size:
            raise ValueError(f"image_size={image_size}: this model's image processor makes "
                             f"{self.image_size}-px images; leave image_size unset")
        self.image_mode = image_mode or self.family.default_image_mode
        self.batch_size = int(batch_size)
        self.min_prompt_bucket = int(min_prompt_bucket)

    # -- pieces --------------------------------------------------------------------
    def stop_strings(self) -> list:
        from mmalign_jax.data import chat
        return chat.stop_strings(self.template, self.tokenizer)

    def tokenize(self, conversation, images=()) -> tuple:
        """`(prompt ids int32[T], number of images)` for one conversation; each image takes
        the family's number of tokens for its size (`images`: its PIL images or their
        `(width, height)`, in order; needed only by native-resolution families)."""
        from mmalign_jax.data import chat
        counts = self.cfg.num_image_tokens
        if self.family.native_resolution:
            counts = [self.family.image_tokens(self.cfg, getattr(im, "size", im)) for im in images]
        tok = chat.tokenize(conversation, self.tokenizer, template=self.template,
                            image_token_id=self.cfg.image_token_id,
                            num_image_tokens=counts,
                            add_generation_prompt=True)
        return np.asarray(tok.input_ids, np.int32), int(tok.num_images)

    def resolve_sampling(self, sampling: Optional[SamplingConfig]) -> SamplingConfig:
        sampling = sampling or SamplingConfig()
        if not sampling.eos_token_ids:
            eos = getattr(self.tokenizer, "eos_token_id", None)
            if eos is None:
                eos = self.cfg.text.eos_token_id
            sampling = sampling.replace(eos_token_ids=(int(eos),))
        return sampling

    def decode(self, token_ids, eos_token_ids=()) -> str:
        ids = [int(i) for i in token_ids]
        if ids and ids[-1] in eos_token_ids:
            ids = ids[:-1]
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        return cut_at_stop_strings(text, self.stop_strings()).strip()

    # -- the loop ------------------------------------------------------------------
    def generate(self, conversations, images=None, sampling: Optional[SamplingConfig] = None,
                 seed: int = 0, *, details: bool = False):
        """`n` answers per conversation: `list[list[str]]` (or `list[list[Completion]]` with
        `details=True`), in input order."""
        sampling = self.resolve_sampling(sampling)
        conversations = list(conversations)
        if images is None:
            images = [[] for _ in conversations]
        images = [list(x or []) for x in images]
        if len(images) != len(conversations):
            raise ValueError(f"{len(conversations)} conversations but {len(images)} image lists")

        prompts = []
        for i, conv in enumerate(conversations):
            ids, n_img = self.tokenize(conv, images[i])
            if n_img != len(images[i]):
                raise ValueError(f"conversation {i} has {n_img} <image> markers but "
                                 f"{len(images[i])} images")
            if ids.size == 0:
                raise ValueError(f"conversation {i} tokenized to an empty prompt")
            prompts.append(ids)

        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        results: list = [None] * len(prompts)
        root = jax.random.key(seed)
        for k, start in enumerate(range(0, len(order), self.batch_size)):
            chunk = order[start:start + self.batch_size]
            rows = min(self.batch_size, bucket_length(len(chunk), 1))
            members = chunk + [chunk[0]] * (rows - len(chunk))
            p = bucket_length(max(len(prompts[i]) for i in chunk), self.min_prompt_bucket)
            ids = np.zeros((rows, p), np.int32)  # masked; any valid id does
            mask = np.zeros((rows, p), np.int32)
            for r, i in enumerate(members):
                n = len(prompts[i])
                ids[r, p - n:] = prompts[i]
                mask[r, p - n:] = 1
            n_img = max(len(images[i]) for i in chunk)
            pixel_values = image_mask = None
            if n_img:
                arrays, image_mask = image_slots(
                    self.family, self.cfg, [images[i] for i in members],
                    lambda im: self.family.preprocess_image(self.cfg, im, self.image_mode))
                pixel_values = self.family.model_images(arrays)
            out = generate_tokens(self.model, self.variables, ids, mask, pixel_values,
                                  image_mask, sampling, jax.random.fold_in(root, k))
            tokens, lengths, logps = (np.asarray(x) for x in out)
            eos = set(sampling.eos_token_ids)
            for r, i in enumerate(chunk):
                answers = []
                for j in range(sampling.n):
                    row = r * sampling.n + j
                    toks = tokens[row, :lengths[row]].tolist()
                    text = self.decode(toks, eos)
                    if details:
                        logp = float(logps[row, :lengths[row]].sum())
                        answers.append(Completion(text, toks, logp, bool(toks) and toks[-1] in eos))
                    else:
                        answers.append(text)
                results[i] = answers
        return results
