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
