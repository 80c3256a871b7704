"""The demo tokenizer: a ~1000-entry SentencePiece-style BPE trained on demo-task text.

Shipped as `tokenizer.json` next to this file (regenerate it with
`python -m mmalign_jax.demo.train_tokenizer`). Special tokens have fixed ids that the
`tiny` model preset relies on: <unk>=0, <s>=1, </s>=2, <pad>=3, <image>=4. Like LLaMA, it
adds <s> at the start of every encoded text and no </s>; words carry a leading '▁'
(Metaspace, prepend_scheme='first', so no extra space is added after a special token).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

TOKENIZER_FILE = Path(__file__).with_name("tokenizer.json")

UNK, BOS, EOS, PAD, IMAGE = "<unk>", "<s>", "</s>", "<pad>", "<image>"
SPECIAL_TOKENS = (UNK, BOS, EOS, PAD, IMAGE)          # in id order
SPECIAL_IDS = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
UNK_ID, BOS_ID, EOS_ID, PAD_ID, IMAGE_TOKEN_ID = range(5)
VOCAB_SIZE = 1000   # what train_tokenizer asks for; the tiny preset's embedding has 1024 rows
MAX_VOCAB = 1024


# Qwen2.5-VL's ChatML and vision tokens, added after the BPE's 1000 entries at fixed ids (the
# `qwen2.5-vl-demo` preset's image_token_id / eos / pad rely on them).
QWEN_SPECIAL_TOKENS = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>",
                       "<|im_start|>", "<|im_end|>", "<|endoftext|>")
QWEN_SPECIAL_IDS = {tok: VOCAB_SIZE + i for i, tok in enumerate(QWEN_SPECIAL_TOKENS)}


def tokenizer_path() -> str:
    return str(TOKENIZER_FILE)


def load_tokenizer(path: Optional[Union[str, Path]] = None, add_bos_token: bool = True,
                   add_eos_token: bool = False):
    """The demo tokenizer as a `transformers.PreTrainedTokenizerFast`.

    `path`: a tokenizer.json file or a folder holding one (default: the shipped file).
    bos/eos/unk/pad tokens are set; `image_token` is '<image>'. `add_bos_token` /
    `add_eos_token` behave as in LLaMA's tokenizer (settable later too: `tok.add_bos_token =
    False` rebuilds the post-processor).
    """
    from transformers import PreTrainedTokenizerFast

    p = Path(path) if path is not None else TOKENIZER_FILE
    if p.is_dir():
        p = p / "tokenizer.json"
    if not p.is_file():
        raise FileNotFoundError(f"no tokenizer file at {p}: run "
                                "`python -m mmalign_jax.demo.train_tokenizer` to create it")
    tok = PreTrainedTokenizerFast(
        tokenizer_file=str(p), bos_token=BOS, eos_token=EOS, unk_token=UNK, pad_token=PAD,
        extra_special_tokens={"image_token": IMAGE},
        add_bos_token=add_bos_token, add_eos_token=add_eos_token,
        clean_up_tokenization_spaces=False, padding_side="right", model_max_length=4096)
    ids = tok.convert_tokens_to_ids(list(SPECIAL_TOKENS))
    if ids != list(range(len(SPECIAL_TOKENS))):
        raise ValueError(f"{p}: special tokens {SPECIAL_TOKENS} must have ids 0..4, got {ids}")
    return tok


def load_qwen_tokenizer(path: Optional[Union[str, Path]] = None):
    """The demo BPE as a Qwen2.5-VL-style tokenizer: no BOS (Qwen adds none), the ChatML and
    vision tokens of `QWEN_SPECIAL_TOKENS` added as special tokens with ids 1000..1006,
    "\n" always a token of its own, eos `<|im_end|>`, pad `<|endoftext|>`. `path`: a tokenizer.json file or folder (the
    shipped LLaVA demo file by default; a folder this function saved also loads)."""
    from tokenizers import AddedToken
    tok = load_tokenizer(path, add_bos_token=False)
    tok.add_special_tokens({"additional_special_tokens": list(QWEN_SPECIAL_TOKENS)})
    # ChatML puts "\n" before every answer; the BPE merges it with the next letter ("\nP"),
    # a token across the prompt/answer boundary. As an added token (its own id, 5) it is
    # split off first, as Qwen's byte-level pre-tokenizer does.
    tok.add_tokens([AddedToken("\n", normalized=False, special=False)])
    ids = tok.convert_tokens_to_ids(list(QWEN_SPECIAL_TOKENS))
    want = [QWEN_SPECIAL_IDS[t] for t in QWEN_SPECIAL_TOKENS]
    if ids != want:
        raise ValueError(f"demo tokenizer: Qwen special tokens {QWEN_SPECIAL_TOKENS} must have "
                         f"ids {want} (the BPE must have {VOCAB_SIZE} entries), got {ids}")
    tok.eos_token, tok.pad_token = "<|im_end|>", "<|endoftext|>"
    tok.bos_token = None
    return tok
