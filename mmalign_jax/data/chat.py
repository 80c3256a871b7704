"""Conversation templates, tokenization and loss masks (LLaVA-1.5 compatible).

A conversation is a list of ``{"role": "system"|"user"|"assistant", "content": str}``
(LLaVA's ``{"from": "human"|"gpt"|"system", "value": ...}`` is accepted too): an optional
system message first, then user and assistant turns alternating, starting with the user.
Images are marked by the literal ``<image>`` in user messages, one marker per image, in
the order of the record's ``images``.

Templates (``TEMPLATES``)
-------------------------
Character for character LLaVA's ``llava/conversation.py`` + ``llava/train/train.py``
(haotian-liu/LLaVA, v1.5):

- ``vicuna_v1`` (alias ``v1``; LLaVA-1.5's training ``--version v1`` and eval
  ``--conv-mode vicuna_v1``): ``conv_vicuna_v1`` -- system "A chat between a curious user
  and an artificial intelligence assistant. The assistant gives helpful, detailed, and
  polite answers to the user's questions.", roles ``USER``/``ASSISTANT``,
  ``SeparatorStyle.TWO`` with ``sep=" "``, ``sep2="</s>"``::

      {system} USER: {u1} ASSISTANT: {a1}</s>USER: {u2} ASSISTANT: {a2}</s>

  and the generation prompt ends in ``"ASSISTANT:"`` (no trailing space).
- ``llava_v1``: ``conv_llava_v1`` -- the same format, system "A chat between a curious
  human and an artificial intelligence assistant. The assistant gives helpful, detailed,
  and polite answers to the human's questions."
- ``plain`` (LLaVA pretraining, ``preprocess_plain``): each round is the user's image
  markers only (its text is dropped) followed by the answer and ``"\\n"``:
  ``<image>{caption}\\n``.
- ``hf``: the tokenizer's own ``chat_template`` (``apply_chat_template``).

And for Qwen2-VL / Qwen2.5-VL:

- ``qwen2_vl`` (alias ``qwen2_5_vl``): ChatML as the models' own jinja ``chat_template``
  renders it (``chat_template.json`` of Qwen/Qwen2.5-VL-*-Instruct on the Hugging Face Hub,
  the same template as Qwen2-VL's ``tokenizer_config.json``; quoted verbatim, and the
  rendering checked against it, in ``tests/test_chat_qwen.py``)::

      <|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n<|im_start|>user\\n{u1}<|im_end|>\\n
      <|im_start|>assistant\\n{a1}<|im_end|>\\n<|im_start|>user\\n{u2}<|im_end|>\\n...

  (one string; broken here for width). The default system message appears when the
  conversation has none; the generation prompt is ``<|im_start|>assistant\\n``; there is no
  BOS; the stop string is ``<|im_end|>``. Each ``<image>`` renders as
  ``<|vision_start|><image><|vision_end|>``: where the jinja writes ``<|image_pad|>`` for an
  image item we keep the marker, which ``tokenize`` expands like any other -- pass
  ``image_token_id`` = the id of ``<|image_pad|>`` and one ``num_image_tokens`` per image
  (``t*h*w // merge_size**2`` of its grid), which is what ``Qwen2_5_VLProcessor`` does to
  the text. Not registered as ``chatml``: plain ChatML has neither the default system
  message nor vision tokens.

A system message in the conversation replaces the template's system text.

``<image>`` placement (``vicuna_v1``/``llava_v1``): as LLaVA's ``preprocess_multimodal``
with ``mm_use_im_start_end=False``, a user message holding exactly one ``<image>`` becomes
``("<image>\\n" + content.replace("<image>", "").strip()).strip()``. A message with
several markers keeps them where they are (LLaVA would collapse them into one, silently
losing images). ``<image>`` in a system or assistant message is an error.

``<image>`` placement (``qwen2_vl``): a user message is rendered as the content list that
Qwen's own finetuning code builds from LLaVA-format records (QwenLM/Qwen2.5-VL,
``qwen-vl-finetune/qwenvl/data/data_processor.py``, ``_build_messages``): the text is split
at the markers, each piece ``.strip()``-ed (empty ones dropped), and images and pieces are
concatenated with nothing in between, as the jinja renders a list. So ``"<image>\\nWhat is
this?"`` gives exactly what the HF message ``[{"type": "image"}, {"type": "text", "text":
"What is this?"}]`` gives, ``<|vision_start|><image><|vision_end|>What is this?``: the
``"\\n"`` after LLaVA-style markers is dropped, as is whitespace at the ends of any user text.
Markers stay where they are (``"Compare <image> and <image>"`` keeps its order).
LLaMA-Factory's ``qwen2_vl`` template differs here: it replaces the marker in place and
keeps the ``"\\n"``.

Tokenization
------------
``tokenize`` renders the conversation, splits the text at the ``<image>`` markers exactly
like LLaVA's ``tokenizer_image_token`` (each text chunk tokenized on its own, so a
SentencePiece tokenizer sees ``"\\nWhat..."`` after an image as LLaVA did -- ids
``29871, 13, ...`` for LLaMA), puts ``num_image_tokens`` copies of ``image_token_id``
where each marker was (the tokenizer never sees ``<image>``; ``num_image_tokens`` is one
int for every image, or a sequence with one count per marker in order, for models whose
token count depends on the image size), and adds the tokenizer's own
leading special tokens once (``<s>`` for LLaMA; none for tokenizers without BOS; not again
if the rendered text already starts with them, as ``hf`` templates often do). Trailing
special tokens the tokenizer would append (an ``add_eos_token`` tokenizer) are not added:
turn ends come from the template.

Loss mask from character offsets. Each assistant turn owns the characters from the end
of its generation prompt (just after ``"ASSISTANT:"``) to the end of its turn (after
``"</s>"``; for ``hf`` up to the rendered turn end, trailing whitespace excluded; for
``qwen2_vl`` the answer and ``<|im_end|>``, not the ``"\\n"`` after it -- generation stops
at ``<|im_end|>``, so that is also what ``tokenize_prompt_response`` returns as the
response. Qwen's finetuning script and LLaMA-Factory also train on that ``"\\n"``: one
fully predictable token per turn). A token
is a target iff its character span lies in such a range, so ``target_mask`` covers the
answer and its end-of-turn token -- never system, user, role or image tokens. Two checks
make the segment view and the whole-text tokenization agree, and raise
``TokenizationMismatch`` naming the turn instead of masking silently as LLaVA does:

1. no token crosses a range boundary (e.g. a merge or added token spanning ``": T"``);
2. the generation prompt of every assistant turn, tokenized on its own, equals the
   conversation's tokens up to that turn (what the model sees when generating equals
   what it is trained on -- the off-by-one space token is LLaVA's classic pitfall).

Truncation (``max_length``)
---------------------------
Only text is cut and only from the end; a prefix of the full token sequence is kept, so
the loss on what remains is unchanged. If the limit falls inside an assistant turn's
target tokens, cut there (that answer loses its tail, ``</s>`` included). Otherwise back
off to the end of the last assistant turn that fits whole, dropping the trailing turns
entirely -- with any images they hold (``Tokenized.num_images`` counts the images kept:
use the first ``num_images`` of the example's images). An image's tokens are never split.
If not even one answer token fits after its prompt and images (or there is no answer:
generation prompts are never cut) ``ExampleTooLong`` says how long the example is and
the limit; callers report and skip it.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "IMAGE_MARKER",
    "TEMPLATES",
    "ExampleTooLong",
    "Template",
    "Tokenized",
    "TokenizationMismatch",
    "get_template",
    "normalize_conversation",
    "render",
    "stop_strings",
    "tokenize",
    "tokenize_prompt_response",
]

IMAGE_MARKER = "<image>"


# ------------------------------------------------------------------------- errors
class TokenizationMismatch(ValueError):
    """Tokenizing by segments and tokenizing the whole text disagree at a turn boundary."""

    def __init__(self, turn: int, role: str, detail: str):
        self.turn = turn
        self.role = role
        super().__init__(f"conversation turn {turn} ({role}): {detail}")


class ExampleTooLong(ValueError):
    """The example cannot be cut to ``limit`` tokens without cutting a prompt or image."""

    def __init__(self, length: int, limit: int, detail: str = ""):
        self.length = length
        self.limit = limit
        msg = f"example is {length} tokens long, limit is {limit}"
        super().__init__(msg + (f": {detail}" if detail else ""))


# ---------------------------------------------------------------------- templates
@dataclasses.dataclass(frozen=True)
class Template:
    name: str
    style: str  # "two" (LLaVA SeparatorStyle.TWO) | "plain" | "hf" | "chatml"
    system: str = ""
    roles: tuple[str, str] = ("USER", "ASSISTANT")
    sep: str = " "
    sep2: str | None = "</s>"
    image_to_front: bool = True
    stop: tuple[str, ...] = ()
    image_wrap: tuple[str, str] = ("", "")  # "chatml": text put around each <image> marker


_VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
_LLAVA_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)

_VICUNA_V1 = Template("vicuna_v1", "two", _VICUNA_SYSTEM, stop=("</s>", "USER:"))
TEMPLATES: dict[str, Template] = {
    "vicuna_v1": _VICUNA_V1,
    "v1": _VICUNA_V1,
    "llava_v1": Template("llava_v1", "two", _LLAVA_SYSTEM, stop=("</s>", "USER:")),
    "plain": Template("plain", "plain", "", ("", ""), "\n", None, False, stop=("\n",)),
    "hf": Template("hf", "hf", "", ("user", "assistant"), "", None, False),
}
_QWEN2_VL = Template(
    "qwen2_vl", "chatml", "You are a helpful assistant.", ("user", "assistant"), "\n", None, False,
    stop=("<|im_end|>",), image_wrap=("<|vision_start|>", "<|vision_end|>"),
)
TEMPLATES["qwen2_vl"] = _QWEN2_VL
TEMPLATES["qwen2_5_vl"] = _QWEN2_VL


def get_template(template: str | Template) -> Template:
    if isinstance(template, Template):
        return template
    try:
        return TEMPLATES[template]
    except KeyError:
        raise ValueError(
            f"unknown conversation template {template!r}; known: {sorted(TEMPLATES)}"
        ) from None


def stop_strings(template: str | Template, tokenizer: Any = None) -> list[str]:
    """Strings that end a generated answer: the end-of-turn first (``"</s>"`` for
    vicuna_v1/llava_v1, also ``"USER:"`` in case a model starts a new turn; ``"\\n"`` for
    plain; ``"<|im_end|>"`` for qwen2_vl; the tokenizer's ``eos_token`` for hf)."""
    tpl = get_template(template)
    if tpl.style == "hf":
        eos = getattr(tokenizer, "eos_token", None) if tokenizer is not None else None
        if not eos:
            raise ValueError("stop_strings('hf') needs a tokenizer with an eos_token")
        return [str(eos)]
    return list(tpl.stop)


# ---------------------------------------------------------------- conversations
@dataclasses.dataclass(frozen=True)
class _Msg:
    index: int  # position in the caller's conversation list
    role: str
    content: str


_ROLE_ALIASES = {
    "user": "user", "human": "user",
    "assistant": "assistant", "gpt": "assistant",
    "system": "system",
}


def normalize_conversation(conversation: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """Validate and return ``[{'role', 'content'}]`` (LLaVA ``from``/``value`` accepted)."""
    sys_msg, msgs = _parse(conversation)
    out = [] if sys_msg is None else [{"role": "system", "content": sys_msg.content}]
    return out + [{"role": m.role, "content": m.content} for m in msgs]


def _parse(conversation) -> tuple[_Msg | None, list[_Msg]]:
    if isinstance(conversation, (str, bytes)) or not isinstance(conversation, Sequence):
        raise TypeError("a conversation is a list of {'role', 'content'} dicts")
    sys_msg = None
    msgs: list[_Msg] = []
    for i, m in enumerate(conversation):
        if not isinstance(m, Mapping):
            raise TypeError(f"conversation turn {i}: expected a dict, got {type(m).__name__}")
        raw_role = m.get("role", m.get("from"))
        content = m.get("content", m.get("value"))
        role = _ROLE_ALIASES.get(str(raw_role).lower()) if raw_role is not None else None
        if role is None:
            raise ValueError(f"conversation turn {i}: unknown role {raw_role!r}")
        if not isinstance(content, str):
            raise ValueError(f"conversation turn {i} ({role}): content must be a string")
        if role == "system":
            if i != 0:
                raise ValueError(f"conversation turn {i}: a system message must come first")
            if IMAGE_MARKER in content:
                raise ValueError(f"conversation turn {i} (system): {IMAGE_MARKER} is only allowed in user messages")
            sys_msg = _Msg(i, role, content)
            continue
        expected = "user" if len(msgs) % 2 == 0 else "assistant"
        if role != expected:
            raise ValueError(
                f"conversation turn {i}: expected a {expected} message (user and assistant "
                f"turns alternate, starting with the user), got {role}"
            )
        if content == "":
            raise ValueError(f"conversation turn {i} ({role}): empty message")
        if role == "assistant" and IMAGE_MARKER in content:
            raise ValueError(f"conversation turn {i} (assistant): {IMAGE_MARKER} is only allowed in user messages")
        msgs.append(_Msg(i, role, content))
    return sys_msg, msgs


# --------------------------------------------------------------------- rendering
@dataclasses.dataclass(frozen=True)
class _Span:
    """Characters [start, end) of the rendered text that assistant turn ``turn`` owns:
    ``start`` is where its generation prompt ends."""
    turn: int
    start: int
    end: int


@dataclasses.dataclass(frozen=True)
class _Rendered:
    text: str
    spans: tuple[_Span, ...]


def _image_to_front(content: str) -> str:
    # llava/train/train.py preprocess_multimodal (mm_use_im_start_end=False)
    if content.count(IMAGE_MARKER) != 1:
        return content
    value = content.replace(IMAGE_MARKER, "").strip()
    return (IMAGE_MARKER + "\n" + value).strip()


def _chatml_user(content: str, tpl: Template) -> str:
    # QwenLM/Qwen2.5-VL qwen-vl-finetune/qwenvl/data/data_processor.py _build_messages: the
    # text is split at the markers, each piece stripped, empty pieces dropped; the jinja
    # then concatenates the items with nothing in between.
    open_, close = tpl.image_wrap
    pieces = content.split(IMAGE_MARKER)
    return pieces[0].strip() + "".join(open_ + IMAGE_MARKER + close + p.strip() for p in pieces[1:])


def _render_chatml(sys_msg, msgs, tpl: Template, add_generation_prompt: bool) -> _Rendered:
    if sys_msg is None and not msgs:
        return _Rendered("", ())
    system = sys_msg.content if sys_msg is not None else tpl.system
    ret = "<|im_start|>system\n" + system + "<|im_end|>\n"
    spans: list[_Span] = []
    for m in msgs:
        if m.role == "user":
            ret += "<|im_start|>" + tpl.roles[0] + "\n" + _chatml_user(m.content, tpl) + "<|im_end|>\n"
        else:
            ret += "<|im_start|>" + tpl.roles[1] + "\n"
            start = len(ret)
            ret += m.content + "<|im_end|>"
            spans.append(_Span(m.index, start, len(ret)))
            ret += "\n"
    if add_generation_prompt:
        ret += "<|im_start|>" + tpl.roles[1] + "\n"
    return _Rendered(ret, tuple(spans))


def _render(sys_msg, msgs, tpl: Template, add_generation_prompt: bool, tokenizer) -> _Rendered:
    if add_generation_prompt and msgs and msgs[-1].role == "assistant":
        raise ValueError("add_generation_prompt needs a conversation ending with a user turn")
    if add_generation_prompt and not msgs:
        raise ValueError("add_generation_prompt needs at least one user turn")
    system = sys_msg.content if sys_msg is not None else tpl.system
    spans: list[_Span] = []
    if tpl.style == "two":
        seps = (tpl.sep, tpl.sep2)
        ret = system + tpl.sep
        for i, m in enumerate(msgs):
            tag = tpl.roles[i % 2]
            content = _image_to_front(m.content) if (tpl.image_to_front and m.role == "user") else m.content
            if m.role == "assistant":
                ret += tag + ":"
                start = len(ret)
                ret += " " + content + seps[i % 2]
                spans.append(_Span(m.index, start, len(ret)))
            else:
                ret += tag + ": " + content + seps[i % 2]
        if add_generation_prompt:
            ret += tpl.roles[1] + ":"
        return _Rendered(ret, tuple(spans))
    if tpl.style == "plain":
        ret = system
        for m in msgs:
            if m.role == "user":
                ret += IMAGE_MARKER * m.content.count(IMAGE_MARKER)
            else:
                start = len(ret)
                ret += m.content + tpl.sep
                spans.append(_Span(m.index, start, len(ret)))
        return _Rendered(ret, tuple(spans))
    if tpl.style == "hf":
        return _render_hf(sys_msg, msgs, add_generation_prompt, tokenizer)
    if tpl.style == "chatml":
        return _render_chatml(sys_msg, msgs, tpl, add_generation_prompt)
    raise ValueError(f"unknown template style {tpl.style!r}")


def _render_hf(sys_msg, msgs, add_generation_prompt, tokenizer) -> _Rendered:
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ValueError("template 'hf' needs a tokenizer that has a chat_template")
    all_msgs = ([sys_msg] if sys_msg is not None else []) + list(msgs)
    hf_msgs = [{"role": m.role, "content": m.content} for m in all_msgs]

    def apply(n: int, gen: bool) -> str:
        out = tokenizer.apply_chat_template(hf_msgs[:n], tokenize=False, add_generation_prompt=gen)
        if not isinstance(out, str):  # pragma: no cover - defensive
            raise TypeError("apply_chat_template(tokenize=False) did not return a string")
        return out

    text = apply(len(hf_msgs), add_generation_prompt)
    spans = []
    for p, m in enumerate(all_msgs):
        if m.role != "assistant":
            continue
        prompt = apply(p, True)
        upto = apply(p + 1, False)
        if not upto.startswith(prompt) or not text.startswith(upto):
            raise TokenizationMismatch(
                m.index, m.role,
                "the chat template is not prefix-stable here (rendering the conversation up to "
                "this turn is not a prefix of the full rendering), so the answer's characters "
                "cannot be located",
            )
        end = len(upto.rstrip())
        if end <= len(prompt):
            end = len(upto)
        spans.append(_Span(m.index, len(prompt), end))
    return _Rendered(text, tuple(spans))


def render(
    conversation: Sequence[Mapping[str, Any]],
    template: str | Template = "vicuna_v1",
    *,
    add_generation_prompt: bool = False,
    tokenizer: Any = None,
) -> str:
    """The prompt text before tokenization (``<image>`` markers kept, not expanded).

    ``add_generation_prompt``: the conversation ends with a user turn and the text ends
    with the assistant's role tag (``"... ASSISTANT:"``). ``tokenizer`` is needed for
    ``template='hf'`` only.
    """
    tpl = get_template(template)
    sys_msg, msgs = _parse(conversation)
    return _render(sys_msg, msgs, tpl, add_generation_prompt, tokenizer).text


# ------------------------------------------------------------------- tokenizing
@dataclasses.dataclass(frozen=True)
class Tokenized:
    input_ids: np.ndarray    # int32[T]; image j as num_image_tokens[j] x image_token_id
    target_mask: np.ndarray  # bool[T]; True exactly on assistant-turn tokens
    num_images: int          # image runs in input_ids (the first num_images images)
    truncated: bool = False  # max_length cut something


_TEXT, _SPECIAL, _IMAGE = 0, 1, 2


@dataclasses.dataclass
class _Encoded:
    ids: np.ndarray     # int64[T]
    starts: np.ndarray  # int64[T] character offsets in the rendered text (-1: special)
    ends: np.ndarray
    kinds: np.ndarray   # int8[T]: _TEXT / _SPECIAL / _IMAGE
    image: np.ndarray   # int64[T]: which <image> marker (0, 1, ...) an image token stands for; -1 else


def _encode_text(tokenizer, text: str, add_special_tokens: bool):
    try:
        enc = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    except NotImplementedError as e:
        raise TypeError(
            "chat.tokenize needs a fast (tokenizers-backed) tokenizer that returns offsets; "
            f"got {type(tokenizer).__name__}"
        ) from e
    ids = list(enc["input_ids"])
    offs = enc.get("offset_mapping") if hasattr(enc, "get") else enc["offset_mapping"]
    if offs is None:
        raise TypeError(f"{type(tokenizer).__name__} returns no offset mapping; a fast tokenizer is needed")
    return ids, [tuple(o) for o in offs]


def _special_prefix(tokenizer) -> list[int]:
    """The special ids the tokenizer puts before a text (``[bos]`` for LLaMA)."""
    probe = "a"
    with_sp, _ = _encode_text(tokenizer, probe, True)
    without, _ = _encode_text(tokenizer, probe, False)
    n = len(without)
    for i in range(len(with_sp) - n + 1):
        if with_sp[i : i + n] == without:
            return with_sp[:i]
    return []


def _image_counts(num_image_tokens, n_markers: int) -> list[int]:
    """``num_image_tokens`` (an int for every image, or one int per ``<image>`` marker in
    order) as one positive count per marker."""
    def ok(n):
        return isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n >= 1

    if isinstance(num_image_tokens, (int, np.integer)) and not isinstance(num_image_tokens, bool):
        if not ok(num_image_tokens):
            raise ValueError(f"num_image_tokens must be a positive int, got {num_image_tokens!r}")
        return [int(num_image_tokens)] * n_markers
    if isinstance(num_image_tokens, (str, bytes)) or not isinstance(num_image_tokens, (Sequence, np.ndarray)):
        raise ValueError("num_image_tokens must be a positive int or a sequence of them (one per "
                         f"{IMAGE_MARKER} marker), got {num_image_tokens!r}")
    if isinstance(num_image_tokens, np.ndarray) and num_image_tokens.ndim != 1:
        raise ValueError(f"num_image_tokens must be 1-D, got shape {num_image_tokens.shape}")
    counts = list(num_image_tokens)
    bad = [n for n in counts if not ok(n)]
    if bad:
        raise ValueError(f"num_image_tokens must hold positive ints, got {bad[0]!r} in {counts!r}")
    if len(counts) != n_markers:
        raise ValueError(f"num_image_tokens gives {len(counts)} image token count(s) but the conversation "
                         f"has {n_markers} {IMAGE_MARKER} marker(s); give one count per marker, in order")
    return [int(n) for n in counts]


def _encode(text: str, tokenizer, image_token_id: int, counts: Sequence[int], prefix: list[int]) -> _Encoded:
    """``counts[j]``: tokens for the j-th ``<image>`` of ``text`` (extra counts unused)."""
    ids: list[int] = []
    starts: list[int] = []
    ends: list[int] = []
    kinds: list[int] = []
    image: list[int] = []
    if prefix:
        prefix_text = tokenizer.decode(prefix, skip_special_tokens=False)
        if not (prefix_text and text.startswith(prefix_text)):
            ids += prefix
            starts += [-1] * len(prefix)
            ends += [-1] * len(prefix)
            kinds += [_SPECIAL] * len(prefix)
            image += [-1] * len(prefix)
    pos = 0
    for j, chunk in enumerate(text.split(IMAGE_MARKER)):
        if j > 0:
            n = counts[j - 1]
            ids += [image_token_id] * n
            starts += [pos] * n
            ends += [pos + len(IMAGE_MARKER)] * n
            kinds += [_IMAGE] * n
            image += [j - 1] * n
            pos += len(IMAGE_MARKER)
        if chunk:
            cids, coffs = _encode_text(tokenizer, chunk, False)
            if image_token_id in cids:
                raise ValueError(
                    f"image_token_id {image_token_id} is also a text token of this tokenizer "
                    f"({tokenizer.convert_ids_to_tokens(image_token_id)!r} in {chunk[:60]!r}); "
                    "image positions would be ambiguous"
                )
            ids += cids
            starts += [s + pos for s, _ in coffs]
            ends += [e + pos for _, e in coffs]
            kinds += [_TEXT] * len(cids)
            image += [-1] * len(cids)
            pos += len(chunk)
    return _Encoded(
        np.asarray(ids, np.int64), np.asarray(starts, np.int64),
        np.asarray(ends, np.int64), np.asarray(kinds, np.int8), np.asarray(image, np.int64),
    )


@dataclasses.dataclass
class _Full:
    ids: np.ndarray
    mask: np.ndarray
    kinds: np.ndarray
    image: np.ndarray   # _Encoded.image
    counts: list[int]   # tokens per image, in marker order
    span_tokens: list[tuple[int, int, int]]  # (turn, first target index, end index)


def _tokens_desc(tokenizer, ids) -> str:
    try:
        return repr(tokenizer.convert_ids_to_tokens([int(i) for i in ids]))
    except Exception:  # pragma: no cover
        return repr([int(i) for i in ids])


def _tokenize_full(sys_msg, msgs, tpl, tokenizer, image_token_id, num_image_tokens, add_generation_prompt) -> _Full:
    if not isinstance(image_token_id, (int, np.integer)) or isinstance(image_token_id, bool):
        raise TypeError(f"image_token_id must be an int, got {image_token_id!r}")
    image_token_id = int(image_token_id)
    rendered = _render(sys_msg, msgs, tpl, add_generation_prompt, tokenizer)
    text = rendered.text
    counts = _image_counts(num_image_tokens, text.count(IMAGE_MARKER))
    prefix = _special_prefix(tokenizer)
    enc = _encode(text, tokenizer, image_token_id, counts, prefix)
    starts, ends, kinds = enc.starts, enc.ends, enc.kinds
    is_text = kinds == _TEXT
    zero = starts == ends
    mask = np.zeros(len(enc.ids), bool)
    span_tokens = []
    for sp in rendered.spans:
        role = "assistant"
        cross_start = is_text & (starts < sp.start) & (ends > sp.start)
        cross_end = is_text & (starts < sp.end) & (ends > sp.end)
        for cross, where, other in ((cross_start, sp.start, "its prompt"), (cross_end, sp.end, "the next turn")):
            if cross.any():
                t = int(np.argmax(cross))
                lo, hi = int(starts[t]), int(ends[t])
                raise TokenizationMismatch(
                    sp.turn, role,
                    f"token {_tokens_desc(tokenizer, enc.ids[t:t+1])} covers characters {lo}:{hi} "
                    f"({text[lo:hi]!r}), across the boundary at character {where} between this "
                    f"answer and {other}; tokenizing by segments would differ from tokenizing the "
                    f"whole text ({text[max(0, where - 30):where]!r} | {text[where:where + 30]!r})",
                )
        inside = is_text & (starts >= sp.start) & (ends <= sp.end) & ~(zero & (starts == sp.end))
        idx = np.flatnonzero(inside)
        if idx.size == 0:
            raise TokenizationMismatch(sp.turn, role, "the answer produced no tokens")
        t0, t1 = int(idx[0]), int(idx[-1]) + 1
        if not inside[t0:t1].all():
            raise TokenizationMismatch(sp.turn, role, "the answer's tokens are not contiguous")
        # Segment check: the generation prompt alone tokenizes as the conversation's prefix.
        prompt_enc = _encode(text[: sp.start], tokenizer, image_token_id, counts, prefix)
        if not np.array_equal(prompt_enc.ids, enc.ids[:t0]):
            n = min(len(prompt_enc.ids), t0)
            diff = next((k for k in range(n) if prompt_enc.ids[k] != enc.ids[k]), n)
            raise TokenizationMismatch(
                sp.turn, role,
                "the generation prompt tokenized alone differs from the same text inside the "
                f"conversation (first difference at token {diff}: alone "
                f"{_tokens_desc(tokenizer, prompt_enc.ids[diff:diff + 3])}, in context "
                f"{_tokens_desc(tokenizer, enc.ids[diff:diff + 3])}); the model would be "
                "trained on other tokens than it sees when generating",
            )
        mask[t0:t1] = True
        span_tokens.append((sp.turn, t0, t1))
    return _Full(enc.ids, mask, kinds, enc.image, counts, span_tokens)


def _count_images(image: np.ndarray, counts: Sequence[int]) -> int:
    """Images whose tokens lie in ``image`` (a prefix of ``_Encoded.image``)."""
    kept = image[image >= 0]
    if kept.size == 0:
        return 0
    last = int(kept[-1])
    assert int((kept == last).sum()) == counts[last], "an image's token run was split"
    return last + 1


def tokenize(
    conversation: Sequence[Mapping[str, Any]],
    tokenizer: Any,
    *,
    template: str | Template = "vicuna_v1",
    image_token_id: int,
    num_image_tokens: int | Sequence[int],
    max_length: int | None = None,
    add_generation_prompt: bool = False,
) -> Tokenized:
    """Render, tokenize and mask a conversation (see the module docstring).

    ``num_image_tokens``: tokens per image -- an int for every image, or one int per
    ``<image>`` marker in order of appearance (models whose image token count depends on
    the image size, e.g. Qwen2.5-VL); a sequence of the wrong length is a ``ValueError``.

    Raises ``TokenizationMismatch`` (naming the turn) when the segment and whole-text
    tokenizations disagree, ``ExampleTooLong`` when ``max_length`` cannot be met by
    cutting trailing text only, ``ValueError`` for malformed conversations.
    """
    tpl = get_template(template)
    sys_msg, msgs = _parse(conversation)
    full = _tokenize_full(sys_msg, msgs, tpl, tokenizer, image_token_id, num_image_tokens, add_generation_prompt)
    ids, mask = full.ids, full.mask
    T = len(ids)
    cut = T
    if max_length is not None:
        limit = int(max_length)
        if limit < 1:
            raise ValueError(f"max_length must be positive, got {max_length}")
        if T > limit and add_generation_prompt:
            raise ExampleTooLong(T, limit, "it is a generation prompt, and prompts are never cut")
        if T > limit:
            cut = None
            for _turn, t0, t1 in full.span_tokens:
                if t0 < limit <= t1:  # the limit falls inside this answer
                    cut = limit
                elif t1 <= limit:  # this answer fits whole
                    cut = t1
            if cut is None:
                if not full.span_tokens:
                    detail = "it has no assistant answer to shorten (prompts are never cut)"
                else:
                    t0 = full.span_tokens[0][1]
                    detail = (f"the first answer starts at token {t0}; its prompt and images "
                              "must fit with at least one answer token")
                raise ExampleTooLong(T, limit, detail)
    return Tokenized(
        input_ids=ids[:cut].astype(np.int32),
        target_mask=mask[:cut].copy(),
        num_images=_count_images(full.image[:cut], full.counts),
        truncated=cut < T,
    )


def tokenize_prompt_response(
    conversation: Sequence[Mapping[str, Any]],
    response: str,
    tokenizer: Any,
    *,
    template: str | Template = "vicuna_v1",
    image_token_id: int,
    num_image_tokens: int | Sequence[int],
    max_length: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(prompt_ids, response_ids)`` (int32) for DPO and generation.

    ``conversation`` ends with a user turn; ``prompt_ids`` is its generation prompt
    (``tokenize(..., add_generation_prompt=True)``) and ``response_ids`` the answer plus
    its end-of-turn token(s). ``prompt_ids + response_ids`` is checked to equal the target
    tokens' prefix of ``tokenize(conversation + [assistant response])`` -- the whole
    sequence for vicuna_v1/llava_v1/plain; for ``hf`` templates whitespace the template
    puts after the end-of-turn token is not part of the response (nor is qwen2_vl's ``"\\n"``
    after ``<|im_end|>``). ``num_image_tokens`` as in ``tokenize`` (one count per marker of
    ``conversation``). ``max_length`` cuts the response's tail; ``ExampleTooLong`` if the
    prompt plus one response token does not fit.
    """
    tpl = get_template(template)
    sys_msg, msgs = _parse(conversation)
    if not msgs or msgs[-1].role != "user":
        raise ValueError("tokenize_prompt_response needs a conversation that ends with a user turn")
    if not isinstance(response, str) or response == "":
        raise ValueError("response must be a non-empty string")
    prompt = _tokenize_full(sys_msg, msgs, tpl, tokenizer, image_token_id, num_image_tokens, True)
    turn = (msgs[-1].index + 1)
    full_msgs = list(msgs) + [_Msg(turn, "assistant", response)]
    if IMAGE_MARKER in response:
        raise ValueError(f"{IMAGE_MARKER} is only allowed in user messages (found in the response)")
    full = _tokenize_full(sys_msg, full_msgs, tpl, tokenizer, image_token_id, num_image_tokens, False)
    n = len(prompt.ids)
    _t, t0, t1 = full.span_tokens[-1]
    if t0 != n or not np.array_equal(full.ids[:n], prompt.ids):
        raise TokenizationMismatch(
            turn, "assistant",
            f"the generation prompt ({n} tokens) is not the prefix of the conversation with the "
            f"response before the response's first token ({t0})",
        )
    response_ids = full.ids[t0:t1]
    if max_length is not None:
        limit = int(max_length)
        if n + 1 > limit:
            raise ExampleTooLong(n + len(response_ids), limit, f"the prompt alone is {n} tokens")
        response_ids = response_ids[: limit - n]
    return prompt.ids.astype(np.int32), response_ids.astype(np.int32)
