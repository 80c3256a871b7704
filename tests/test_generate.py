"""generate.py: KV-cache generation against Hugging Face `generate` and full recomputation,
the sampling filters, EOS handling and the host-side `Generator`."""
import numpy as np
import pytest

import jax
import jax.numpy as jnp

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from mmalign_jax import convert  # noqa: E402
from mmalign_jax import generate as G  # noqa: E402
from mmalign_jax.models import llava  # noqa: E402
from mmalign_jax.models.config import LoraConfig  # noqa: E402

VOCAB = 128
IMG = 127  # <image>
PAD, BOS, EOS = 0, 1, 2
N_IMG_TOKENS = 16  # 16x16 image, patch 4, CLS dropped
STEPS = 10
P_IMG = 32  # left-padded length of the two-row image batches (shared: one compilation)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def hf_and_ours(tmp_path_factory):
    """A tiny random LLaVA in transformers, saved and loaded back through convert."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaForConditionalGeneration

    vc = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, image_size=16, patch_size=4, projection_dim=32)
    tc = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                     pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS)
    hc = transformers.LlavaConfig(vision_config=vc, text_config=tc, image_token_index=IMG,
                                  image_seq_length=N_IMG_TOKENS)
    torch.manual_seed(0)
    hf = LlavaForConditionalGeneration(hc).eval()
    # Default init (std 0.02) gives near-uniform logits and greedy decoding that repeats one
    # token; std 0.2 on every matrix makes the tokens vary and the argmax margins wide.
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if p.ndim >= 2 and "norm" not in name and "layrnorm" not in name:
                p.normal_(0.0, 0.2)
    path = tmp_path_factory.mktemp("tiny_llava")
    hf.save_pretrained(path)
    cfg, params = convert.load_hf_llava(path, dtype="float32")
    assert cfg.num_image_tokens == N_IMG_TOKENS and cfg.image_token_id == IMG
    return hf, llava.Llava(cfg), {"params": params}


def _prompt(rng, n_before, n_after, image=True):
    ids = [BOS] + list(rng.integers(3, IMG, n_before))
    if image:
        ids += [IMG] * N_IMG_TOKENS
    return np.asarray(ids + list(rng.integers(3, IMG, n_after)), np.int64)


def _left_pad(prompts, p=P_IMG):
    ids = np.full((len(prompts), p), PAD, np.int64)
    mask = np.zeros((len(prompts), p), np.int64)
    for r, x in enumerate(prompts):
        ids[r, p - len(x):] = x
        mask[r, p - len(x):] = 1
    return ids, mask


def _hf_greedy(hf, ids, mask, pixels, steps=STEPS, eos=None):
    kw = {} if pixels is None else {"pixel_values": torch.tensor(pixels)}
    with torch.no_grad():
        out = hf.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                          do_sample=False, max_new_tokens=steps, eos_token_id=eos,
                          pad_token_id=PAD, **kw)
    return out[:, ids.shape[1]:].numpy()


def _ours(model, variables, ids, mask, pixels=None, image_mask=None, seed=0, **kw):
    kw.setdefault("max_new_tokens", STEPS)
    kw.setdefault("pad_token_id", PAD)
    px = None if pixels is None else np.transpose(pixels, (0, 2, 3, 1))[:, None]
    if px is not None and image_mask is None:
        image_mask = np.ones(px.shape[:2], bool)
    out = G.generate_tokens(model, variables, ids.astype(np.int32), mask.astype(np.int32), px,
                            image_mask, G.SamplingConfig(**kw), jax.random.key(seed))
    return G.GenerationOutput(*(np.asarray(x) for x in out))


def _text_prompt():
    ids = _prompt(np.random.default_rng(2), 6, 0, image=False)[None]
    return ids, np.ones_like(ids)


def _text_batch():
    rng = np.random.default_rng(7)
    return _left_pad([_prompt(rng, 3, 0, image=False), _prompt(rng, 6, 0, image=False)], 8)


def _pixels(n, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 3, 16, 16)).astype(np.float32)


# --------------------------------------------------------------------------- vs transformers


def test_greedy_matches_hf_with_image(hf_and_ours):
    hf, model, variables = hf_and_ours
    ids = _prompt(np.random.default_rng(1), 3, 5)[None]
    mask = np.ones_like(ids)
    px = _pixels(1)
    want = _hf_greedy(hf, ids, mask, px)
    got = _ours(model, variables, ids, mask, px)
    assert len(set(want[0].tolist())) >= 4, "degenerate test model: greedy tokens barely vary"
    np.testing.assert_array_equal(got.tokens, want)
    np.testing.assert_array_equal(got.lengths, [STEPS])


def test_greedy_matches_hf_text_only(hf_and_ours):
    hf, model, variables = hf_and_ours
    ids, mask = _text_prompt()
    want = _hf_greedy(hf, ids, mask, None)
    got = _ours(model, variables, ids, mask)
    assert len(set(want[0].tolist())) >= 4
    np.testing.assert_array_equal(got.tokens, want)


def test_greedy_matches_hf_left_padded_batch(hf_and_ours):
    hf, model, variables = hf_and_ours
    rng = np.random.default_rng(3)
    ids, mask = _left_pad([_prompt(rng, 2, 9), _prompt(rng, 4, 1)])
    assert mask[1, 0] == 0  # the second row really is padded
    px = _pixels(2, seed=3)
    want = _hf_greedy(hf, ids, mask, px)
    got = _ours(model, variables, ids, mask, px)
    np.testing.assert_array_equal(got.tokens, want)
    assert not np.array_equal(want[0], want[1])


def test_greedy_matches_hf_mixed_image_and_text_rows(hf_and_ours):
    """Row 0 has an image, row 1 is text only: `image_mask` marks row 1's slot as padding."""
    hf, model, variables = hf_and_ours
    rng = np.random.default_rng(4)
    ids, mask = _left_pad([_prompt(rng, 2, 3), _prompt(rng, 7, 0, image=False)])
    px = _pixels(2, seed=4)
    want = _hf_greedy(hf, ids, mask, px[:1])  # HF takes the images of the whole batch, flat
    got = _ours(model, variables, ids, mask, px, image_mask=np.array([[True], [False]]))
    np.testing.assert_array_equal(got.tokens, want)


def test_eos_matches_hf(hf_and_ours):
    """With an EOS that occurs, both stop the row there and pad after it."""
    hf, model, variables = hf_and_ours
    rng = np.random.default_rng(3)
    ids, mask = _left_pad([_prompt(rng, 2, 9), _prompt(rng, 4, 1)])
    px = _pixels(2, seed=3)
    free = _ours(model, variables, ids, mask, px)
    eos = int(free.tokens[0, 3])
    want = _hf_greedy(hf, ids, mask, px, eos=eos)
    got = _ours(model, variables, ids, mask, px, eos_token_ids=(eos, eos))
    np.testing.assert_array_equal(got.tokens, want[:, :STEPS] if want.shape[1] >= STEPS else
                                  np.pad(want, ((0, 0), (0, STEPS - want.shape[1])),
                                         constant_values=PAD))


# --------------------------------------------------------------------------- vs recompute


def _greedy_by_recompute(model, variables, ids, mask, px, steps):
    """argmax of the full forward (no cache) on the growing left-padded sequence. The
    sequence is right-extended with masked slots to a fixed length so one compilation
    serves every step; causal attention keeps those slots out of the earlier positions."""
    px = jnp.asarray(np.transpose(px, (0, 2, 3, 1))[:, None])
    b, p = ids.shape
    ids = np.concatenate([ids, np.zeros((b, steps), ids.dtype)], axis=1).astype(np.int32)
    mask = np.concatenate([mask, np.zeros((b, steps), mask.dtype)], axis=1).astype(np.int32)
    forward = jax.jit(lambda i, m: model.apply(variables, i, px, m))
    first_logits = None
    for t in range(steps):
        logits = np.asarray(forward(ids, mask))[:, p + t - 1]
        first_logits = logits if first_logits is None else first_logits
        ids[:, p + t] = logits.argmax(-1)
        mask[:, p + t] = 1
    return ids[:, p:], first_logits


def test_cache_equals_full_recompute(hf_and_ours):
    _, model, variables = hf_and_ours
    rng = np.random.default_rng(5)
    ids, mask = _left_pad([_prompt(rng, 1, 2), _prompt(rng, 5, 6)])
    px = _pixels(2, seed=5)
    want, logits = _greedy_by_recompute(model, variables, ids, mask, px, STEPS)
    got = _ours(model, variables, ids, mask, px)
    np.testing.assert_array_equal(got.tokens, want)
    # logps are the raw model's log-probabilities of the emitted tokens
    first = np.asarray(jax.nn.log_softmax(logits))[np.arange(2), want[:, 0]]
    np.testing.assert_allclose(got.logps[:, 0], first, rtol=1e-5, atol=1e-5)


def test_lora_collection_is_used(hf_and_ours):
    """Generating with {'params', 'lora'} equals generating with the merged params."""
    from mmalign_jax.models import lora as lora_lib

    _, model, variables = hf_and_ours
    cfg = model.cfg.replace(lora=LoraConfig(rank=4, alpha=8.0, dropout=0.0))
    params = variables["params"]
    adapters = lora_lib.init_lora(cfg, params, jax.random.key(1))
    leaves, tree = jax.tree_util.tree_flatten(adapters)
    keys = jax.random.split(jax.random.key(2), len(leaves))
    adapters = jax.tree_util.tree_unflatten(
        tree, [0.3 * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)])
    lmodel = llava.Llava(cfg)
    ids, mask = _text_prompt()
    with_lora = _ours(lmodel, {"params": params, "lora": adapters}, ids, mask)
    merged = _ours(model, {"params": lora_lib.merge(cfg, params, adapters)}, ids, mask)
    base = _ours(model, {"params": params}, ids, mask)
    np.testing.assert_array_equal(with_lora.tokens, merged.tokens)
    assert not np.array_equal(with_lora.tokens, base.tokens)


# --------------------------------------------------------------------------- sampling


def test_sampling_determinism_topk1_and_n_ordering(hf_and_ours):
    _, model, variables = hf_and_ours
    ids, mask = _text_batch()
    kw = dict(temperature=1.5, n=3)
    a = _ours(model, variables, ids, mask, seed=11, **kw)
    b = _ours(model, variables, ids, mask, seed=11, **kw)
    c = _ours(model, variables, ids, mask, seed=12, **kw)
    assert a.tokens.shape == (6, STEPS)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    assert not np.array_equal(a.tokens, c.tokens)
    assert len({tuple(r) for r in a.tokens.tolist()}) == 6  # samples differ from each other

    greedy = _ours(model, variables, ids, mask)
    top1 = _ours(model, variables, ids, mask, seed=3, temperature=1.0, top_k=1)
    np.testing.assert_array_equal(top1.tokens, greedy.tokens)
    # n copies per prompt, prompt-major: rows b*n + j
    g2 = _ours(model, variables, ids, mask, n=2)
    np.testing.assert_array_equal(g2.tokens, np.repeat(greedy.tokens, 2, axis=0))
    # A tiny nucleus is greedy too.
    nucleus = _ours(model, variables, ids, mask, seed=3, temperature=1.0, top_p=1e-6)
    np.testing.assert_array_equal(nucleus.tokens, greedy.tokens)


def _draw(logits, sampling, n=20000, seed=0):
    keys = jax.random.split(jax.random.key(seed), n)
    rows = jnp.broadcast_to(jnp.asarray(logits, jnp.float32), (n, len(logits)))
    return np.asarray(jax.jit(G.sample_logits, static_argnums=2)(keys, rows, sampling))


def _assert_frequencies(draws, probs):
    n = len(draws)
    counts = np.bincount(draws, minlength=len(probs))
    assert counts[probs == 0].sum() == 0
    expected = n * probs[probs > 0]
    chi2 = float(((counts[probs > 0] - expected) ** 2 / expected).sum())
    # dof <= 4: P(chi2 > 25) < 1e-4
    assert chi2 < 25.0, (counts, expected)


def test_temperature_sampling_matches_softmax():
    logits = np.array([1.0, 0.2, -0.5, 2.0, 0.0], np.float32)
    s = G.SamplingConfig(temperature=0.7)
    probs = np.asarray(jax.nn.softmax(logits / 0.7), np.float64)
    _assert_frequencies(_draw(logits, s), probs)


def test_top_k_and_top_p_sampling_distributions():
    logits = np.array([1.0, 0.2, -0.5, 2.0, 0.0], np.float32)
    # top-k 2: only tokens 3 and 0, renormalised
    probs = np.zeros(5)
    probs[[3, 0]] = np.asarray(jax.nn.softmax(jnp.asarray([2.0, 1.0])))[[0, 1]]
    _assert_frequencies(_draw(logits, G.SamplingConfig(temperature=1.0, top_k=2), seed=1), probs)
    # top-p 0.8 at T=1: softmax = .. [3]=.53 [0]=.19 [1]=.09 [4]=.07 [2]=.04 (ish)
    full = np.asarray(jax.nn.softmax(logits), np.float64)
    order = np.argsort(-full)
    before = np.cumsum(full[order]) - full[order]
    keep = order[before < 0.8]
    probs = np.zeros(5)
    probs[keep] = full[keep] / full[keep].sum()
    assert 2 <= len(keep) < 5
    _assert_frequencies(_draw(logits, G.SamplingConfig(temperature=1.0, top_p=0.8), seed=2), probs)


def test_filter_top_p_keeps_exactly_the_nucleus():
    probs = np.array([0.05, 0.5, 0.15, 0.3], np.float32)
    logits = jnp.log(jnp.asarray(probs))
    kept = lambda p: set(np.flatnonzero(np.isfinite(np.asarray(G.filter_top_p(logits, p)))))
    assert kept(0.4) == {1}
    assert kept(0.75) == {1, 3}
    assert kept(0.9) == {1, 3, 2}
    assert kept(0.99) == {0, 1, 2, 3}
    assert kept(1.0) == {0, 1, 2, 3}
    assert kept(1e-9) == {1}  # the most probable token always survives
    # kept logits are unchanged
    out = np.asarray(G.filter_top_p(logits, 0.75))
    np.testing.assert_array_equal(out[[1, 3]], np.asarray(logits)[[1, 3]])


def test_filters_match_transformers_warpers():
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    logits = np.random.default_rng(0).standard_normal((16, 50)).astype(np.float32) * 2
    for p in (0.1, 0.5, 0.9, 0.97):
        want = TopPLogitsWarper(p)(None, torch.tensor(logits)).numpy()
        got = np.asarray(G.filter_top_p(jnp.asarray(logits), p))
        np.testing.assert_array_equal(np.isfinite(got), np.isfinite(want), err_msg=f"top_p={p}")
    for k in (1, 3, 20):
        want = TopKLogitsWarper(k)(None, torch.tensor(logits)).numpy()
        got = np.asarray(G.filter_top_k(jnp.asarray(logits), k))
        np.testing.assert_array_equal(np.isfinite(got), np.isfinite(want), err_msg=f"top_k={k}")


# --------------------------------------------------------------------------- EOS


def test_eos_rows_stop_independently(hf_and_ours):
    _, model, variables = hf_and_ours
    rng = np.random.default_rng(8)
    ids, mask = _left_pad([_prompt(rng, 3, 2), _prompt(rng, 1, 7)])
    px = _pixels(2, seed=8)
    free = _ours(model, variables, ids, mask, px)
    eos = (int(free.tokens[0, 2]), int(free.tokens[1, 5]))
    got = _ours(model, variables, ids, mask, px, eos_token_ids=eos)
    for r in range(2):
        hits = np.flatnonzero(np.isin(free.tokens[r], eos))
        length = int(hits[0]) + 1
        assert got.lengths[r] == length
        np.testing.assert_array_equal(got.tokens[r, :length], free.tokens[r, :length])
        assert (got.tokens[r, length:] == PAD).all()
        np.testing.assert_allclose(got.logps[r, :length], free.logps[r, :length], rtol=1e-5,
                                   atol=1e-5)
        assert (got.logps[r, length:] == 0).all()
    assert got.lengths[0] != got.lengths[1]

    # A pad id outside the vocabulary (and in the prompt's masked slots) changes nothing else.
    odd = _ours(model, variables, np.where(mask > 0, ids, -1), mask, px, eos_token_ids=eos,
                pad_token_id=-1)
    np.testing.assert_array_equal(odd.tokens, np.where(got.tokens == PAD, -1, got.tokens))
    np.testing.assert_array_equal(odd.lengths, got.lengths)

    # Every row ends early: the loop stops, the rest is padding.
    eos_all = (int(free.tokens[0, 0]), int(free.tokens[1, 0]))
    early = _ours(model, variables, ids, mask, px, eos_token_ids=eos_all)
    np.testing.assert_array_equal(early.lengths, [1, 1])
    assert (early.tokens[:, 1:] == PAD).all()


def test_eos_with_samples(hf_and_ours):
    """n > 1 samples under sampling: each row stops at its own first EOS."""
    _, model, variables = hf_and_ours
    ids, mask = _text_batch()
    kw = dict(temperature=1.5, n=3, seed=11)  # as in the determinism test: compiled already
    free = _ours(model, variables, ids, mask, **kw)
    eos = (int(free.tokens[0, 2]), int(free.tokens[4, 6]))
    got = _ours(model, variables, ids, mask, eos_token_ids=eos, **kw)
    assert len(set(got.lengths.tolist())) > 1
    for r in range(6):
        hits = np.flatnonzero(np.isin(free.tokens[r], eos))
        length = int(hits[0]) + 1 if hits.size else STEPS
        assert got.lengths[r] == length
        np.testing.assert_array_equal(got.tokens[r, :length], free.tokens[r, :length])
        assert (got.tokens[r, length:] == PAD).all()


def test_sampling_config_validation():
    with pytest.raises(ValueError, match="top_p"):
        G.SamplingConfig(top_p=0.0)
    with pytest.raises(ValueError, match="temperature"):
        G.SamplingConfig(temperature=-1)
    with pytest.raises(ValueError, match="max_new_tokens"):
        G.SamplingConfig(max_new_tokens=0)
    s = G.SamplingConfig(eos_token_ids=[2, 5])
    assert s.eos_token_ids == (2, 5) and hash(s) == hash(G.SamplingConfig(eos_token_ids=(2, 5)))
    assert G.SamplingConfig(eos_token_ids=7).eos_token_ids == (7,)


def test_right_padding_is_rejected(hf_and_ours):
    _, model, variables = hf_and_ours
    with pytest.raises(ValueError, match="LEFT"):
        _ours(model, variables, np.array([[1, 5, 0]]), np.array([[1, 1, 0]]))


# --------------------------------------------------------------------------- Generator


def test_bucket_and_stop_strings():
    assert [G.bucket_length(n, 16) for n in (1, 16, 17, 33)] == [16, 16, 32, 64]
    assert G.bucket_length(3, 1) == 4
    assert G.cut_at_stop_strings("Hello USER: more</s>x", ["</s>", "USER:"]) == "Hello "
    assert G.cut_at_stop_strings("Hello", ["</s>", ""]) == "Hello"


def _word_tokenizer():
    """A fast word-level tokenizer (offsets work; BOS added) with ids below VOCAB."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = ("A chat between a curious user and an artificial intelligence assistant . The "
             "gives helpful , detailed polite answers to the user ' s questions USER : "
             "ASSISTANT What is this shape ? red blue green circle square one two three").split()
    vocab = {"<pad>": PAD, "<s>": BOS, "</s>": EOS, "<unk>": 3}
    for w in words:
        vocab.setdefault(w, len(vocab))
    for i in range(len(vocab), 100):
        vocab[f"w{i}"] = i
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A",
                                                       special_tokens=[("<s>", BOS)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>")


def test_generator_end_to_end(hf_and_ours):
    from PIL import Image

    _, model, variables = hf_and_ours
    tokenizer = _word_tokenizer()
    gen = G.Generator(model, variables, tokenizer, "vicuna_v1", batch_size=4)
    rng = np.random.default_rng(10)
    img = lambda: Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8))
    convs = [
        [{"role": "user", "content": "<image>\nWhat is this shape?"}],
        [{"role": "user", "content": "What is red?"}],
        [{"role": "user", "content": "<image>\nWhat is this? one two three"}],
    ]
    images = [[img()], [], [img()]]
    sampling = G.SamplingConfig(max_new_tokens=6, n=2, pad_token_id=PAD)
    out = gen.generate(convs, images, sampling, seed=0)
    assert [len(x) for x in out] == [2, 2, 2]
    assert all(isinstance(t, str) for x in out for t in x)
    assert out[0][0] == out[0][1]  # greedy: both samples agree
    # The same answer as generating that prompt alone, in its own batch, with token details.
    alone = gen.generate(convs[1:2], images[1:2], sampling.replace(n=1), details=True)[0][0]
    assert alone.text == out[1][0]
    assert len(alone.token_ids) <= 6 and np.isfinite(alone.logp)
    ids, n_img = gen.tokenize(convs[0])
    assert n_img == 1 and (ids == IMG).sum() == N_IMG_TOKENS and ids[0] == BOS
    # sampled answers are reproducible from the seed
    hot = sampling.replace(temperature=1.5)
    assert gen.generate(convs, images, hot, seed=4) == gen.generate(convs, images, hot, seed=4)
    with pytest.raises(ValueError, match="image"):
        gen.generate(convs[:1], [[]], sampling)


def test_generator_decode_cuts_stop_strings(hf_and_ours):
    _, model, variables = hf_and_ours

    class Tok:  # decode only
        eos_token_id = EOS

        def decode(self, ids, skip_special_tokens=True):
            assert EOS not in ids and skip_special_tokens
            return " ".join({5: "red", 6: "circle", 7: "USER:", 8: "blue", 9: "</s>"}[i]
                            for i in ids)

    gen = G.Generator(model, variables, Tok(), "vicuna_v1")
    assert gen.decode([5, 6, 7, 8, EOS], (EOS,)) == "red circle"
    assert gen.decode([5, 9, 6], (EOS,)) == "red"
    assert gen.resolve_sampling(G.SamplingConfig()).eos_token_ids == (EOS,)
