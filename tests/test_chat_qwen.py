"""The qwen2_vl chat template against Qwen2.5-VL's own jinja, and per-image token counts.

The tokenizer is a small byte-level BPE trained here with Qwen2's pre-tokenizer and the
Qwen special tokens added (no downloads), wrapped in transformers with the real chat
template; the image side uses our processor's grids, as Qwen2_5_VLProcessor does."""
import random

import numpy as np
import pytest

tokenizers = pytest.importorskip("tokenizers")
transformers = pytest.importorskip("transformers")
from tokenizers import (  # noqa: E402
    Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers)

from mmalign_jax.data import chat  # noqa: E402
from mmalign_jax.models.qwen2_5_vl import processor as qproc  # noqa: E402

# Qwen2.5-VL-{3,7,32,72}B-Instruct chat_template.json, "chat_template" (identical to
# Qwen2-VL-*-Instruct's tokenizer_config.json). Copied from the Qwen2-VL tokenizer_config.json
# quoted in the public GitHub corpus, and checked against the "current chat template" quoted
# in https://huggingface.co/Qwen/Qwen2.5-VL-32B-Instruct/discussions/18 .
QWEN2_5_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture "
    "{{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video "
    "{{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Qwen2's tokenizer.json pre-tokenizer: this split regex, then byte-level without its regex.
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
           "<|image_pad|>", "<|video_pad|>"]
WORDS = ("the a cat dog red blue green on mat in image picture what is are there how many two "
         "pictures different between compare with describe this yes no answer one word you "
         "helpful assistant system user left right of and it color").split()


def build_qwen_like(vocab_size=500):
    rng = random.Random(0)
    corpus = []
    for _ in range(300):
        s = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 10)))
        corpus += [s.capitalize() + rng.choice([".", "?", "!"]), s + "\n" + rng.choice(WORDS)]
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tok.add_special_tokens(SPECIAL)   # added after the vocabulary, as in Qwen's tokenizer
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                              pad_token="<|endoftext|>")
    hf.chat_template = QWEN2_5_VL_CHAT_TEMPLATE
    return hf


@pytest.fixture(scope="module")
def tok():
    return build_qwen_like()


def pad_id(tk):
    return tk.convert_tokens_to_ids("<|image_pad|>")


def qwen_processor_ids(tk, text, counts):
    """What Qwen2_5_VLProcessor does to the rendered text: the i-th ``<|image_pad|>`` becomes
    ``counts[i]`` copies (``replace_image_token``: grid.prod() // merge_size**2), then the
    tokenizer runs on the whole string."""
    pieces = text.split("<|image_pad|>")
    assert len(pieces) == len(counts) + 1
    expanded = pieces[0] + "".join("<|image_pad|>" * n + p for n, p in zip(counts, pieces[1:]))
    return tk(expanded)["input_ids"]


def img():
    return {"type": "image"}


def txt(t):
    return {"type": "text", "text": t}


# (our conversation, the same conversation as HF messages)
CASES = {
    "one-image": (
        [{"role": "user", "content": "<image>\nWhat is in the image?"},
         {"role": "assistant", "content": "A red cat on a mat."}],
        [{"role": "user", "content": [img(), txt("What is in the image?")]},
         {"role": "assistant", "content": "A red cat on a mat."}],
    ),
    "two-images-one-turn": (
        [{"role": "user", "content": "<image>\n<image>\nWhat is different between the two pictures?"},
         {"role": "assistant", "content": "The dog is blue."}],
        [{"role": "user", "content": [img(), img(), txt("What is different between the two pictures?")]},
         {"role": "assistant", "content": "The dog is blue."}],
    ),
    "images-inside-text": (
        [{"from": "human", "value": "Compare <image> with\n<image>."},
         {"from": "gpt", "value": "The left one is red."}],
        [{"role": "user", "content": [txt("Compare"), img(), txt("with"), img(), txt(".")]},
         {"role": "assistant", "content": "The left one is red."}],
    ),
    "text-only": (
        [{"role": "user", "content": "Is the cat red?"},
         {"role": "assistant", "content": "Yes."}],
        [{"role": "user", "content": "Is the cat red?"},
         {"role": "assistant", "content": "Yes."}],
    ),
    "multi-turn": (
        [{"role": "user", "content": "<image>\nDescribe this image."},
         {"role": "assistant", "content": "A dog on a mat."},
         {"role": "user", "content": "What color is it?"},
         {"role": "assistant", "content": "It is green."},
         {"role": "user", "content": "And this one?\n<image>"},
         {"role": "assistant", "content": "Blue."}],
        [{"role": "user", "content": [img(), txt("Describe this image.")]},
         {"role": "assistant", "content": "A dog on a mat."},
         {"role": "user", "content": "What color is it?"},
         {"role": "assistant", "content": "It is green."},
         {"role": "user", "content": [txt("And this one?"), img()]},
         {"role": "assistant", "content": "Blue."}],
    ),
    "system": (
        [{"role": "system", "content": "Answer in one word."},
         {"role": "user", "content": "<image>\nWhat color is the cat?"},
         {"role": "assistant", "content": "Red."}],
        [{"role": "system", "content": "Answer in one word."},
         {"role": "user", "content": [img(), txt("What color is the cat?")]},
         {"role": "assistant", "content": "Red."}],
    ),
    "image-only-user": (
        [{"role": "user", "content": "<image>"}, {"role": "assistant", "content": "A cat."}],
        [{"role": "user", "content": [img()]}, {"role": "assistant", "content": "A cat."}],
    ),
}

# image sizes (width, height) per case, in marker order; token counts from our processor
PCFG = qproc.ProcessorConfig(max_pixels=256 * 28 * 28)
SIZES = [(90, 60), (300, 200), (1000, 40), (57, 333)]


def counts_for(conv):
    n = sum(m.get("content", m.get("value")).count("<image>") for m in conv)
    return [qproc.num_image_tokens(w, h, PCFG) for (w, h) in SIZES[:n]]


def answers(conv):
    return [m.get("content", m.get("value")) for m in conv if m.get("role", m.get("from")) in ("assistant", "gpt")]


# --------------------------------------------------------------------- rendering
def test_render_reference_string():
    conv = CASES["one-image"][0]
    assert chat.render(conv, "qwen2_vl") == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><image><|vision_end|>What is in the image?<|im_end|>\n"
        "<|im_start|>assistant\nA red cat on a mat.<|im_end|>\n"
    )
    assert chat.render(conv[:1], "qwen2_5_vl", add_generation_prompt=True) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><image><|vision_end|>What is in the image?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def _as_jinja_text(ours: str) -> str:
    return ours.replace("<image>", "<|image_pad|>")


@pytest.mark.parametrize("case", sorted(CASES))
def test_render_equals_the_real_jinja(tok, case):
    conv, hf_msgs = CASES[case]
    want = tok.apply_chat_template(hf_msgs, tokenize=False)
    assert _as_jinja_text(chat.render(conv, "qwen2_vl")) == want
    # generation prompts: every prefix ending with a user turn
    for k, m in enumerate(hf_msgs):
        if m["role"] == "user":
            want = tok.apply_chat_template(hf_msgs[:k + 1], tokenize=False, add_generation_prompt=True)
            got = chat.render(conv[:k + 1], "qwen2_vl", add_generation_prompt=True)
            assert _as_jinja_text(got) == want


def test_llava_style_newline_is_dropped_like_the_hf_message_form(tok):
    """``<image>\\nQ`` (LLaVA data), ``<image>Q`` and ``Q\\n<image>`` placed last all render
    as the HF item lists do: no whitespace next to the vision tokens."""
    for content, items in [("<image>\nWhat is this?", [img(), txt("What is this?")]),
                           ("<image>What is this?", [img(), txt("What is this?")]),
                           ("  <image>  What is this?  ", [img(), txt("What is this?")]),
                           ("What is this?\n<image>", [txt("What is this?"), img()])]:
        ours = chat.render([{"role": "user", "content": content}], "qwen2_vl", add_generation_prompt=True)
        theirs = tok.apply_chat_template([{"role": "user", "content": items}], tokenize=False,
                                         add_generation_prompt=True)
        assert _as_jinja_text(ours) == theirs


def test_template_registry_and_stop_strings():
    assert chat.get_template("qwen2_5_vl") is chat.get_template("qwen2_vl")
    assert chat.stop_strings("qwen2_vl") == ["<|im_end|>"]
    assert chat.stop_strings("qwen2_5_vl") == ["<|im_end|>"]
    with pytest.raises(ValueError, match="only allowed in user messages"):
        chat.render([{"role": "system", "content": "<image>"}, {"role": "user", "content": "Hi"}], "qwen2_vl")


# -------------------------------------------------------------------- tokenizing
@pytest.mark.parametrize("case", sorted(CASES))
def test_tokens_equal_the_hf_processor_tokenization(tok, case):
    conv, hf_msgs = CASES[case]
    counts = counts_for(conv)
    got = chat.tokenize(conv, tok, template="qwen2_vl", image_token_id=pad_id(tok), num_image_tokens=counts)
    want = qwen_processor_ids(tok, tok.apply_chat_template(hf_msgs, tokenize=False), counts)
    assert got.input_ids.tolist() == want
    assert got.num_images == len(counts) and not got.truncated
    # each image is one run of its own length, inside <|vision_start|> ... <|vision_end|>
    ids = got.input_ids
    vs, ve = tok.convert_tokens_to_ids("<|vision_start|>"), tok.convert_tokens_to_ids("<|vision_end|>")
    starts = np.flatnonzero(ids == vs)
    assert len(starts) == len(counts)
    for s, n in zip(starts, counts):
        assert (ids[s + 1:s + 1 + n] == pad_id(tok)).all() and ids[s + 1 + n] == ve


@pytest.mark.parametrize("case", sorted(CASES))
def test_target_mask_is_answer_plus_im_end(tok, case):
    conv, _ = CASES[case]
    t = chat.tokenize(conv, tok, template="qwen2_vl", image_token_id=pad_id(tok),
                      num_image_tokens=counts_for(conv))
    ids, mask = t.input_ids, t.target_mask
    edges = np.flatnonzero(np.diff(np.r_[0, mask.astype(np.int8), 0]))
    runs = list(zip(edges[::2], edges[1::2]))
    assert [tok.decode(ids[a:b].tolist(), skip_special_tokens=False) for a, b in runs] == [
        a + "<|im_end|>" for a in answers(conv)]
    nl = tok("\n", add_special_tokens=False)["input_ids"]
    prompt_tail = tok("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    for a, b in runs:
        assert ids[b - 1] == tok.convert_tokens_to_ids("<|im_end|>")
        assert ids[b:b + len(nl)].tolist() == nl                     # the "\n" after it: no target
        assert ids[a - len(prompt_tail):a].tolist() == prompt_tail   # preceded by the role line
    assert not mask[ids == pad_id(tok)].any()


def test_prompt_response(tok):
    conv, _ = CASES["multi-turn"]
    counts = counts_for(conv)
    prompt, response = chat.tokenize_prompt_response(
        conv[:-1], conv[-1]["content"], tok, template="qwen2_vl", image_token_id=pad_id(tok),
        num_image_tokens=counts)
    gen = chat.tokenize(conv[:-1], tok, template="qwen2_vl", image_token_id=pad_id(tok),
                        num_image_tokens=counts, add_generation_prompt=True)
    full = chat.tokenize(conv, tok, template="qwen2_vl", image_token_id=pad_id(tok), num_image_tokens=counts)
    assert prompt.tolist() == gen.input_ids.tolist()
    assert tok.decode(response.tolist(), skip_special_tokens=False) == "Blue.<|im_end|>"
    assert full.input_ids[: len(prompt) + len(response)].tolist() == prompt.tolist() + response.tolist()
    assert full.input_ids[len(prompt) + len(response):].tolist() == tok("\n")["input_ids"]
    # the generation prompt equals the HF processor's
    hf_msgs = CASES["multi-turn"][1][:-1]
    want = qwen_processor_ids(tok, tok.apply_chat_template(hf_msgs, tokenize=False, add_generation_prompt=True),
                              counts)
    assert prompt.tolist() == want


# ----------------------------------------------------------- per-image token counts
def test_int_counts_equal_a_list_of_equal_counts(tok):
    conv, _ = CASES["multi-turn"]
    kw = dict(template="qwen2_vl", image_token_id=pad_id(tok))
    a = chat.tokenize(conv, tok, num_image_tokens=5, **kw)
    for form in ([5, 5], (5, 5), np.array([5, 5], np.int32)):
        b = chat.tokenize(conv, tok, num_image_tokens=form, **kw)
        assert a.input_ids.tolist() == b.input_ids.tolist()
        assert a.target_mask.tolist() == b.target_mask.tolist()
    assert int((a.input_ids == pad_id(tok)).sum()) == 10
    # the LLaVA templates take lists too
    v = chat.tokenize(conv, tok, template="vicuna_v1", image_token_id=pad_id(tok), num_image_tokens=[2, 7])
    assert int((v.input_ids == pad_id(tok)).sum()) == 9 and v.num_images == 2
    p = chat.tokenize(conv, tok, template="plain", image_token_id=pad_id(tok), num_image_tokens=[2, 7])
    runs = np.flatnonzero(np.diff(np.r_[0, (p.input_ids == pad_id(tok)).astype(np.int8), 0]))
    assert (runs[1::2] - runs[::2]).tolist() == [2, 7]


@pytest.mark.parametrize("bad,match", [
    ([4], r"gives 1 image token count\(s\) but the conversation has 2 <image> marker\(s\)"),
    ([4, 4, 4], r"gives 3 image token count\(s\) but the conversation has 2"),
    ([4, 0], "positive ints, got 0"),
    ([4, True], "positive ints, got True"),
    ([4, 2.5], "positive ints, got 2.5"),
    (0, "positive int, got 0"),
    ("4", "a positive int or a sequence"),
    (None, "a positive int or a sequence"),
    (np.array([[4, 4]]), "must be 1-D"),
])
def test_bad_counts(tok, bad, match):
    conv, _ = CASES["multi-turn"]
    with pytest.raises(ValueError, match=match):
        chat.tokenize(conv, tok, template="qwen2_vl", image_token_id=pad_id(tok), num_image_tokens=bad)
    with pytest.raises(ValueError, match=match):
        chat.tokenize_prompt_response(conv[:-1], "Blue.", tok, template="qwen2_vl", image_token_id=pad_id(tok),
                                      num_image_tokens=bad)


def test_text_only_conversation_takes_an_empty_list(tok):
    conv, _ = CASES["text-only"]
    a = chat.tokenize(conv, tok, template="qwen2_vl", image_token_id=pad_id(tok), num_image_tokens=[])
    b = chat.tokenize(conv, tok, template="qwen2_vl", image_token_id=pad_id(tok), num_image_tokens=576)
    assert a.input_ids.tolist() == b.input_ids.tolist() and a.num_images == 0


def test_truncation_counts_images_of_different_sizes(tok):
    conv, _ = CASES["multi-turn"]   # images in turns 0 and 4
    counts = [3, 11]
    kw = dict(template="qwen2_vl", image_token_id=pad_id(tok), num_image_tokens=counts)
    full = chat.tokenize(conv, tok, **kw)
    ids, mask = full.input_ids, full.target_mask
    edges = np.flatnonzero(np.diff(np.r_[0, mask.astype(np.int8), 0]))
    ends = edges[1::2]
    # a limit inside the last answer keeps both images
    t = chat.tokenize(conv, tok, max_length=len(ids) - 2, **kw)
    assert t.truncated and t.num_images == 2 and int((t.input_ids == pad_id(tok)).sum()) == 14
    # a limit before the last answer backs off to the second answer: only the first image
    limit = int(ends[1]) + 5
    t = chat.tokenize(conv, tok, max_length=limit, **kw)
    assert len(t.input_ids) == ends[1] and t.num_images == 1
    assert int((t.input_ids == pad_id(tok)).sum()) == 3
    assert t.input_ids.tolist() == ids[: ends[1]].tolist()
