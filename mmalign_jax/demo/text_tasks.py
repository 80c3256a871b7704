"""Text-only instructions with exact answers: measures text ability apart from vision.

Kinds: add / subtract / multiply ("What is 17 + 25?"), compare ("Which is larger, 17 or 25?"),
reverse ("Reverse the word 'apple'."), uppercase ("Spell 'cat' in capitals."), count_letter
("How many times does the letter 'p' appear in 'apple'?"). A task is a JSON-able dict
{"kind", "text", "answer", ...operands}. Candidates come in the same five kinds as the visual
questions; `hallucinated` ones talk about an image that is not there (the failure the paper
measures when a VQA-tuned model answers text prompts).

Scoring follows the visual scorer (see scorer.py): the key answer is read from the text
(arithmetic / counting: the first number that is not an operand; compare: the number called
larger/smaller, else the first operand named; reverse / uppercase: the first quoted string
or unfamiliar word that is not the input word), graded right / wrong / missing; every other
checkable statement is verified — equations ("17 + 25 = 42"), parity ("42 is an even
number"), comparisons ("25 is larger than 17"), word lengths ("'apple' has 5 letters") —
and every sentence that refers to an image, picture or coloured shape (without a negation)
is a false claim.
The same `combine` turns these into helpfulness / correctness; coherence, complexity and
verbosity use the shared text checks (`answers.py`).
"""
from __future__ import annotations

import random
import re
from typing import Dict, List, Optional, Sequence

from . import answers as _ans
from .answers import CANDIDATE_KINDS
from .shapes import COLOR_NAMES, SHAPES

TASK_KINDS = ("add", "subtract", "multiply", "compare", "reverse", "uppercase", "count_letter")

WORDS = (
    "apple", "banana", "cherry", "garden", "window", "pencil", "rabbit", "turtle", "rocket",
    "planet", "silver", "forest", "candle", "bottle", "monkey", "lemon", "tiger", "zebra",
    "piano", "river", "table", "chair", "paper", "water", "music", "horse", "sheep", "bread",
    "honey", "jacket", "basket", "button", "dragon", "guitar", "island", "kitten", "ladder",
    "marble", "needle", "pocket", "puzzle", "ribbon", "tomato", "violin", "wallet", "cookie",
    "muffin", "bucket", "carpet", "cactus", "donkey", "falcon", "lizard", "mango", "otter",
    "parrot", "robot", "spider", "tulip", "wagon", "yogurt", "bridge", "camera", "dinner",
    "engine", "finger", "hammer", "jungle", "kettle", "lantern", "mirror", "noodle", "pepper",
    "shadow", "ticket", "velvet", "cat", "dog", "sun", "cup", "pen", "box", "hat", "map",
)

_NUM_WORDS = _ans.NUMBER_WORDS
_IMAGE_WORDS = {"image", "picture", "photo", "photograph", "drawing", "shown", "pictured"}


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _num_text(n: int, rng: Optional[random.Random] = None) -> str:
    if rng is not None and 0 <= n <= 10 and rng.random() < 0.4:
        return _ans.NUMBER_NAMES[n]
    return str(n)


# ---------------------------------------------------------------------------------------------
# Tasks

def make_task(rng: random.Random, kind: Optional[str] = None) -> dict:
    kind = kind or rng.choice(TASK_KINDS)
    if kind == "add":
        a, b = rng.randint(2, 60), rng.randint(2, 60)
        text = rng.choice(["What is {a} + {b}?", "What is {a} plus {b}?", "Add {a} and {b}.",
                           "Compute {a} + {b}."]).format(a=a, b=b)
        return {"kind": kind, "text": text, "a": a, "b": b, "answer": str(a + b)}
    if kind == "subtract":
        while True:
            a = rng.randint(10, 99)
            b = rng.randint(2, a - 2)
            if a - b not in (a, b):
                break
        text = rng.choice(["What is {a} - {b}?", "What is {a} minus {b}?",
                           "Subtract {b} from {a}."]).format(a=a, b=b)
        return {"kind": kind, "text": text, "a": a, "b": b, "answer": str(a - b)}
    if kind == "multiply":
        a, b = rng.randint(2, 12), rng.randint(2, 12)
        text = rng.choice(["What is {a} times {b}?", "What is {a} x {b}?",
                           "Multiply {a} by {b}."]).format(a=a, b=b)
        return {"kind": kind, "text": text, "a": a, "b": b, "answer": str(a * b)}
    if kind == "compare":
        a, b = rng.sample(range(1, 100), 2)
        which = rng.choice(["larger", "larger", "smaller"])
        if which == "larger":
            text = rng.choice(["Which is larger, {a} or {b}?", "Which number is bigger: {a} or {b}?",
                               "Which is greater, {a} or {b}?"])
        else:
            text = rng.choice(["Which is smaller, {a} or {b}?", "Which number is less: {a} or {b}?"])
        ans = max(a, b) if which == "larger" else min(a, b)
        return {"kind": kind, "text": text.format(a=a, b=b), "a": a, "b": b, "which": which,
                "answer": str(ans)}
    if kind == "reverse":
        w = rng.choice(WORDS)
        text = rng.choice(["Reverse the word '{w}'.", "Write '{w}' backwards.",
                           "What is '{w}' spelled backwards?"]).format(w=w)
        return {"kind": kind, "text": text, "word": w, "answer": w[::-1]}
    if kind == "uppercase":
        w = rng.choice(WORDS)
        text = rng.choice(["Spell '{w}' in capitals.", "Write the word '{w}' in capital letters.",
                           "Convert '{w}' to uppercase."]).format(w=w)
        return {"kind": kind, "text": text, "word": w, "answer": w.upper()}
    if kind == "count_letter":
        w = rng.choice(WORDS)
        if rng.random() < 0.75:
            letter = rng.choice(sorted(set(w)))
        else:
            letter = rng.choice([c for c in "abcdefghijklmnopqrstuvwxyz" if c not in w])
        text = rng.choice(["How many times does the letter '{l}' appear in '{w}'?",
                           "Count the letter '{l}' in the word '{w}'.",
                           "How many '{l}' letters are in '{w}'?"]).format(l=letter, w=w)
        return {"kind": kind, "text": text, "word": w, "letter": letter,
                "answer": str(w.count(letter))}
    raise ValueError(f"unknown text task kind {kind!r}; use one of {TASK_KINDS}")


def canonical_text_answer(task: dict) -> str:
    k, ans = task["kind"], task["answer"]
    if k in ("add", "subtract", "multiply"):
        return f"The answer is {ans}."
    if k == "compare":
        return f"{ans} is {task['which']}."
    if k == "reverse":
        return f"The reversed word is '{ans}'."
    if k == "uppercase":
        return f"In capitals it is '{ans}'."
    if k == "count_letter":
        return f"The letter '{task['letter']}' appears {ans} times."
    raise ValueError(k)


# ---------------------------------------------------------------------------------------------
# Candidates

_OP = {"add": ("+", "plus"), "subtract": ("-", "minus"), "multiply": ("x", "times")}


def _concise(task: dict, rng: random.Random, value: Optional[str] = None) -> str:
    k = task["kind"]
    v = task["answer"] if value is None else value
    if k in _OP:
        sym, word = _OP[k]
        a, b = task["a"], task["b"]
        return rng.choice([f"{v}.", f"The answer is {v}.", f"{a} {sym} {b} = {v}.",
                           f"{a} {word} {b} equals {v}.", f"It is {v}."])
    if k == "compare":
        return rng.choice([f"{v}.", f"{v} is {task['which']}.", f"The {task['which']} number is {v}.",
                           f"The {task['which']} one is {v}."])
    if k == "reverse":
        w = task["word"]
        return rng.choice([f"The reversed word is '{v}'.", f"It is '{v}'.",
                           f"Backwards, '{w}' is '{v}'.", f"'{w}' reversed is '{v}'."])
    if k == "uppercase":
        w = task["word"]
        return rng.choice([f"{v}.", f"In capitals it is '{v}'.", f"The word in capitals is '{v}'.",
                           f"'{w}' in capital letters is '{v}'."])
    if k == "count_letter":
        n = int(v)
        l, w = task["letter"], task["word"]
        options = [f"{_cap(_num_text(n, rng))}.", f"The letter '{l}' appears {_num_text(n, rng)} "
                   f"{'time' if n == 1 else 'times'} in '{w}'.",
                   f"It appears {_num_text(n, rng)} {'time' if n == 1 else 'times'}."]
        if n == 0:
            options.append(f"The letter '{l}' does not appear in '{w}'.")
        return rng.choice(options)
    raise ValueError(k)


def _text_facts(task: dict, rng: random.Random) -> List[str]:
    k = task["kind"]
    facts = []
    if k in _OP:
        a, b, ans = task["a"], task["b"], int(task["answer"])
        sym, word = _OP[k]
        facts.append(rng.choice([f"We get this from {a} {sym} {b} = {ans}.",
                                 f"In words, {a} {word} {b} equals {ans}."]))
        facts.append(f"{ans} is {'an even' if ans % 2 == 0 else 'an odd'} number.")
        if k == "add":
            facts.append("The sum is larger than each of the two numbers.")
        elif k == "subtract":
            facts.append(f"Adding {b} back to {ans} gives {a} again.")
        else:
            facts.append(f"This is the same as adding {a} to itself {b} times.")
    elif k == "compare":
        a, b = task["a"], task["b"]
        big, small = max(a, b), min(a, b)
        facts.append(f"{big} is larger than {small}.")
        facts.append(f"The difference between the two numbers is {big - small}.")
        facts.append(f"{small} is smaller than {big}.")
    elif k in ("reverse", "uppercase", "count_letter"):
        w = task["word"]
        facts.append(f"The word '{w}' has {len(w)} letters.")
        if k == "reverse":
            facts.append("Reading the word from the last letter to the first gives the answer.")
            facts.append(f"The first letter of the reversed word is '{task['answer'][0]}'.")
        elif k == "uppercase":
            facts.append("Every letter of the word is changed to its capital form.")
            facts.append("Only the case of the letters changes, not their order.")
        else:
            facts.append("Each letter of the word was checked in turn.")
    return facts


def _verbose(task: dict, rng: random.Random) -> str:
    core = _concise(task, rng)
    if task["kind"] in _OP and not core.startswith(str(task["a"])):
        core = rng.choice([f"The answer is {task['answer']}.", f"The result is {task['answer']}."])
    facts = _text_facts(task, rng)
    return " ".join([core] + rng.sample(facts, min(len(facts), rng.randint(2, 3))))


def _wrong_value(task: dict, rng: random.Random) -> str:
    k = task["kind"]
    if k in _OP:
        ans = int(task["answer"])
        options = [ans + d for d in (-10, -2, -1, 1, 2, 10)
                   if ans + d > 0 and ans + d not in (task["a"], task["b"])]
        return str(rng.choice(options))
    if k == "compare":
        return str(task["a"] if task["answer"] == str(task["b"]) else task["b"])
    if k == "reverse":
        w, r = task["word"], task["answer"]
        options = [r[1:] + r[0], r[:-1]]
        if len(r) > 3:
            options.append(r[0] + r[2] + r[1] + r[3:])
        options = [o for o in options if o != r and o != w]
        return rng.choice(options) if options else r + r[-1]
    if k == "uppercase":
        w = task["word"]
        options = [w.capitalize(), w[:-1].upper() + w[-1], w.upper()[::-1]]
        options = [o for o in options if o != w.upper()]
        return rng.choice(options)
    if k == "count_letter":
        n = int(task["answer"])
        return str(rng.choice([x for x in (n - 1, n + 1, n + 2) if x >= 0]))
    raise ValueError(k)


def _hallucination(rng: random.Random) -> str:
    c, s = rng.choice(COLOR_NAMES), rng.choice(SHAPES)
    a = ("an " if c[0] in "aeiou" else "a ") + f"{c} {s}"
    return rng.choice([f"The image also shows {a} in the top left.",
                       f"In the picture, the numbers are written next to {a}.",
                       f"There is also {a} in the image.",
                       "The answer is shown in the picture on the right."])


def _incoherent(task: dict, rng: random.Random) -> str:
    source = _verbose(task, rng)
    words = source.replace(".", " .").replace(",", " ,").split()
    plain = [w for w in words if w not in (".", ",")]
    extra = task_vocabulary(task)
    for _ in range(20):
        mode = rng.choice(["salad", "loop", "truncated", "stutter"])
        if mode == "salad":
            ws = [w.lower() for w in plain]
            rng.shuffle(ws)
            text = " ".join(ws)
        elif mode == "loop":
            piece = " ".join(plain[:rng.randint(2, 4)])
            text = " ".join([piece] * rng.randint(3, 5))
        elif mode == "truncated":
            cuts = [i for i, w in enumerate(words) if w.lower() in ("the", "a", "an", "of", "to", "in", "and", "from")
                    and i >= 2]
            if not cuts:
                continue
            text = " ".join(words[:rng.choice(cuts) + 1]).replace(" .", ".").replace(" ,", ",")
        else:
            out = []
            for w in plain:
                out.append(w)
                if rng.random() < 0.5:
                    out.append(w)
            text = " ".join(out) + "."
        if _ans.coherence_score(text, extra) <= 2:
            return text
    return " ".join([plain[-1]] * 6)


def make_text_candidates(task: dict, rng: random.Random,
                         kinds: Sequence[str] = CANDIDATE_KINDS) -> List[Dict[str, str]]:
    out = []
    concise = None
    for kind in kinds:
        if kind == "correct_concise":
            concise = text = _concise(task, rng)
        elif kind == "correct_verbose":
            text = _verbose(task, rng)
            ref = canonical_text_answer(task)
            if concise is not None:
                facts = [f for f in _text_facts(task, rng) if f not in text]
                while _ans.verbosity_score(text, ref) <= _ans.verbosity_score(concise, ref) and facts:
                    text += " " + facts.pop(0)
        elif kind == "wrong_attribute":
            text = _concise(task, rng, value=_wrong_value(task, rng))
            if rng.random() < 0.4:
                text += " " + rng.choice([f for f in _text_facts(task, rng)
                                          if task["answer"] not in f and "answer" not in f] or [""])
                text = text.strip()
        elif kind == "hallucinated":
            core = _concise(task, rng) if rng.random() < 0.5 else _verbose(task, rng)
            text = core + " " + _hallucination(rng)
        elif kind == "incoherent":
            text = _incoherent(task, rng)
        else:
            raise ValueError(f"unknown candidate kind {kind!r}; use {CANDIDATE_KINDS}")
        out.append({"text": text, "kind": kind})
    return out


# ---------------------------------------------------------------------------------------------
# Scoring

_QUOTED = re.compile(r"'([^'\s]+)'|\"([^\"\s]+)\"")
_WORD = re.compile(r"[A-Za-z]+|\d+")
_OPS = {"+": "add", "plus": "add", "-": "subtract", "minus": "subtract", "x": "multiply",
        "times": "multiply", "*": "multiply", "×": "multiply"}
_EQUATION = re.compile(
    r"(\d+)\s*(\+|plus|-|minus|x|×|\*|times|multiplied by)\s*(\d+)\s*(?:=|equals|is|makes|gives)\s*(\d+)",
    re.IGNORECASE)
_PARITY = re.compile(r"\b(\d+)\s+is\s+an?\s+(even|odd)\b", re.IGNORECASE)
_COMPARISON = re.compile(r"\b(\d+)\s+is\s+(larger|bigger|greater|smaller|less)\s+than\s+(\d+)",
                         re.IGNORECASE)
_LENGTH = re.compile(r"'([A-Za-z]+)'\s+has\s+(\d+|[a-z]+)\s+letters", re.IGNORECASE)
_CALLED = re.compile(
    r"(?:(\d+)\s+is\s+(?:the\s+)?(larger|bigger|greater|smaller|less)(?!\s+than))|"
    r"(?:(larger|bigger|greater|smaller|less)(?:\s+number|\s+one)?\s+is\s+(\d+))", re.IGNORECASE)


def task_vocabulary(task: dict) -> List[str]:
    """Words that are fine in an answer to `task` (for the unknown-word check)."""
    words = _ans.words_of(task.get("text", ""))
    for key in ("word", "answer", "letter"):
        if task.get(key) is not None:
            words.append(str(task[key]).lower())
    words += ["x", "plus", "minus", "times", "equals", "sum", "result", "difference", "number",
              "numbers", "reversed", "capitals", "capital", "letters", "letter", "appears",
              "time", "times", "smaller", "larger", "bigger", "greater", "less", "even", "odd"]
    return words


def _numbers(text: str) -> List[int]:
    out = []
    for m in _WORD.finditer(text):
        w = m.group(0).lower()
        if w.isdigit():
            out.append(int(w))
        elif w in _NUM_WORDS:
            out.append(_NUM_WORDS[w])
    return out


def _candidate_strings(task: dict, text: str) -> List[str]:
    """Answer-like strings in order: quoted strings that are not the input word, else
    unfamiliar words (or the exact answer)."""
    w = task["word"]
    quoted = [a or b for a, b in _QUOTED.findall(text)]
    quoted = [q for q in quoted if q != w]
    if quoted:
        return quoted
    out = []
    for m in _WORD.finditer(text):
        tok = m.group(0)
        if tok == task["answer"] or tok.lower() == task["answer"].lower() and task["kind"] == "reverse":
            out.append(tok)
        elif tok != w and tok.lower() not in _ans.KNOWN_WORDS and not tok.isdigit() \
                and tok.lower() not in ("reversed", "backwards", "capitals", "uppercase"):
            out.append(tok)
    return out


def _key(task: dict, text: str):
    k = task["kind"]
    truth = task["answer"]
    if k in _OP:
        operands = {task["a"], task["b"]}
        nums = _numbers(text)
        said = next((n for n in nums if n not in operands), nums[0] if nums else None)
    elif k == "compare":
        said = None
        for m in _CALLED.finditer(text):
            num = m.group(1) or m.group(4)
            word = (m.group(2) or m.group(3)).lower()
            wants_larger = task["which"] == "larger"
            says_larger = word in ("larger", "bigger", "greater")
            said = int(num) if wants_larger == says_larger else \
                (task["a"] if int(num) == task["b"] else task["b"])
            break
        if said is None:
            said = next((n for n in _numbers(text) if n in (task["a"], task["b"])), None)
    elif k == "count_letter":
        first = re.split(r"(?<=[.!?])\s+", text.strip(), maxsplit=1)[0]
        nums = _numbers(first) or _numbers(text)
        said = _numbers(first)[0] if _numbers(first) else None
        if said is None and re.search(r"\b(not|never|no|none)\b", _ans.normalize(first), re.I):
            said = 0
        if said is None and nums:
            said = nums[0]
    else:  # reverse / uppercase
        cands = _candidate_strings(task, text)
        said = cands[0] if cands else None
        if said is None:
            return "missing", None
        ok = said.lower() == truth.lower() if k == "reverse" else said == truth
        return ("right" if ok else "wrong"), said
    if said is None:
        return "missing", None
    return ("right" if str(said) == truth else "wrong"), said


def _false_claims(task: dict, text: str) -> List[str]:
    t = _ans.normalize(text)
    out = []
    for m in _EQUATION.finditer(t):
        a, op, b, c = int(m.group(1)), m.group(2).lower(), int(m.group(3)), int(m.group(4))
        op = "multiply" if op.startswith("multiplied") else _OPS.get(op)
        value = {"add": a + b, "subtract": a - b, "multiply": a * b}[op]
        if value != c:
            out.append(f"false equation: {m.group(0)}")
    for m in _PARITY.finditer(t):
        if (int(m.group(1)) % 2 == 0) != (m.group(2).lower() == "even"):
            out.append(f"false parity: {m.group(0)}")
    for m in _COMPARISON.finditer(t):
        a, rel, b = int(m.group(1)), m.group(2).lower(), int(m.group(3))
        ok = a > b if rel in ("larger", "bigger", "greater") else a < b
        if not ok:
            out.append(f"false comparison: {m.group(0)}")
    for m in _LENGTH.finditer(t):
        n = m.group(2).lower()
        n = int(n) if n.isdigit() else _NUM_WORDS.get(n)
        if n is not None and n != len(m.group(1)):
            out.append(f"false length: {m.group(0)}")
    # talk of an image (there is none) or of coloured shapes: one false claim per sentence
    for sent in re.split(r"(?<=[.!?])\s+", t):
        ws = set(_ans.words_of(sent))
        shapes = {w for w in ws if w in _ans.SHAPE_NOUNS}
        if ws & _ans.NEGATIONS:
            continue  # "there is no image here" is true
        if ws & _IMAGE_WORDS or (shapes and ws & _ans.COLOR_WORDS):
            out.append(f"no image: {sent.strip()}")
    return out


def explain_text_answer(task: dict, answer: str) -> dict:
    text = "" if answer is None else str(answer)
    grade, said = _key(task, text)
    false = _false_claims(task, text)
    extra = task_vocabulary(task)
    if task.get("word"):  # a misspelt attempt at the word ("elpap", "TAC") is wrong, not gibberish
        letters = set(task["word"].lower())
        extra += [w for w in _ans.words_of(text) if set(w) <= letters]
    problems = _ans.coherence_problems(text, extra)
    coh = max(0, 4 - len(problems))
    scores = _ans.combine(grade, len(false), coh, _ans.complexity_score(text),
                         _ans.verbosity_score(text, canonical_text_answer(task)))
    return {"scores": scores, "key": grade, "said": said, "false_claims": false,
            "coherence_problems": problems}


def score_text_answer(task: dict, answer: str) -> Dict[str, int]:
    """The five HelpSteer attributes (ints 0–4) of `answer` to the text-only `task`."""
    return explain_text_answer(task, answer)["scores"]


def is_correct(task: dict, answer: str, strict: bool = False) -> bool:
    """Right final answer (`strict`: and no false statement, no talk of an image)."""
    e = explain_text_answer(task, answer)
    return e["key"] == "right" and (not strict or not e["false_claims"])
