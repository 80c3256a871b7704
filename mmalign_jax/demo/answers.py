"""How every demo answer is read and rated for style, visual or text-only alike.

Shared by the visual questions (`questions`), the text-only tasks (`text_tasks`) and the
scorer (`scorer`), so none of them imports another for it:

- `CANDIDATE_KINDS`: the five kinds of candidate answer every prompt gets;
- the word lists (colours, shapes, numbers, position words, word classes, the vocabulary):
  the whole "model" of English the scorers have;
- `tokenize` / `words_of` / `normalize`: how answer text is split into words and sentences;
- the style checks `coherence_problems` / `coherence_score`, `complexity_score`,
  `verbosity_score`, and `combine`, which turns a graded key answer, the number of false
  claims and those style scores into the five HelpSteer attributes.

The rules themselves are stated in `scorer`'s docstring.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Dict, List, Sequence

from .shapes import COLORS, SHAPES

CANDIDATE_KINDS = ("correct_concise", "correct_verbose", "wrong_attribute", "hallucinated",
                   "incoherent")
CORRECT_KINDS = ("correct_concise", "correct_verbose")
WRONG_KINDS = ("wrong_attribute", "hallucinated", "incoherent")


# ---------------------------------------------------------------------------------------------
# Word lists

NUMBER_WORDS = {"zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6,
                "seven": 7, "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12}
NUMBER_NAMES = {v: k for k, v in NUMBER_WORDS.items()}
# Any colour a model might name; only the palette (shapes.COLORS) ever occurs in a scene.
COLOR_WORDS = set(COLORS) | {"pink", "brown", "black", "gray", "grey", "cyan", "violet",
                             "gold", "silver", "magenta"}
SIZE_WORDS = {"small", "large", "big", "little", "tiny", "huge", "bright", "dark", "light",
              "single", "lone", "solid", "filled"}
SHAPE_NOUNS = {**{s: s for s in SHAPES}, **{s + "s": s for s in SHAPES}}
GENERIC_NOUNS = {"object", "objects", "shape", "shapes", "thing", "things", "item", "items",
                 "figure", "figures"}
# Never in a scene: asserting one is a hallucination.
FOREIGN_NOUNS = {w: w.rstrip("s") for w in (
    "dog", "dogs", "cat", "cats", "tree", "trees", "car", "cars", "house", "houses", "person",
    "people", "man", "woman", "flower", "flowers", "ball", "balls", "bird", "birds", "sun",
    "cloud", "clouds", "heart", "hearts", "diamond", "diamonds", "rectangle", "rectangles",
    "oval", "ovals", "hexagon", "hexagons", "arrow", "arrows", "cross", "crosses", "moon",
    "pentagon", "pentagons", "line", "lines")}
NEGATIONS = {"not", "no", "never", "none", "nothing", "without", "neither", "nor"}
YES_WORDS = {"yes", "yeah", "yep", "correct", "indeed", "sure"}
NO_WORDS = {"no", "nope"}
VERTICAL = {"top": 0, "upper": 0, "bottom": 2, "lower": 2}
HORIZONTAL = {"left": 0, "right": 2}
CENTER = {"center", "centre", "middle", "central"}
POSITION_FILLERS = {"hand", "side", "corner", "part", "half", "edge", "area", "region"}
SCENE_FRAME_NOUNS = {"image", "picture", "grid", "frame", "canvas", "photo", "scene", "it"}
CLAUSE_WORDS = {"but", "however", "although", "though", "while", "whereas", "yet"}

# Word classes for the coherence check (anything else is class X, free to go anywhere).
DET = {"the", "a", "an", "every", "its", "their", "another"}
PREP = {"in", "on", "at", "of", "to", "from", "with", "near", "by", "into", "onto", "under",
        "over", "above", "below", "beside", "between", "inside", "for", "about", "than"}
CONJ = {"and", "or", "but", "nor"}
AUX = {"is", "are", "was", "were", "be", "been", "am"}
VERB = {"has", "have", "shows", "show", "contains", "contain", "sees", "see", "appears",
        "appear", "sits", "sit", "gives", "give", "equals", "becomes", "comes"}
PRON = {"it", "they", "there", "i", "we", "you", "he", "she"}
_BAD_NEXT = {  # class -> classes that may not follow it ('END' = end of sentence, 'BRK' = , :)
    "DET": {"DET", "AUX", "VERB", "PREP", "CONJ", "PRON", "END", "BRK"},
    "PREP": {"AUX", "VERB", "CONJ", "PREP", "END", "BRK"},
    "CONJ": {"CONJ", "END"},
    "AUX": {"AUX", "VERB"},
    "VERB": {"AUX", "VERB"},
    "PRON": {"DET"},
    "ADJ": {"DET"},
    "NOUN": {"DET"},
}

# Words of ordinary demo answers; with the closed classes above they make the vocabulary
# against which "unknown words" are counted for coherence.
COMMON_WORDS = set("""
also all alone answer any anything apart appear appears around as back background backwards
because being beside both can capital capitals case changed clearly color colored colors
colour coloured contain contains corner count counted counting different does each else
every exactly find first form found from gives has have here how image in into is just
kind last larger largest left letter letters located look looks lower many more most much
nothing number numbers objects of one only other picture placed plus minus times position
positions positive reading result right sentence shown side single sits smaller smallest
so spelled such sum than that the them then there these they this three total twice
upper visible what when where which while whole with word words written yes you your
see seen can clearly exactly entire entirely drawn painted gray grey dark even odd
equals equal product difference bigger greater less fewer part parts hand half i count
reversed reverse uppercase letter order backward backwards changes change written write
own every two well goes given top bottom middle center centre total shape shapes item
items thing things object figure figures inside located sit sitting appears appearing
lies lying area region edge corners whole space among besides together separate
adding next get checked turn plain same itself again precisely overlap do quoted does
named called way word words
""".split())


# ---------------------------------------------------------------------------------------------
# Tokenising

@dataclasses.dataclass
class Token:
    w: str          # lower-cased word or punctuation
    orig: str
    sent: int
    clause: int


_TOKEN_RE = re.compile(r"[A-Za-z]+|\d+|[.!?;:,]|[+=*/×]|(?<=\s)-(?=\s)")
_SENT_END = {".", "!", "?", ";"}
_BREAKS = {",", ":"}


_QUOTE_RE = re.compile(r"(?<![A-Za-z])'([^'\s]+)'(?![A-Za-z])|\"([^\"\s]+)\"")


def normalize(text: str) -> str:
    t = str(text).replace("\u2019", "'").replace("\u2018", "'")
    # a quoted string ('a', 'elppa') is a single name, not words of the sentence
    t = _QUOTE_RE.sub(" quoted ", t)
    t = re.sub(r"(?i)\bcan't\b", "can not", t)
    t = re.sub(r"(?i)\bwon't\b", "will not", t)
    t = re.sub(r"(?i)n't\b", " not", t)
    t = re.sub(r"(?i)\b(it|that|there|what|here|where)'s\b", r"\1 is", t)
    t = re.sub(r"(?i)\b(they|there|we|you)'re\b", r"\1 are", t)
    return t


def tokenize(text: str) -> List[Token]:
    toks: List[Token] = []
    sent = clause = 0
    for m in _TOKEN_RE.finditer(normalize(text)):
        s = m.group(0)
        w = s.lower()
        if w in _SENT_END:
            toks.append(Token(w, s, sent, clause))
            sent += 1
            clause += 1
            continue
        if w in _BREAKS:
            toks.append(Token(w, s, sent, clause))
            clause += 1
            continue
        if w in CLAUSE_WORDS:
            clause += 1
        toks.append(Token(w, s, sent, clause))
    return toks


def words_of(text: str) -> List[str]:
    return [t.w for t in tokenize(text) if t.w[0].isalnum()]


# ---------------------------------------------------------------------------------------------
# Style: coherence, complexity, verbosity; and the five attributes

def _word_class(w: str) -> str:
    if w in DET:
        return "DET"
    if w in PREP:
        return "PREP"
    if w in CONJ:
        return "CONJ"
    if w in AUX:
        return "AUX"
    if w in VERB:
        return "VERB"
    if w in PRON:
        return "PRON"
    if w in COLOR_WORDS:
        return "ADJ"
    if w in SHAPE_NOUNS or w in GENERIC_NOUNS or w in ("image", "picture", "background"):
        return "NOUN"
    return "X"


def known_vocabulary() -> set:
    vocab = set(COMMON_WORDS) | DET | PREP | CONJ | AUX | VERB | PRON | COLOR_WORDS | SIZE_WORDS
    vocab |= set(SHAPE_NOUNS) | GENERIC_NOUNS | set(FOREIGN_NOUNS) | NEGATIONS | YES_WORDS
    vocab |= set(VERTICAL) | set(HORIZONTAL) | CENTER | POSITION_FILLERS | SCENE_FRAME_NOUNS
    vocab |= set(NUMBER_WORDS) | {"there", "only", "its", "also", "located", "shows", "contains"}
    return vocab


KNOWN_WORDS = known_vocabulary()


def coherence_problems(text: str, extra_words: Sequence[str] = ()) -> List[str]:
    """The list of problems that lower coherence (see `scorer`'s docstring)."""
    toks = tokenize(text)
    words = [t.w for t in toks if t.w[0].isalnum()]
    if not words:
        return ["empty"] * 4
    problems: List[str] = []
    # back-to-back repeats
    for a, b in zip(toks, toks[1:]):  # neighbours in the text, punctuation included
        if a.w == b.w and a.w[0].isalnum():
            problems.append(f"repeat:{a.w}")
    # loops: many repeated 4-grams, or few distinct words
    grams = [tuple(words[i:i + 4]) for i in range(len(words) - 3)]
    extra = len(grams) - len(set(grams))
    if (grams and extra >= 3 and extra / len(grams) >= 0.25) \
            or (len(words) >= 6 and len(set(words)) / len(words) < 0.35):
        problems += ["loop", "loop"]
    # repeated sentences
    sents: Dict[int, List[str]] = {}
    for t in toks:
        if t.w[0].isalnum():
            sents.setdefault(t.sent, []).append(t.w)
    seen = set()
    for s in sents.values():
        key = tuple(s)
        if len(s) >= 3 and key in seen:
            problems.append("repeated sentence")
        seen.add(key)
    # impossible neighbours
    classes = []
    for t in toks:
        if t.w in _SENT_END:
            classes.append("END")
        elif t.w in _BREAKS:
            classes.append("BRK")
        else:
            classes.append(_word_class(t.w))
    if classes[-1] != "END":
        classes.append("END")
    for a, b in zip(classes, classes[1:]):
        if b in _BAD_NEXT.get(a, ()):
            problems.append(f"bad pair {a}-{b}")
    # ending
    stripped = str(text).strip()
    if not stripped or stripped[-1] not in ".!?":
        problems.append("no final punctuation")
        if words[-1] in DET or words[-1] in PREP or words[-1] in CONJ:
            problems.append("truncated")
    # capitals
    if stripped and stripped[0].isalpha() and stripped[0].islower():
        problems.append("lower-case start")
    # vocabulary
    known = KNOWN_WORDS | {w.lower() for w in extra_words}
    unknown = sum(1 for w in words if not w.isdigit() and w not in known)
    ratio = unknown / len(words)
    if ratio > 0.34:
        problems += ["unknown words", "unknown words"]
    elif ratio > 0.15:
        problems.append("unknown words")
    return problems


def coherence_score(text: str, extra_words: Sequence[str] = ()) -> int:
    return max(0, 4 - len(coherence_problems(text, extra_words)))


def complexity_score(text: str) -> int:
    distinct = len(set(words_of(text)))
    for score, limit in enumerate((2, 6, 14, 28)):
        if distinct <= limit:
            return score
    return 4


def verbosity_score(text: str, reference: str) -> int:
    ratio = len(words_of(text)) / max(1, len(words_of(reference)))
    for score, limit in enumerate((0.6, 1.5, 2.5, 4.0)):
        if ratio < limit:
            return score
    return 4


def combine(key: str, n_false: int, coherence: int, complexity: int, verbosity: int) -> Dict[str, int]:
    base_c = {"right": 4, "partial": 2, "missing": 1, "wrong": 0}[key]
    correctness = max(0, base_c - 2 * n_false)
    if coherence == 0:
        correctness = min(correctness, 1)  # unreadable: it states nothing reliably
    if key == "right":
        h = 4 if n_false == 0 else 2
    elif key == "partial":
        h = 2 if n_false == 0 else 1
    elif key == "wrong":
        h = 1
    else:
        h = 0
    return {"helpfulness": int(min(h, coherence)), "correctness": int(correctness),
            "coherence": int(coherence), "complexity": int(complexity),
            "verbosity": int(verbosity)}
