"""Questions about a scene, their ground-truth answers, and candidate answers of graded quality.

One question per example, of five kinds (chosen by the seeded rng):
  color      "What color is the circle?"                    (the shape occurs once)
  count      "How many stars are there?" / "How many red objects ..." / "How many objects ..."
  position   "Where is the red circle?" / "Is the red circle on the left or the right?" /
             "Is the red circle at the top or the bottom?"
  existence  "Is there a blue star in the image?"           (POPE-like: half yes, half no)
  describe   "Describe the image."

A question is a JSON-able dict: {"kind", "variant", "text", "shape", "color", "axis"}
(unused fields are None). Candidates are dicts {"text", "kind"} with kind in
CANDIDATE_KINDS (`answers.py`); wording is drawn from several templates per kind.
"""
from __future__ import annotations

import random
from typing import Dict, List, Optional, Sequence

from .answers import CANDIDATE_KINDS, coherence_score, verbosity_score
from .shapes import (BACKGROUND_NAME, COLOR_NAMES, GRID, PLURALS, POSITION_PHRASES, SHAPES,
                     Scene, SceneObject)

QUESTION_KINDS = ("color", "count", "position", "existence", "describe")

NUMBER_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
FOREIGN_THINGS = ("heart", "diamond", "tree", "dog", "house", "flower", "cloud", "ball")


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _num(n: int, rng: Optional[random.Random] = None) -> str:
    if rng is not None and rng.random() < 0.3:
        return str(n)
    return NUMBER_NAMES[n] if n < len(NUMBER_NAMES) else str(n)


def _noun(shape: Optional[str], n: int) -> str:
    base = shape or "object"
    return base if n == 1 else PLURALS.get(base, base + "s")


def _phrase(o: SceneObject, rng: Optional[random.Random] = None) -> str:
    options = POSITION_PHRASES[o.cell]
    return options[0] if rng is None else rng.choice(options)


def _phrase_of_cell(cell, rng: Optional[random.Random] = None) -> str:
    options = POSITION_PHRASES[cell]
    return options[0] if rng is None else rng.choice(options)


def _join(items: Sequence[str]) -> str:
    items = list(items)
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


# ---------------------------------------------------------------------------------------------
# Questions

def _q(kind, variant, text, shape=None, color=None, axis=None) -> dict:
    return {"kind": kind, "variant": variant, "text": text, "shape": shape, "color": color,
            "axis": axis}


def feasible_kinds(scene: Scene) -> List[str]:
    kinds = list(QUESTION_KINDS)
    if not any(scene.count(shape=s) == 1 for s in SHAPES):
        kinds.remove("color")
    return kinds


def make_question(scene: Scene, rng: random.Random, kind: Optional[str] = None) -> dict:
    """A question about `scene` of `kind` (default: a seeded choice among the feasible kinds)."""
    if kind is None:
        kind = rng.choice(QUESTION_KINDS)
        if kind not in feasible_kinds(scene):
            kind = rng.choice(feasible_kinds(scene))
    objs = scene.sorted_objects()
    if kind == "color":
        shape = rng.choice([s for s in SHAPES if scene.count(shape=s) == 1])
        text = rng.choice(["What color is the {s}?", "What is the color of the {s}?",
                           "Which color does the {s} have?", "What color is the {s} in the image?"])
        return _q("color", "shape", text.format(s=shape), shape=shape)
    if kind == "count":
        variant = rng.choice(["shape", "shape", "color", "all"])
        if variant == "shape":
            present = sorted({o.shape for o in objs})
            shape = rng.choice(present) if rng.random() < 0.8 else rng.choice(SHAPES)
            text = rng.choice(["How many {p} are there?", "How many {p} are in the image?",
                               "How many {p} can you see?", "Count the {p} in the image."])
            return _q("count", "shape", text.format(p=PLURALS[shape]), shape=shape)
        if variant == "color":
            present = sorted({o.color for o in objs})
            color = rng.choice(present) if rng.random() < 0.8 else rng.choice(COLOR_NAMES)
            text = rng.choice(["How many {c} objects are there?", "How many {c} shapes are in the image?",
                               "How many objects are {c}?"])
            return _q("count", "color", text.format(c=color), color=color)
        text = rng.choice(["How many objects are there?", "How many shapes are in the image?",
                           "How many objects can you see in the picture?"])
        return _q("count", "all", text)
    if kind == "position":
        o = rng.choice(objs)
        name = o.name
        choices = ["where"]
        if o.col != 1:
            choices.append("col")
        if o.row != 1:
            choices.append("row")
        variant = rng.choice(choices)
        if variant == "where":
            text = rng.choice(["Where is the {n}?", "Where is the {n} in the image?",
                               "In which part of the image is the {n}?"]).format(n=name)
            return _q("position", "where", text, shape=o.shape, color=o.color)
        if variant == "col":
            text = rng.choice(["Is the {n} on the left or the right?",
                               "Is the {n} on the right or on the left?"]).format(n=name)
            return _q("position", "left_right", text, shape=o.shape, color=o.color, axis="col")
        text = rng.choice(["Is the {n} at the top or the bottom?",
                           "Is the {n} at the bottom or at the top?"]).format(n=name)
        return _q("position", "top_bottom", text, shape=o.shape, color=o.color, axis="row")
    if kind == "existence":
        if rng.random() < 0.5:
            o = rng.choice(objs)
            color, shape = o.color, o.shape
        else:
            absent = [(c, s) for c in COLOR_NAMES for s in SHAPES if not scene.find(c, s)]
            # POPE-like: often a near miss (a colour or a shape that is in the scene)
            near = [(c, s) for c, s in absent
                    if any(o.color == c or o.shape == s for o in objs)]
            color, shape = rng.choice(near if near and rng.random() < 0.7 else absent)
        text = rng.choice(["Is there {a} in the image?", "Does the image contain {a}?",
                           "Can you see {a} in the picture?", "Is there {a}?"])
        return _q("existence", "object", text.format(a=_a(f"{color} {shape}")), shape=shape,
                  color=color)
    if kind == "describe":
        text = rng.choice(["Describe the image.", "What do you see in the image?",
                           "Describe the shapes in this picture.", "What is in the picture?"])
        return _q("describe", "all", text)
    raise ValueError(f"unknown question kind {kind!r}; use one of {QUESTION_KINDS}")


# ---------------------------------------------------------------------------------------------
# Ground truth

def truth(scene: Scene, q: dict):
    """The answer as a value: a colour, a count, a (row, col), 'yes'/'no', or the object list."""
    k = q["kind"]
    if k == "color":
        return scene.find(shape=q["shape"])[0].color
    if k == "count":
        return scene.count(shape=q.get("shape"), color=q.get("color"))
    if k == "position":
        o = scene.find(q["color"], q["shape"])[0]
        if q.get("axis") == "col":
            return "left" if o.col == 0 else "right"
        if q.get("axis") == "row":
            return "top" if o.row == 0 else "bottom"
        return o.position
    if k == "existence":
        return "yes" if scene.find(q["color"], q["shape"]) else "no"
    if k == "describe":
        return [o.name for o in scene.sorted_objects()]
    raise ValueError(k)


def _count_sentence(n: int, shape: Optional[str], color: Optional[str], rng=None) -> str:
    noun = _noun(shape, n)
    if color:
        noun = f"{color} {noun}"
    if n == 0:
        return f"There are no {noun}."
    if n == 1:
        return f"There is {_num(1, rng)} {noun}."
    return f"There are {_num(n, rng)} {noun}."


def _describe_list(objs: Sequence[SceneObject], rng=None, positions: bool = True) -> str:
    parts = [_a(o.name) + (" " + _phrase(o, rng) if positions else "") for o in objs]
    return _join(parts)


def canonical_answer(scene: Scene, q: dict) -> str:
    """The short reference answer (stored as the record's ground truth; verbosity is measured
    against its length)."""
    scene = scene if isinstance(scene, Scene) else Scene.from_json(scene)
    k = q["kind"]
    if k == "color":
        return f"The {q['shape']} is {truth(scene, q)}."
    if k == "count":
        return _count_sentence(truth(scene, q), q.get("shape"), q.get("color"))
    if k == "position":
        o = scene.find(q["color"], q["shape"])[0]
        if q.get("axis") == "col":
            return f"The {o.name} is on the {truth(scene, q)}."
        if q.get("axis") == "row":
            return f"The {o.name} is at the {truth(scene, q)}."
        return f"The {o.name} is {_phrase(o)}."
    if k == "existence":
        name = f"{q['color']} {q['shape']}"
        return f"Yes, there is {_a(name)}." if truth(scene, q) == "yes" else f"No, there is no {name}."
    if k == "describe":
        return f"There is {_describe_list(scene.sorted_objects())}."
    raise ValueError(k)


# ---------------------------------------------------------------------------------------------
# Candidate answers

def _general_facts(scene: Scene, rng: random.Random) -> List[str]:
    """True sentences about the whole scene: how many objects, the background."""
    n = len(scene.objects)
    noun = _noun(None, n) if rng.random() < 0.5 else ("shape" if n == 1 else "shapes")
    facts = [rng.choice(["The image contains {n} {o} in total.",
                         "In total, the picture shows {n} {o}."]).format(n=_num(n, rng), o=noun),
             rng.choice([f"The background is {BACKGROUND_NAME}.",
                         f"All of the shapes are drawn on a {BACKGROUND_NAME} background.",
                         f"The shapes sit on a plain {BACKGROUND_NAME} background."])]
    if n == 1:
        facts.append("It is the only object in the image.")
    return facts


def _facts(scene: Scene, rng: random.Random, exclude: Sequence[SceneObject] = ()) -> List[str]:
    """True extra sentences about the scene (the padding of verbose answers)."""
    facts = []
    templates = ["There is also {a} {p}.", "The image also shows {a} {p}.", "{A} can be seen {p}.",
                 "There is {a} {p} as well."]
    rng.shuffle(templates)  # each object gets its own wording
    for i, o in enumerate([o for o in scene.sorted_objects() if o not in exclude]):
        facts.append(templates[i % len(templates)].format(
            a=_a(o.name), A=_cap(_a(o.name)), p=_phrase(o, rng)))
    return facts + _general_facts(scene, rng)


def _verbose(core: str, scene: Scene, rng: random.Random, target=None, exclude=(), k=(2, 3)) -> str:
    """`core` padded with 2-3 (`k`) true sentences; with a `target`, often first a sentence
    saying where it is ("It is located in the top left.")."""
    exclude = list(exclude) + ([target] if target is not None else [])
    facts = _facts(scene, rng, exclude=exclude)
    chosen = rng.sample(facts, min(len(facts), rng.randint(*k)))
    if target is not None and rng.random() < 0.7:
        lead = rng.choice(["It is located {p}.", "It sits {p}."]).format(p=_phrase(target, rng))
        chosen = [lead] + chosen
    return " ".join([core] + chosen)


def _absent_object(scene: Scene, rng: random.Random, avoid_shapes=(), avoid_colors=()):
    choices = [(c, s) for c in COLOR_NAMES for s in SHAPES
               if not scene.find(c, s) and s not in avoid_shapes and c not in avoid_colors]
    return rng.choice(choices)


def _hallucination(scene: Scene, rng: random.Random, avoid_shapes=(), avoid_colors=()) -> str:
    free = [cell for cell in POSITION_PHRASES if cell not in {o.cell for o in scene.objects}]
    p = _phrase_of_cell(rng.choice(free), rng) if free else "next to it"
    if rng.random() < 0.25:
        thing = rng.choice(FOREIGN_THINGS)
        return rng.choice(["There is also a small {t} {p}.", "I can also see {a} {p}."]).format(
            t=thing, a=_a(thing), p=p)
    c, s = _absent_object(scene, rng, avoid_shapes, avoid_colors)
    name = f"{c} {s}"
    return rng.choice(["There is also {a} {p}.", "Next to it, there is {a}.",
                       "{A} can be seen {p}.", "The image also shows {a} {p}."]).format(
        a=_a(name), A=_cap(_a(name)), p=p)


def _concise(scene: Scene, q: dict, rng: random.Random, value=None) -> str:
    """A short answer stating `value` (default: the truth)."""
    k = q["kind"]
    v = truth(scene, q) if value is None else value
    if k == "color":
        s = q["shape"]
        return rng.choice([f"{_cap(v)}.", f"It is {v}.", f"The {s} is {v}.", f"The {s} is colored {v}.",
                           f"It's {v}.", f"The color of the {s} is {v}.", f"{_cap(_a(v + ' ' + s))}."])
    if k == "count":
        noun_sing = q.get("shape") or "object"
        options = [f"{_cap(_num(v))}.", _count_sentence(v, q.get("shape"), q.get("color"), rng)]
        if v == 0:
            options += ["None.", f"There are no {_noun(noun_sing, 0)}." if not q.get("color")
                        else f"No object is {q['color']}."]
        else:
            options += [f"I count {_num(v, rng)}.", f"There {'is' if v == 1 else 'are'} {_num(v, rng)}."]
        return rng.choice(options)
    if k == "position":
        name = f"{q['color']} {q['shape']}"
        if q.get("axis") == "col":
            return rng.choice([f"{_cap(v)}.", f"On the {v}.", f"It is on the {v}.",
                               f"The {name} is on the {v}.", f"It is on the {v} side."])
        if q.get("axis") == "row":
            return rng.choice([f"{_cap(v)}.", f"At the {v}.", f"It is at the {v}.",
                               f"The {name} is at the {v}."])
        cell = v if isinstance(v, tuple) else scene.find(q["color"], q["shape"])[0].cell
        p = _phrase_of_cell(cell, rng)
        return rng.choice([f"{_cap(p)}.", f"It is {p}.", f"The {name} is {p}.",
                           f"You can find it {p}."])
    if k == "existence":
        name = f"{q['color']} {q['shape']}"
        if v == "yes":
            return rng.choice(["Yes.", "Yes, there is.", f"Yes, there is {_a(name)}.",
                               f"Yes, the image contains {_a(name)}.", f"Yes, I can see {_a(name)}."])
        return rng.choice(["No.", "No, there is not.", f"No, there is no {name}.",
                           f"No, the image does not contain {_a(name)}.", f"No, I do not see {_a(name)}."])
    if k == "describe":
        objs = scene.sorted_objects() if value is None else value
        positions = rng.random() < 0.7
        lst = _describe_list(objs, rng, positions)
        return rng.choice([f"There is {lst}.", f"The image shows {lst}.", f"I see {lst}.",
                           f"{_cap(lst)}."])
    raise ValueError(k)


def _verbose_answer(scene: Scene, q: dict, rng: random.Random) -> str:
    k = q["kind"]
    v = truth(scene, q)
    if k == "color":
        target = scene.find(shape=q["shape"])[0]
        core = rng.choice([f"The {q['shape']} in the image is {v}.", f"The {q['shape']} is {v}.",
                           f"The {q['shape']} is colored {v}."])
        return _verbose(core, scene, rng, target=target)
    if k == "count":
        matching = scene.find(q.get("color"), q.get("shape"))
        core = _count_sentence(v, q.get("shape"), q.get("color"), rng)
        if matching:
            listing = _describe_list(matching, rng)
            core = core[:-1] + rng.choice([": ", " in the image: "]) + listing + "."
            return _verbose(core, scene, rng, exclude=matching, k=(1, 2))
        return _verbose(core, scene, rng, k=(2, 3))
    if k == "position":
        target = scene.find(q["color"], q["shape"])[0]
        core = _concise(scene, q, rng)
        if not core.lower().startswith("the "):
            core = f"The {target.name} is " + (
                f"on the {v}." if q.get("axis") == "col" else
                f"at the {v}." if q.get("axis") == "row" else f"{_phrase(target, rng)}.")
        if (q.get("axis") == "col" and target.row != 1) or (q.get("axis") == "row" and target.col != 1):
            core += f" More precisely, it is {_phrase(target, rng)}."
        return _verbose(core, scene, rng, exclude=[target], k=(1, 2))
    if k == "existence":
        name = f"{q['color']} {q['shape']}"
        if v == "yes":
            target = scene.find(q["color"], q["shape"])[0]
            core = rng.choice([f"Yes, there is {_a(name)} in the image.",
                               f"Yes, the image contains {_a(name)}."])
            return _verbose(core, scene, rng, target=target)
        core = rng.choice([f"No, there is no {name} in the image.",
                           f"No, the image does not contain {_a(name)}."])
        return _verbose(core, scene, rng, k=(2, 3))
    if k == "describe":
        objs = scene.sorted_objects()
        n = len(objs)
        head = rng.choice(["The image shows {n} {o} on a {b} background.",
                           "There {be} {n} {o} in the picture."]).format(
            n=_num(n, rng), o=_noun(None, n), b=BACKGROUND_NAME, be="is" if n == 1 else "are")
        body = f"There is {_describe_list(objs, rng)}."
        tail = rng.choice(["Each shape sits in its own part of the grid.",
                           "No two shapes overlap.", "Nothing else is in the image."])
        return f"{head} {body} {tail}"
    raise ValueError(k)


def _wrong_value(scene: Scene, q: dict, rng: random.Random):
    k = q["kind"]
    v = truth(scene, q)
    if k == "color":
        present = [o.color for o in scene.objects if o.color != v]
        return rng.choice(present) if present and rng.random() < 0.5 else \
            rng.choice([c for c in COLOR_NAMES if c != v])
    if k == "count":
        options = [n for n in (v - 1, v + 1, v + 2) if n >= 0]
        return rng.choice(options)
    if k == "position":
        if q.get("axis") == "col":
            return "right" if v == "left" else "left"
        if q.get("axis") == "row":
            return "bottom" if v == "top" else "top"
        o = scene.find(q["color"], q["shape"])[0]
        cells = [(r, c) for r in range(GRID) for c in range(GRID) if r != o.row and c != o.col]
        return rng.choice(cells)
    if k == "existence":
        return "no" if v == "yes" else "yes"
    raise ValueError(k)


def _wrong_answer(scene: Scene, q: dict, rng: random.Random) -> str:
    k = q["kind"]
    if k == "describe":
        objs = list(scene.sorted_objects())
        i = rng.randrange(len(objs))
        o = objs[i]
        mode = rng.choice(["color", "shape", "position"])
        if mode == "color":
            c = rng.choice([c for c in COLOR_NAMES if not scene.find(c, o.shape)])
            objs[i] = SceneObject(o.shape, c, o.row, o.col)
        elif mode == "shape":
            s = rng.choice([s for s in SHAPES if not scene.find(o.color, s)])
            objs[i] = SceneObject(s, o.color, o.row, o.col)
        else:
            cells = [(r, c) for r in range(GRID) for c in range(GRID) if r != o.row and c != o.col]
            r, c = rng.choice(cells)
            objs[i] = SceneObject(o.shape, o.color, r, c)
        lst = _describe_list(objs, rng, positions=(mode == "position") or rng.random() < 0.5)
        return rng.choice([f"There is {lst}.", f"The image shows {lst}.", f"I see {lst}."])
    if k == "existence":
        name = f"{q['color']} {q['shape']}"
        if truth(scene, q) == "yes":
            return rng.choice(["No.", f"No, there is no {name}.", f"No, the image does not contain {_a(name)}."])
        free = [cell for cell in POSITION_PHRASES if cell not in {o.cell for o in scene.objects}]
        tail = f" {_phrase_of_cell(rng.choice(free), rng)}" if free and rng.random() < 0.5 else ""
        return rng.choice(["Yes.", f"Yes, there is {_a(name)}{tail}.", f"Yes, I can see {_a(name)}{tail}."])
    ans = _concise(scene, q, rng, value=_wrong_value(scene, q, rng))
    if rng.random() < 0.4:  # sometimes padded with a true sentence, so length is no tell
        ans += " " + rng.choice(_general_facts(scene, rng))
    return ans


def _hallucinated_answer(scene: Scene, q: dict, rng: random.Random) -> str:
    k = q["kind"]
    core = _concise(scene, q, rng) if rng.random() < 0.5 else _verbose_answer(scene, q, rng)
    avoid_s = [q["shape"]] if q.get("shape") else []
    avoid_c = [q["color"]] if q.get("color") else []
    if k == "describe" or (k == "count" and not q.get("shape") and not q.get("color")):
        return core + " " + _foreign_sentence(scene, rng)
    return core + " " + _hallucination(scene, rng, avoid_s, avoid_c)


def _foreign_sentence(scene: Scene, rng: random.Random) -> str:
    """A sentence about something not in the scene: an absent shape or a non-shape thing."""
    free = [cell for cell in POSITION_PHRASES if cell not in {o.cell for o in scene.objects}]
    p = _phrase_of_cell(rng.choice(free), rng) if free else "next to the shapes"
    thing = rng.choice(FOREIGN_THINGS)
    if rng.random() < 0.5:
        c, s = _absent_object(scene, rng)
        return rng.choice(["There is also {a} {p}.", "{A} can be seen {p}."]).format(
            a=_a(f"{c} {s}"), A=_cap(_a(f"{c} {s}")), p=p)
    return rng.choice(["There is also a small {t} {p}.", "I can also see {a} {p}."]).format(
        t=thing, a=_a(thing), p=p)


_CUT_WORDS = {"the", "a", "an", "in", "on", "at", "of", "and", "to", "with"}


def _incoherent_answer(scene: Scene, q: dict, rng: random.Random) -> str:
    source = _verbose_answer(scene, q, rng)
    words = source.replace(".", " .").replace(",", " ,").replace(":", " :").split()
    plain = [w for w in words if w not in (".", ",", ":")]
    for _ in range(20):
        mode = rng.choice(["salad", "loop", "truncated", "stutter"])
        if mode == "salad":
            ws = [w.lower() for w in plain]
            rng.shuffle(ws)
            text = " ".join(ws) + (" ." if rng.random() < 0.3 else "")
            text = text.replace(" .", ".")
        elif mode == "loop":
            n = rng.randint(2, 4)
            piece = " ".join(plain[:n])
            text = " ".join([piece] * rng.randint(3, 5))
            text = text[:1].upper() + text[1:]
        elif mode == "truncated":
            cuts = [i for i, w in enumerate(words) if w.lower() in _CUT_WORDS and i >= 3]
            if not cuts:
                continue
            i = rng.choice(cuts)
            text = " ".join(words[:i + 1]).replace(" .", ".").replace(" ,", ",").replace(" :", ":")
        else:
            out = []
            for w in plain:
                out.append(w)
                if rng.random() < 0.5:
                    out.append(w.lower())
            text = " ".join(out) + "."
        if coherence_score(text, q.get("text", "").split()) <= 2:
            return text
    word = plain[-1].lower()
    return " ".join([word] * 6)


def make_candidates(scene: Scene, q: dict, rng: random.Random,
                    kinds: Sequence[str] = CANDIDATE_KINDS) -> List[Dict[str, str]]:
    """One candidate answer per kind, in the order of `kinds`."""
    out = []
    concise = None
    for kind in kinds:
        if kind == "correct_concise":
            concise = text = _concise(scene, q, rng)
        elif kind == "correct_verbose":
            text = _verbose_answer(scene, q, rng)
            if concise is not None:
                ref = canonical_answer(scene, q)
                tries = 0
                while verbosity_score(text, ref) <= verbosity_score(concise, ref) and tries < 5:
                    add = [f for f in _facts(scene, rng) if f not in text]
                    if not add:
                        break
                    text += " " + rng.choice(add)
                    tries += 1
        elif kind == "wrong_attribute":
            text = _wrong_answer(scene, q, rng)
        elif kind == "hallucinated":
            text = _hallucinated_answer(scene, q, rng)
        elif kind == "incoherent":
            text = _incoherent_answer(scene, q, rng)
        else:
            raise ValueError(f"unknown candidate kind {kind!r}; use {CANDIDATE_KINDS}")
        out.append({"text": text, "kind": kind})
    return out
