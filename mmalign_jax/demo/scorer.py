"""Ground-truth scorer for the demo task: rates any answer text on the five HelpSteer attributes.

The scorer reads the answer the way a careful labeller with the scene description would, with
rules simple enough to state here. Each attribute is an integer 0–4.

1. Parse the answer into *statements* about the scene:
   - object statements: "[a/the] [size] <colour> <shape>" or "<shape> is <colour>", with a
     position attached when a position phrase ("in the top left", "on the right", "at the top",
     "in the center") follows it in the same sentence (or a sentence starting with "It ...");
     a negation earlier in the clause ("there is no / not a / without") makes it a denial;
   - count statements: "<number> [<colour>] <shape|objects|shapes>", "no <colour> <shape>";
   - mentions of things that are never in a scene (dogs, trees, hearts, ...).
2. The statement that answers the question is the *key* and is graded against the truth:
   right / partial (position: only one of row/column right, or less specific; describe: some
   but not all objects named) / wrong / missing (no answer found). Answers without a
   full statement are read directly ("Red.", "Three.", "Yes.", "On the left.").
3. Every *other* statement is checked against the scene; each contradicted one (an object that
   is not there, a wrong position, a wrong count, a denied object that is there) is a
   *false claim* (hallucination).

   correctness = max(0, base − 2·false_claims), base = right 4, partial 2, missing 1, wrong 0
                 (at most 1 when coherence is 0: unreadable text states nothing reliably)
   helpfulness = min(coherence, h), h = right 4 (2 with any false claim), partial 2
                 (1 with any false claim), wrong 1, missing 0
   coherence   = 4 − problems (floor 0): a word repeated back to back, loops (repeated 4-grams
                 or few distinct words),
                 repeated sentences, impossible word pairs ("the is", "in and", "of ." …),
                 a dangling last word ("… in the"), no final punctuation, a lower-case start,
                 words outside the task's vocabulary (>15 % one problem, >34 % two)
   complexity  = distinct words: ≤2 → 0, ≤6 → 1, ≤14 → 2, ≤28 → 3, more → 4
   verbosity   = words / words of the canonical short answer: <0.6 → 0, <1.5 → 1, <2.5 → 2,
                 <4 → 3, more → 4

Consequence, for any text: helpfulness + correctness + coherence (the sum that builds
preference pairs) is 12 exactly when the answer is right, says nothing false and reads
cleanly, whatever its length; a wrong or partial answer, or a right one with a false claim,
gets at most 8; a right one with coherence problems at most 10. Complexity and verbosity
describe style only and never enter that sum.

The word lists (colours, shapes, position words, word classes, the vocabulary) are the
whole "model" of English the scorer has; they, the tokenizer and the style checks
(coherence, complexity, verbosity, `combine`) live in `answers.py`, shared with the text-only
tasks. `explain_answer` shows what the scorer understood.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .answers import (CENTER, COLOR_WORDS, DET, FOREIGN_NOUNS, GENERIC_NOUNS, HORIZONTAL,
                      NEGATIONS, NO_WORDS, NUMBER_WORDS, POSITION_FILLERS, SCENE_FRAME_NOUNS,
                      SHAPE_NOUNS, SIZE_WORDS, VERTICAL, YES_WORDS, Token, coherence_problems,
                      combine, complexity_score, tokenize, verbosity_score, words_of)
from .questions import canonical_answer
from .shapes import Scene
from .text_tasks import score_text_answer

ATTRIBUTES = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")


def _number(w: str) -> Optional[int]:
    if w.isdigit():
        return int(w) if len(w) < 7 else None
    return NUMBER_WORDS.get(w)


# ---------------------------------------------------------------------------------------------
# Statements

@dataclasses.dataclass
class Claim:
    kind: str                       # 'object' | 'count'
    shape: Optional[str] = None     # a SHAPES member; None for generic nouns / foreign things
    color: Optional[str] = None
    count: Optional[int] = None     # count statements only
    position: Optional[Tuple[Optional[int], Optional[int]]] = None  # (row, col), None = unsaid
    negated: bool = False           # "there is no / not a red circle"
    foreign: Optional[str] = None   # a thing that never appears in a scene
    generic: bool = False           # "objects", "shapes"
    start: int = 0                  # token span
    end: int = 0
    sent: int = 0
    pronoun: bool = False           # created from "It is <position>."

    def describe(self) -> str:
        what = self.foreign or self.shape or "object"
        parts = [str(self.count)] if self.kind == "count" else []
        parts += [self.color or "", what]
        s = " ".join(p for p in parts if p)
        if self.position is not None:
            s += f" @{self.position}"
        return ("NOT " if self.negated else "") + s


@dataclasses.dataclass
class Parsed:
    toks: List[Token]
    claims: List[Claim]
    phrases: List[dict]             # {'pos': (row, col), 'start', 'end', 'sent', 'attached'}
    bare_colors: List[Tuple[str, int]]  # (colour, token index) not tied to a shape, in order
    numbers: List[Tuple[int, int]]      # (value, token index) of every number word/digit
    yes_no: Optional[str]           # 'yes' | 'no' from the first word


def _parse_position_run(words: Sequence[str]) -> Optional[Tuple[Optional[int], Optional[int]]]:
    v = next((VERTICAL[w] for w in words if w in VERTICAL), None)
    h = next((HORIZONTAL[w] for w in words if w in HORIZONTAL), None)
    c = any(w in CENTER for w in words)
    if v is not None and h is not None:
        return (v, h)
    if v is not None:
        return (v, 1 if c else None)
    if h is not None:
        return (1 if c else None, h)
    if c:
        return (1, 1)
    return None


def _find_phrases(toks: List[Token]) -> List[dict]:
    pos_words = set(VERTICAL) | set(HORIZONTAL) | CENTER
    out = []
    i, n = 0, len(toks)
    while i < n:
        if toks[i].w not in pos_words:
            i += 1
            continue
        j = i
        while j < n and (toks[j].w in pos_words or toks[j].w in POSITION_FILLERS) \
                and toks[j].sent == toks[i].sent:
            j += 1
        run = [t.w for t in toks[i:j]]
        # Relational ("to the left of the square", "on top of a star") is not a grid position.
        relational = False
        if j < n and toks[j].w == "of":
            k = j + 1
            while k < n and (toks[k].w in DET or toks[k].w in COLOR_WORDS or toks[k].w in SIZE_WORDS):
                k += 1
            if k < n and toks[k].w not in SCENE_FRAME_NOUNS:
                relational = True
        pos = _parse_position_run(run)
        if pos is not None and not relational:
            out.append({"pos": pos, "start": i, "end": j, "sent": toks[i].sent, "attached": False})
        i = j
    return out


def parse(text: str) -> Parsed:
    toks = tokenize(text)
    words = [t.w for t in toks]
    n = len(toks)
    claims: List[Claim] = []
    used_colors = set()  # token indices of colour words tied to a shape (or negated)

    for i, t in enumerate(toks):
        w = t.w
        is_shape = w in SHAPE_NOUNS
        is_generic = w in GENERIC_NOUNS
        is_foreign = w in FOREIGN_NOUNS
        if not (is_shape or is_generic or is_foreign):
            continue
        # adjectives before the noun
        j = i - 1
        color = None
        color_idx = None
        while j >= 0 and toks[j].sent == t.sent and (words[j] in COLOR_WORDS or words[j] in SIZE_WORDS):
            if words[j] in COLOR_WORDS and color is None:
                color, color_idx = words[j], j
            j -= 1
        # a number (or "no") before the adjectives
        count = None
        start = j + 1
        if j >= 0 and toks[j].sent == t.sent:
            num = _number(words[j])
            quantified = j >= 1 and words[j - 1] in ("no", "than", "least", "most", "every")
            if num is not None and not quantified:
                count, start = num, j
            elif words[j] == "no":
                count, start = 0, j
            elif words[j] == "single" and j >= 1 and words[j - 1] == "a":
                count, start = 1, j - 1
        if words[j + 1:i].count("single") and count is None and j >= 0 and words[j] == "a":
            count, start = 1, j
        # "<shape> is [colored] <colour>" (or "is not <colour>", which ties nothing)
        end = i
        if color is None and (is_shape or (is_generic and count is not None)):
            k = i + 1
            if k < n and words[k] in ("is", "are", "looks", "appears", "seems"):
                k += 1
                neg = False
                for _ in range(3):
                    if k < n and words[k] in ("colored", "coloured", "painted", "drawn", "in",
                                               "all", "also", "not", "entirely", "completely"):
                        neg = neg or words[k] == "not"
                        k += 1
                if k < n and words[k] in COLOR_WORDS and not (k + 1 < n and words[k + 1] in SHAPE_NOUNS):
                    used_colors.add(k)
                    if not neg:
                        color, color_idx, end = words[k], k, k
        if color_idx is not None:
            used_colors.add(color_idx)
        # negation earlier in the same clause
        negated = any(toks[k].w in NEGATIONS and toks[k].clause == t.clause for k in range(0, start)) \
            and count is None
        if is_generic and count is None:
            continue  # "the objects are ..." says nothing checkable
        shape = SHAPE_NOUNS.get(w)
        claims.append(Claim(
            kind="count" if count is not None else "object", shape=shape, color=color,
            count=count, negated=negated, foreign=FOREIGN_NOUNS.get(w), generic=is_generic,
            start=start, end=end, sent=t.sent))

    # colours not tied to a shape ("Red.", "It is red."), ignoring the background
    bare_colors = []
    for i, t in enumerate(toks):
        if t.w in COLOR_WORDS and i not in used_colors:
            clause_words = {x.w for x in toks if x.clause == t.clause}
            if "background" in clause_words:
                continue
            if i > 0 and toks[i - 1].w == "not" or (i > 1 and toks[i - 2].w == "not"):
                continue
            bare_colors.append((t.w, i))

    # attach position phrases to object statements
    phrases = _find_phrases(toks)
    for ph in phrases:  # "not on the left": says where it is not
        ph["negated"] = any(toks[k].w in NEGATIONS and toks[k].clause == toks[ph["start"]].clause
                            for k in range(ph["start"]))
    claims.sort(key=lambda c: c.start)
    for ph in phrases:
        same = [c for c in claims if c.sent == ph["sent"]]
        before = [c for c in same if c.end < ph["start"]]
        after = [c for c in same if c.start >= ph["end"]]
        target = None
        if before:
            c = before[-1]
            between = words[c.end + 1:ph["start"]]
            if c.kind == "object" and c.position is None and not c.negated \
                    and not any(x in NEGATIONS for x in between):
                target = c
        if target is None and after and (not before or before[-1].position is not None
                                         or before[-1].kind != "object"):
            c = after[0]
            between = words[ph["end"]:c.start]
            if c.kind == "object" and c.position is None and not c.negated \
                    and not any(x in NEGATIONS for x in between) \
                    and not any(p is not ph and ph["end"] <= p["start"] < c.start for p in phrases):
                target = c
        if target is not None:
            target.position = ph["pos"]
            ph["attached"] = True
        elif not same:
            # "It is in the top left." refers to the last object of an earlier sentence
            sent_words = [x.w for x in toks if x.sent == ph["sent"]]
            prior = [c for c in claims if c.sent < ph["sent"] and c.kind == "object"
                     and not c.negated and not c.pronoun]
            if sent_words and sent_words[0] in ("it", "this", "that") and prior \
                    and not any(x in NEGATIONS for x in sent_words):
                ref = prior[-1]
                claims.append(Claim(kind="object", shape=ref.shape, color=ref.color,
                                    position=ph["pos"], foreign=ref.foreign, start=ph["start"],
                                    end=ph["end"] - 1, sent=ph["sent"], pronoun=True))
                ph["attached"] = True
    claims.sort(key=lambda c: c.start)

    numbers = [(v, i) for i, v in enumerate(_number(w) if w != "none" else 0 for w in words)
               if v is not None]
    alpha = [w for w in words if w[0].isalnum()]
    yes_no = None
    if alpha:
        if alpha[0] in YES_WORDS:
            yes_no = "yes"
        elif alpha[0] in NO_WORDS:
            yes_no = "no"
    return Parsed(toks, claims, phrases, bare_colors, numbers, yes_no)


# ---------------------------------------------------------------------------------------------
# Checking statements against the scene

def _pos_compatible(pos, cell) -> bool:
    return all(p is None or p == c for p, c in zip(pos, cell))


def grade_position(pos, truth) -> str:
    """right / partial / wrong / missing for a parsed (row, col) against the true cell."""
    if pos is None or (pos[0] is None and pos[1] is None):
        return "missing"
    said = [(p, t) for p, t in zip(pos, truth) if p is not None]
    unsaid = [t for p, t in zip(pos, truth) if p is None]
    if all(p == t for p, t in said):
        return "right" if all(t == 1 for t in unsaid) else "partial"
    return "partial" if any(p == t for p, t in said) else "wrong"


def claim_error(claim: Claim, scene: Scene, ignore: Sequence[str] = ()) -> Optional[str]:
    """None if the statement agrees with the scene, else why not. `ignore` drops the parts that
    are graded as the key answer: 'existence', 'color', 'position', 'count'."""
    if claim.kind == "count":
        if "count" in ignore:
            return None
        if claim.foreign:
            return "hallucinated" if claim.count else None
        truth = scene.count(shape=claim.shape, color=claim.color)
        return None if truth == claim.count else "miscounted"
    if claim.negated:
        if "existence" in ignore or claim.foreign:
            return None
        return "denied" if scene.find(claim.color, claim.shape) else None
    if claim.foreign:
        return None if "existence" in ignore else "hallucinated"
    color = None if "color" in ignore else claim.color
    matches = scene.find(color, claim.shape)
    if not matches:
        return None if "existence" in ignore else "hallucinated"
    if claim.position is not None and "position" not in ignore:
        if not any(_pos_compatible(claim.position, m.cell) for m in matches):
            return "misplaced"
    return None


# ---------------------------------------------------------------------------------------------
# Key answer per question kind

def _key_color(p: Parsed, scene: Scene, q: dict):
    target = q["shape"]
    truth = scene.find(shape=target)[0].color
    for idx, c in enumerate(p.claims):
        if c.shape == target and c.color and not c.negated and not c.foreign \
                and (c.kind == "object" or (c.count or 0) >= 1):
            if p.bare_colors and p.bare_colors[0][1] < c.start:
                break  # a plain colour comes first ("Red. ...")
            return ("right" if c.color == truth else "wrong"), idx, ("color",), c.color
    if p.bare_colors:
        said = p.bare_colors[0][0]
        return ("right" if said == truth else "wrong"), None, (), said
    return "missing", None, (), None


def _count_target_match(c: Claim, q: dict) -> bool:
    if c.kind != "count" or c.foreign:
        return False
    if q.get("shape"):
        return c.shape == q["shape"] and c.color is None
    if q.get("color"):
        return c.color == q["color"] and c.shape is None
    return c.shape is None and c.color is None


def _key_count(p: Parsed, scene: Scene, q: dict):
    truth = scene.count(shape=q.get("shape"), color=q.get("color"))
    for idx, c in enumerate(p.claims):
        if _count_target_match(c, q):
            if p.numbers and p.numbers[0][1] < c.start:
                break  # a plain number comes first ("Four. ...")
            return ("right" if c.count == truth else "wrong"), idx, ("count",), c.count
    said = p.numbers[0][0] if p.numbers else None
    if said is None:
        alpha = [t.w for t in p.toks if t.w[0].isalnum()]
        if alpha and alpha[0] in ("none", "no") and len(alpha) <= 2:
            said = 0
    if said is None:
        return "missing", None, (), None
    return ("right" if said == truth else "wrong"), None, (), said


def _key_position(p: Parsed, scene: Scene, q: dict):
    obj = scene.find(q["color"], q["shape"])[0]
    axis = q.get("axis")  # None ('where'), 'col' (left or right?), 'row' (top or bottom?)

    def usable(pos):
        if pos is None:
            return False
        if axis == "col":
            return pos[1] is not None
        if axis == "row":
            return pos[0] is not None
        return True

    key_idx, pos = None, None
    for idx, c in enumerate(p.claims):
        if c.kind == "object" and c.color == q["color"] and c.shape == q["shape"] \
                and not c.negated and usable(c.position):
            key_idx, pos = idx, c.position
            break
    if pos is None:
        for ph in p.phrases:
            if not ph["attached"] and not ph["negated"] and usable(ph["pos"]):
                pos = ph["pos"]
                break
    if pos is None:
        return "missing", None, (), None
    if axis == "col":
        grade = "right" if pos[1] == obj.col else "wrong"
    elif axis == "row":
        grade = "right" if pos[0] == obj.row else "wrong"
    else:
        grade = grade_position(pos, obj.cell)
    return grade, key_idx, ("position",), pos


def _key_existence(p: Parsed, scene: Scene, q: dict):
    truth = "yes" if scene.find(q["color"], q["shape"]) else "no"
    key_idx, said = None, p.yes_no
    for idx, c in enumerate(p.claims):
        if c.color == q["color"] and c.shape == q["shape"]:
            key_idx = idx
            if said is None:
                if c.kind == "count":
                    said = "yes" if c.count else "no"
                else:
                    said = "no" if c.negated else "yes"
            break
    if said is None:
        return "missing", None, (), None
    ignore = ("existence", "count") if said != truth else ()
    return ("right" if said == truth else "wrong"), key_idx, ignore, said


def _key_describe(p: Parsed, scene: Scene, q: dict):
    named = set()
    for c in p.claims:
        if c.negated or c.foreign or c.shape is None or c.color is None:
            continue
        if c.kind == "count" and not c.count:
            continue
        if scene.find(c.color, c.shape):
            named.add((c.color, c.shape))
    recall = len(named) / max(1, len(scene.objects))
    if recall >= 1:
        grade = "right"
    elif recall > 0:
        grade = "partial"
    elif p.claims:
        grade = "wrong"
    else:
        grade = "missing"
    return grade, None, (), round(recall, 3)


_KEYS = {"color": _key_color, "count": _key_count, "position": _key_position,
         "existence": _key_existence, "describe": _key_describe}


# ---------------------------------------------------------------------------------------------
# Public API

def _as_scene(scene) -> Scene:
    return scene if isinstance(scene, Scene) else Scene.from_json(scene)


def explain_answer(scene, question: dict, answer_text: str) -> Dict[str, Any]:
    """Scores plus what the scorer understood: the key answer, its grade and the false claims."""
    scene = _as_scene(scene)
    text = "" if answer_text is None else str(answer_text)
    p = parse(text)
    grade, key_idx, ignore, said = _KEYS[question["kind"]](p, scene, question)
    false_claims = []
    for idx, c in enumerate(p.claims):
        err = claim_error(c, scene, ignore if idx == key_idx else ())
        if err:
            false_claims.append(f"{err}: {c.describe()}")
    problems = coherence_problems(text, words_of(question.get("text", "")))
    coh = max(0, 4 - len(problems))
    scores = combine(grade, len(false_claims), coh, complexity_score(text),
                     verbosity_score(text, canonical_answer(scene, question)))
    return {"scores": scores, "key": grade, "said": said, "false_claims": false_claims,
            "coherence_problems": problems,
            "claims": [c.describe() for c in p.claims]}


def score_answer(scene, question: dict, answer_text: str) -> Dict[str, int]:
    """The five HelpSteer attributes (ints 0–4) of `answer_text` for `question` about `scene`."""
    return explain_answer(scene, question, answer_text)["scores"]


def is_correct(scene, question: dict, answer_text: str, strict: bool = False) -> bool:
    """Does the answer give the right answer to the question? `strict` also requires that
    nothing else it says is false (no hallucinated objects, positions or counts)."""
    e = explain_answer(scene, question, answer_text)
    return e["key"] == "right" and (not strict or not e["false_claims"])


def _get(obj, name, default=None):
    if isinstance(obj, dict):
        return obj.get(name, default)
    return getattr(obj, name, default)


class DemoScorer:
    """Annotator for demo records: the ground truth stands in for a human or Gemini labeller.

    `annotate(record)` returns one score dict per response of the record, in order. The record
    needs `meta.question` and, for visual questions, `meta.scene` (as written by
    `generate.make_records`); text-only records (`meta.task == 'text'`) are scored by
    `text_tasks.score_text_answer`.
    """

    name = "demo-ground-truth"

    def annotate(self, record, texts: Optional[Sequence[str]] = None) -> List[Dict[str, int]]:
        meta = _get(record, "meta") or {}
        question = meta.get("question")
        if question is None:
            raise ValueError(f"record {_get(record, 'id')!r} has no meta.question: not a demo record")
        if texts is None:
            texts = [_get(r, "text", "") for r in (_get(record, "responses") or [])]
        if meta.get("task") == "text" or meta.get("scene") is None:
            return [score_text_answer(question, t) for t in texts]
        scene = Scene.from_json(meta["scene"])
        return [score_answer(scene, question, t) for t in texts]

    def __call__(self, record, texts=None):
        return self.annotate(record, texts)
