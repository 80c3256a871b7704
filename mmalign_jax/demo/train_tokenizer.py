"""Train the demo BPE tokenizer on text of the demo task and write tokenizer.json.

    python -m mmalign_jax.demo.train_tokenizer [--out PATH] [--vocab-size 1000]

Deterministic: the corpus is a fixed function of the generators (own random stream,
'tokenizer' split) and the BPE trainer breaks ties by pair order, so rerunning reproduces the
shipped file. The corpus: the vicuna_v1 system prompt and role words wrapped around every
demo question with each of its candidate answers, the text-only tasks likewise, and the SteerLM
attribute suffix. The alphabet is all printable ASCII plus '\\n', so any ASCII text
round-trips (characters outside it become <unk>).
"""
from __future__ import annotations

import argparse
import string
from pathlib import Path
from typing import List, Optional

from . import questions as Q
from . import text_tasks as T
from .generate import _rng
from .shapes import random_scene
from .tokenizer import SPECIAL_TOKENS, TOKENIZER_FILE, VOCAB_SIZE

SYSTEM_PROMPT = ("A chat between a curious human and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the human's "
                 "questions.")
ROLE_WORDS = ("USER:", "ASSISTANT:")
STEERLM_SUFFIX = ("\nPlease answer the question such that your response is in the following "
                  "attributes in 5-point Likert scale:\nHelpfulness:{h},Correctness:{c},"
                  "Coherence:{o},Complexity:{x},Verbosity:{v}")
ALPHABET = sorted(set(string.printable) - set(" \t\r\x0b\x0c")) + ["\u2581"]


def build_corpus(seed: int = 0, n_vqa: int = 2000, n_text: int = 1000) -> List[str]:
    """Texts in the shapes they take in training: the part before <image>, and the rest."""
    texts: List[str] = [SYSTEM_PROMPT, *ROLE_WORDS]
    head = f"{SYSTEM_PROMPT} USER: "
    for i in range(n_vqa):
        rng = _rng("tokenizer-vqa", "tokenizer", seed, i)
        scene = random_scene(rng)
        q = Q.make_question(scene, rng)
        texts.append(head)
        for c in Q.make_candidates(scene, q, rng):
            texts.append(f"\n{q['text']} ASSISTANT: {c['text']}")
        if i % 4 == 0:
            s = [rng.randint(0, 4) for _ in range(5)]
            texts.append(f"\n{q['text']}" + STEERLM_SUFFIX.format(h=s[0], c=s[1], o=s[2], x=s[3], v=s[4])
                         + f" ASSISTANT: {Q.canonical_answer(scene, q)}")
    for i in range(n_text):
        rng = _rng("tokenizer-text", "tokenizer", seed, i)
        task = T.make_task(rng)
        for c in T.make_text_candidates(task, rng):
            texts.append(f"{head}{task['text']} ASSISTANT: {c['text']}")
    return texts


def train(corpus: Optional[List[str]] = None, vocab_size: int = VOCAB_SIZE, seed: int = 0):
    """A `tokenizers.Tokenizer` trained on `corpus` (default: `build_corpus(seed)`)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    if corpus is None:
        corpus = build_corpus(seed)
    tok = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS[0], fuse_unk=True, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first",
                                                 split=True)
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="first", split=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                  special_tokens=list(SPECIAL_TOKENS), initial_alphabet=ALPHABET,
                                  limit_alphabet=len(ALPHABET))
    tok.train_from_iterator(corpus, trainer=trainer)
    bos = SPECIAL_TOKENS[1]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
        special_tokens=[(bos, tok.token_to_id(bos))])
    for i, t in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(t) == i, (t, tok.token_to_id(t))
    return tok


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m mmalign_jax.demo.train_tokenizer",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(TOKENIZER_FILE))
    ap.add_argument("--vocab-size", type=int, default=VOCAB_SIZE)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    tok = train(vocab_size=a.vocab_size, seed=a.seed)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    tok.save(a.out, pretty=True)
    print(f"wrote {a.out}: vocab {tok.get_vocab_size()}")


if __name__ == "__main__":
    from mmalign_jax.runtime import configure_process
    configure_process()   # XLA flags / malloc settings, before JAX starts (runtime.py)
    main()
