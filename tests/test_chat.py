"""Conversation templates and tokenization: LLaVA reference strings, loss masks, images,
truncation, consistency checks. Tokenizers are trained locally (no downloads)."""
import json
import random

import numpy as np
import pytest

tokenizers = pytest.importorskip("tokenizers")
transformers = pytest.importorskip("transformers")
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers  # noqa: E402

from mmalign_jax.data import chat  # noqa: E402
from mmalign_jax.data.chat import ExampleTooLong, TokenizationMismatch  # noqa: E402

# ----------------------------------------------------------------- test tokenizers
WORDS = ("the a an cat dog red blue green yellow circle square triangle star is are on in at left "
         "right top bottom of image picture what which color colour how many shapes there describe "
         "this shows small large above below and with one two three four five it I see can you "
         "please answer question no yes").split()
SYSTEM_WORDS = ("A chat between a curious user and an artificial intelligence assistant. The assistant "
                "gives helpful, detailed, and polite answers to the user's questions. human human's "
                "USER: ASSISTANT:").split()


def _corpus(n=300, seed=0):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        s = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12)))
        out.append(s.capitalize() + rng.choice([".", "?", "!", ":"]))
        out.append(" ".join(rng.sample(SYSTEM_WORDS, 6)))
        out.append(s + "\n" + rng.choice(WORDS))
    return out


def build_llama_like(vocab_size=600):
    """SentencePiece-like BPE (Metaspace '▁', byte fallback) wrapped as transformers'
    LlamaTokenizer (the v5 class: Metaspace prepend_scheme='first', adds <s>)."""
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=["▁", "\n"], show_progress=False)
    tok.train_from_iterator(_corpus(), trainer)
    model = json.loads(tok.to_str())["model"]
    vocab = dict(model["vocab"])
    for b in range(256):
        vocab.setdefault(f"<0x{b:02X}>", len(vocab))
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    return transformers.LlamaTokenizer(vocab=vocab, merges=merges, add_bos_token=True)


def build_bytelevel(vocab_size=600, add_bos=False):
    """GPT-2-style byte-level BPE; no BOS unless asked."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_corpus(), trainer)
    kw = {"add_bos_token": True} if add_bos else {}
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", **kw)


@pytest.fixture(scope="module")
def llama_tok():
    return build_llama_like()


@pytest.fixture(scope="module")
def byte_tok():
    return build_bytelevel()


@pytest.fixture(scope="module", params=["llama", "bytelevel"])
def tok(request, llama_tok, byte_tok):
    return llama_tok if request.param == "llama" else byte_tok


NUM_IMG = 4


def img_id(tk):
    return len(tk) + 7  # an id the tokenizer never produces


def tokenize(conv, tk, **kw):
    kw.setdefault("image_token_id", img_id(tk))
    kw.setdefault("num_image_tokens", NUM_IMG)
    return chat.tokenize(conv, tk, **kw)


# ------------------------------------------------------------ LLaVA reference text
CONV = [
    {"role": "user", "content": "What is unusual about this image?\n<image>"},
    {"role": "assistant", "content": "A man is ironing clothes on the back of a taxi."},
    {"role": "user", "content": "Is it safe?"},
    {"role": "assistant", "content": "No, it is dangerous."},
]

# conv_vicuna_v1.get_prompt() after LLaVA-1.5's preprocess_multimodal (haotian-liu/LLaVA,
# llava/conversation.py + llava/train/train.py), written out by hand:
VICUNA_V1_REFERENCE = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives "
    "helpful, detailed, and polite answers to the user's questions. USER: <image>\nWhat is unusual "
    "about this image? ASSISTANT: A man is ironing clothes on the back of a taxi.</s>USER: Is it "
    "safe? ASSISTANT: No, it is dangerous.</s>"
)
VICUNA_V1_GENERATION_REFERENCE = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives "
    "helpful, detailed, and polite answers to the user's questions. USER: <image>\nWhat is unusual "
    "about this image? ASSISTANT:"
)
LLAVA_V1_REFERENCE = (
    "A chat between a curious human and an artificial intelligence assistant. The assistant gives "
    "helpful, detailed, and polite answers to the human's questions. USER: <image>\nWhat is unusual "
    "about this image? ASSISTANT: A man is ironing clothes on the back of a taxi.</s>USER: Is it "
    "safe? ASSISTANT: No, it is dangerous.</s>"
)


def llava_reference_prompt(conv, system, add_generation_prompt=False):
    """Transcription of LLaVA's preprocess_multimodal + Conversation.get_prompt (TWO)."""
    sources = [dict(m) for m in conv]
    for sentence in sources:
        if "<image>" in sentence["content"]:
            sentence["content"] = sentence["content"].replace("<image>", "").strip()
            sentence["content"] = "<image>" + "\n" + sentence["content"]
            sentence["content"] = sentence["content"].strip()
    roles = {"user": "USER", "assistant": "ASSISTANT"}
    messages = [(roles[m["role"]], m["content"]) for m in sources]
    if add_generation_prompt:
        messages.append(("ASSISTANT", None))
    seps = [" ", "</s>"]
    ret = system + seps[0]
    for i, (role, message) in enumerate(messages):
        if message:
            ret += role + ": " + message + seps[i % 2]
        else:
            ret += role + ":"
    return ret


def test_render_vicuna_v1_matches_llava_reference():
    assert chat.render(CONV) == VICUNA_V1_REFERENCE
    assert chat.render(CONV, "vicuna_v1") == VICUNA_V1_REFERENCE
    assert chat.render(CONV, "v1") == VICUNA_V1_REFERENCE
    gen = chat.render(CONV[:1], add_generation_prompt=True)
    assert gen == VICUNA_V1_GENERATION_REFERENCE and gen.endswith("ASSISTANT:")
    assert chat.render(CONV, "llava_v1") == LLAVA_V1_REFERENCE


def test_render_matches_llava_transcription_on_random_conversations():
    rng = random.Random(1)
    for _ in range(50):
        turns = rng.randint(1, 4)
        conv = []
        for t in range(turns):
            q = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 8))) + "?"
            if t == 0:
                q = rng.choice([f"<image>\n{q}", f"{q}\n<image>", f"{q} <image> ", f"  <image>{q}", q])
            conv.append({"role": "user", "content": q})
            conv.append({"role": "assistant", "content": " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 9)))})
        gen = rng.random() < 0.3
        if gen:
            conv = conv[:-1]
        for name, system in [("vicuna_v1", chat.TEMPLATES["vicuna_v1"].system),
                             ("llava_v1", chat.TEMPLATES["llava_v1"].system)]:
            assert chat.render(conv, name, add_generation_prompt=gen) == llava_reference_prompt(conv, system, gen)


def test_image_marker_placement():
    one = [{"role": "user", "content": "Describe it. <image> "}]
    assert chat.render(one, add_generation_prompt=True).endswith("USER: <image>\nDescribe it. ASSISTANT:")
    only = [{"role": "user", "content": "<image>"}]
    assert chat.render(only, add_generation_prompt=True).endswith("USER: <image> ASSISTANT:")
    # several images in one message stay where they are (LLaVA would collapse them)
    two = [{"role": "user", "content": "Left: <image> right: <image> which is red?"}]
    assert "USER: Left: <image> right: <image> which is red? ASSISTANT:" in chat.render(two, add_generation_prompt=True)


def test_plain_template():
    conv = [{"role": "user", "content": "<image>\nDescribe briefly."}, {"role": "assistant", "content": "A red cat."}]
    assert chat.render(conv, "plain") == "<image>A red cat.\n"
    assert chat.render(conv[:1], "plain", add_generation_prompt=True) == "<image>"
    assert chat.stop_strings("plain") == ["\n"]


def test_system_message_replaces_template_system():
    conv = [{"role": "system", "content": "Be brief."}] + CONV[:2]
    assert chat.render(conv).startswith("Be brief. USER: <image>\nWhat is unusual")
    llava_format = [{"from": "human", "value": CONV[0]["content"]}, {"from": "gpt", "value": CONV[1]["content"]},
                    {"from": "human", "value": CONV[2]["content"]}, {"from": "gpt", "value": CONV[3]["content"]}]
    assert chat.render(llava_format) == VICUNA_V1_REFERENCE
    assert chat.normalize_conversation(llava_format) == CONV


def test_templates_and_stop_strings(llama_tok):
    assert {"vicuna_v1", "llava_v1", "plain", "hf"} <= set(chat.TEMPLATES)
    assert chat.stop_strings("vicuna_v1")[0] == "</s>" and "USER:" in chat.stop_strings("vicuna_v1")
    assert chat.stop_strings("hf", llama_tok) == ["</s>"]
    with pytest.raises(ValueError):
        chat.stop_strings("hf")
    with pytest.raises(ValueError, match="unknown conversation template"):
        chat.render(CONV, "chatml")


@pytest.mark.parametrize("conv,match", [
    ([{"role": "assistant", "content": "hi"}], "expected a user"),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "expected a assistant"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "see <image>"}], "only allowed in user"),
    ([{"role": "user", "content": ""}], "empty"),
    ([{"role": "robot", "content": "x"}], "unknown role"),
    ([{"role": "user", "content": "a"}, {"role": "system", "content": "late"}], "system message must come first"),
])
def test_malformed_conversations(conv, match):
    with pytest.raises(ValueError, match=match):
        chat.render(conv)


def test_generation_prompt_needs_user_last():
    with pytest.raises(ValueError, match="ending with a user turn"):
        chat.render(CONV, add_generation_prompt=True)


# ------------------------------------------------------------------- tokenization
def _runs(mask):
    """[start, end) of each run of True."""
    m = np.concatenate([[False], mask, [False]]).astype(int)
    d = np.diff(m)
    return list(zip(np.flatnonzero(d == 1), np.flatnonzero(d == -1)))


def _image_runs(ids, image_id):
    return _runs(ids == image_id)


def test_masks_cover_exactly_the_assistant_tokens(tok):
    out = tokenize(CONV, tok)
    ids, mask = out.input_ids, out.target_mask
    assert ids.dtype == np.int32 and mask.dtype == np.bool_ and ids.shape == mask.shape
    answers = [m["content"] for m in CONV if m["role"] == "assistant"]
    runs = _runs(mask)
    assert len(runs) == len(answers)
    for (a, b), answer in zip(runs, answers):
        assert tok.decode(ids[a:b]).strip() == answer + "</s>"
        assert ids[b - 1] == tok.eos_token_id  # the end-of-turn token is a target
        # tokenizing the segment on its own gives the same ids (no boundary effects)
        seg = tok(" " + answer + "</s>", add_special_tokens=False)["input_ids"]
        assert ids[a:b].tolist() == seg
    # everything else (system, USER/ASSISTANT tags, questions, images) is not a target
    rest = tok.decode(ids[~mask & (ids != img_id(tok))])
    assert "ASSISTANT:" in rest and "taxi" not in rest and "dangerous" not in rest
    assert not mask[ids == img_id(tok)].any()


def test_bos_added_once_by_tokenizer_rule(llama_tok, byte_tok):
    out = tokenize(CONV, llama_tok)
    assert out.input_ids[0] == llama_tok.bos_token_id
    assert (out.input_ids == llama_tok.bos_token_id).sum() == 1
    out = tokenize(CONV, byte_tok)
    assert byte_tok.bos_token_id not in out.input_ids.tolist()
    bos_byte = build_bytelevel(add_bos=True)
    out2 = tokenize(CONV, bos_byte)
    assert out2.input_ids[0] == bos_byte.bos_token_id and (out2.input_ids == bos_byte.bos_token_id).sum() == 1
    np.testing.assert_array_equal(out2.input_ids[1:], out.input_ids)


def test_image_expansion_matches_llava_tokenizer_image_token(llama_tok):
    """Text chunks between images are tokenized separately, as LLaVA's tokenizer_image_token."""
    out = tokenize(CONV, llama_tok)
    ids = out.input_ids.tolist()
    iid = img_id(llama_tok)
    assert out.num_images == 1 and ids.count(iid) == NUM_IMG
    text = chat.render(CONV)
    before, after = text.split("<image>")
    expected = llama_tok(before)["input_ids"] + [iid] * NUM_IMG + llama_tok(after, add_special_tokens=False)["input_ids"]
    assert ids == expected
    # LLaVA's well-known pattern: '▁' before the image, '▁', '\n' after it
    k = ids.index(iid)
    assert llama_tok.convert_ids_to_tokens(ids[k - 1]) == "▁"
    assert llama_tok.convert_ids_to_tokens(ids[k + NUM_IMG:k + NUM_IMG + 2]) == ["▁", "\n"]


def test_multi_image_conversations(tok):
    conv = [
        {"role": "user", "content": "Left: <image> right: <image> Which is red?"},
        {"role": "assistant", "content": "The left one."},
        {"role": "user", "content": "<image>\nAnd this one?"},
        {"role": "assistant", "content": "It is blue."},
    ]
    out = tokenize(conv, tok)
    runs = _image_runs(out.input_ids, img_id(tok))
    assert out.num_images == 3 and len(runs) == 3 and all(b - a == NUM_IMG for a, b in runs)
    mruns = _runs(out.target_mask)
    assert len(mruns) == 2
    assert runs[1][1] < mruns[0][0] < mruns[0][1] <= runs[2][0]
    assert tok.decode(out.input_ids[slice(*mruns[1])]).strip() == "It is blue.</s>"


def test_generation_prompt_tokens(tok):
    out = tokenize(CONV[:1], tok, add_generation_prompt=True)
    assert not out.target_mask.any()
    assert tok.decode(out.input_ids[-4:]).replace(" ", "").endswith("ASSISTANT:")
    out = tokenize(CONV[:3], tok, add_generation_prompt=True)
    (a, b), = _runs(out.target_mask)  # the earlier answer only
    assert tok.decode(out.input_ids[a:b]).strip() == CONV[1]["content"] + "</s>"
    assert tok.decode(out.input_ids[b:]).replace(" ", "") == "USER:Isitsafe?ASSISTANT:"


@pytest.mark.parametrize("template", ["vicuna_v1", "llava_v1", "plain"])
def test_prompt_response_consistency(tok, template):
    conv = CONV[:3] if template != "plain" else CONV[:1]
    response = "No, it is dangerous."
    p, r = chat.tokenize_prompt_response(conv, response, tok, template=template,
                                         image_token_id=img_id(tok), num_image_tokens=NUM_IMG)
    assert p.dtype == np.int32 and r.dtype == np.int32
    full = tokenize(conv + [{"role": "assistant", "content": response}], tok, template=template)
    np.testing.assert_array_equal(np.concatenate([p, r]), full.input_ids)
    np.testing.assert_array_equal(p, tokenize(conv, tok, template=template, add_generation_prompt=True).input_ids)
    assert full.target_mask[len(p):].all()
    eot = "</s>" if template != "plain" else "\n"
    assert tok.decode(r).strip() == (response + eot).strip()
    # max_length cuts the response only
    p2, r2 = chat.tokenize_prompt_response(conv, response, tok, template=template, image_token_id=img_id(tok),
                                           num_image_tokens=NUM_IMG, max_length=len(p) + 2)
    np.testing.assert_array_equal(p2, p)
    np.testing.assert_array_equal(r2, r[:2])
    with pytest.raises(ExampleTooLong, match=f"limit is {len(p)}"):
        chat.tokenize_prompt_response(conv, response, tok, template=template, image_token_id=img_id(tok),
                                      num_image_tokens=NUM_IMG, max_length=len(p))
    with pytest.raises(ValueError, match="ends with a user turn"):
        chat.tokenize_prompt_response(CONV, response, tok, template=template, image_token_id=img_id(tok),
                                      num_image_tokens=NUM_IMG)


def test_plain_template_mask(tok):
    conv = [{"role": "user", "content": "<image>\nDescribe."}, {"role": "assistant", "content": "A red cat."}]
    out = tokenize(conv, tok, template="plain")
    iid = img_id(tok)
    ids = out.input_ids.tolist()
    k = ids.index(iid)
    assert ids[: k + NUM_IMG].count(iid) == NUM_IMG and not out.target_mask[: k + NUM_IMG].any()
    assert out.target_mask[k + NUM_IMG:].all()
    assert tok.decode(out.input_ids[out.target_mask]).strip() == "A red cat."


# --------------------------------------------------------------------- hf template
LLAMA2_LIKE = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}<<SYS>>{{ m['content'] }}<</SYS>>"
               "{% elif m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]{% else %} {{ m['content'] }}"
               "{{ eos_token }}{% endif %}{% endfor %}")
CHATML_LIKE = ("{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
               "{% if add_generation_prompt %}<s>assistant\n{% endif %}")


def test_hf_chat_template(llama_tok, byte_tok):
    for base, template in [(llama_tok, LLAMA2_LIKE), (byte_tok, CHATML_LIKE)]:
        tk = _with_template(base, template)
        conv = [{"role": "system", "content": "Be brief."}] + CONV
        text = chat.render(conv, "hf", tokenizer=tk)
        assert text == tk.apply_chat_template(conv, tokenize=False)
        out = tokenize(conv, tk, template="hf")
        runs = _runs(out.target_mask)
        assert [tk.decode(out.input_ids[a:b]).strip() for a, b in runs] == [
            CONV[1]["content"] + "</s>", CONV[3]["content"] + "</s>"]
        assert (out.input_ids == tk.bos_token_id).sum() == (1 if template is LLAMA2_LIKE else 5)
        p, r = chat.tokenize_prompt_response(conv[:4], CONV[3]["content"], tk, template="hf",
                                             image_token_id=img_id(tk), num_image_tokens=NUM_IMG)
        n = len(p) + len(r)
        np.testing.assert_array_equal(np.concatenate([p, r]), out.input_ids[:n])
        assert tk.decode(out.input_ids[n:]).strip() == ""  # only the template's trailing newline
    with pytest.raises(ValueError, match="chat_template"):
        chat.render(CONV, "hf", tokenizer=build_bytelevel())


def _with_template(tk, template):
    import copy
    tk = copy.deepcopy(tk)
    tk.chat_template = template
    return tk


# ---------------------------------------------------------------------- truncation
def _long_conv():
    return [
        {"role": "user", "content": "<image>\nWhat color is the circle on the left?"},
        {"role": "assistant", "content": "The circle on the left is red and the square is blue."},
        {"role": "user", "content": "And this one? <image>"},
        {"role": "assistant", "content": "It shows two small green triangles above a yellow star."},
    ]


def test_truncation_policy_sweep(tok):
    conv = _long_conv()
    full = tokenize(conv, tok)
    T = len(full.input_ids)
    iid = img_id(tok)
    img_runs = _image_runs(full.input_ids, iid)
    ans = _runs(full.target_mask)
    assert len(img_runs) == 2 and len(ans) == 2
    assert tokenize(conv, tok, max_length=T).truncated is False
    for limit in range(1, T + 3):
        try:
            out = tokenize(conv, tok, max_length=limit)
        except ExampleTooLong as e:
            assert limit <= ans[0][0], limit  # only when not one answer token fits
            assert e.length == T and e.limit == limit
            assert f"{T} tokens" in str(e) and f"limit is {limit}" in str(e)
            continue
        n = len(out.input_ids)
        assert n <= limit and out.truncated == (n < T)
        # a prefix of the full example, with the same mask
        np.testing.assert_array_equal(out.input_ids, full.input_ids[:n])
        np.testing.assert_array_equal(out.target_mask, full.target_mask[:n])
        assert out.target_mask.any()
        # images whole: every image run is kept entirely or dropped entirely
        for a, b in img_runs:
            assert n <= a or n >= b
        assert out.num_images == sum(n >= b for a, b in img_runs)
        # cut inside an answer, or at the end of a whole answer (trailing turns dropped)
        inside = any(a < n <= b for a, b in ans)
        assert inside
        if limit >= T:
            assert n == T
        elif ans[1][0] < limit:
            assert n == limit  # cut in the last answer
        else:
            assert n == min(limit, ans[0][1])  # back off to the end of answer 1
    # the second image is dropped with its turn
    out = tokenize(conv, tok, max_length=ans[1][0] - 1)
    assert out.num_images == 1 and len(out.input_ids) == ans[0][1]


def test_example_too_long_when_prompt_and_images_do_not_fit(tok):
    conv = _long_conv()
    full = tokenize(conv, tok)
    first = _runs(full.target_mask)[0][0]
    with pytest.raises(ExampleTooLong, match="first answer starts at token"):
        tokenize(conv, tok, max_length=first)
    img_start = int(np.argmax(full.input_ids == img_id(tok)))
    with pytest.raises(ExampleTooLong):
        tokenize(conv, tok, max_length=img_start + 1)  # would split the image
    gen = tokenize(conv[:3], tok, add_generation_prompt=True)
    with pytest.raises(ExampleTooLong, match="never cut"):
        tokenize(conv[:3], tok, add_generation_prompt=True, max_length=len(gen.input_ids) - 1)


# -------------------------------------------------------------- mismatch detection
def test_mismatch_from_a_token_crossing_the_boundary():
    tk = build_llama_like()
    tk.add_tokens(["T: A"])  # an added token spanning 'ASSISTANT:' and the answer
    conv = [{"role": "user", "content": "<image>\nWhat is it?"}, {"role": "assistant", "content": "A cat."}]
    with pytest.raises(TokenizationMismatch, match=r"conversation turn 1 \(assistant\)") as ei:
        tokenize(conv, tk)
    assert ei.value.turn == 1 and "T: A" in str(ei.value)
    tk2 = build_llama_like()
    tk2.add_tokens(["\nThe"])  # plain: crosses the end of answer 1 into answer 2
    plain = [{"role": "user", "content": "<image>"}, {"role": "assistant", "content": "A cat."},
             {"role": "user", "content": "Again"}, {"role": "assistant", "content": "The dog."}]
    assert chat.render(plain, "plain") == "<image>A cat.\nThe dog.\n"
    with pytest.raises(TokenizationMismatch, match=r"turn 1 \(assistant\).*next turn"):
        tokenize(plain, tk2, template="plain")
    tk3 = build_llama_like()
    tk3.add_tokens(["cat? A"])  # crosses from the user text into the role tag: not our boundary
    out = tokenize([{"role": "user", "content": "What cat?"}, {"role": "assistant", "content": "Yes."}], tk3)
    assert tk3.decode(out.input_ids[out.target_mask]).strip() == "Yes.</s>"


class _PromptShiftingTokenizer:
    """Delegates to a real tokenizer, but tokenizes a text ending in 'ASSISTANT:'
    differently (as a tokenizer with a context-dependent rule would)."""

    def __init__(self, inner):
        self._inner = inner

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def __len__(self):
        return len(self._inner)

    def __call__(self, text, **kw):
        enc = self._inner(text, **kw)
        if text.endswith("ASSISTANT:"):
            enc = dict(enc)
            enc["input_ids"] = list(enc["input_ids"])
            enc["input_ids"][-1] = self._inner.unk_token_id
        return enc


def test_mismatch_when_the_generation_prompt_tokenizes_differently(llama_tok):
    tk = _PromptShiftingTokenizer(llama_tok)
    conv = [{"role": "user", "content": "<image>\nHi"}, {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Bye."}]
    with pytest.raises(TokenizationMismatch, match=r"turn 1 \(assistant\).*generation prompt"):
        tokenize(conv, tk)
    with pytest.raises(TokenizationMismatch):
        chat.tokenize_prompt_response(conv[:1], "Hello.", tk, image_token_id=img_id(llama_tok),
                                      num_image_tokens=NUM_IMG)


def test_image_token_id_must_not_be_a_text_token(llama_tok):
    with pytest.raises(ValueError, match="also a text token"):
        chat.tokenize(CONV, llama_tok, image_token_id=llama_tok.convert_tokens_to_ids("▁is"), num_image_tokens=2)
    with pytest.raises(ValueError):
        chat.tokenize(CONV, llama_tok, image_token_id=img_id(llama_tok), num_image_tokens=0)
