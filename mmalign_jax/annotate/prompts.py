"""Our labelling guide for AI annotators, the request built from a record, and the JSON
schema of the answer.

Why our own guide: the study had Gemini follow "a labelling guide written for human
labellers" (HelpSteer's) but did not publish its prompt. This one follows HelpSteer's five
attributes and 0–4 scale, adapted to questions about images. It is versioned:
`GUIDE_VERSION` goes into every output row and into the key that decides what is already
done, so changing a word of the guide means bumping the version — and a rerun then
re-annotates everything instead of silently mixing two guides in one file.

As in the study, the annotator sees the image(s), the conversation and *all* candidate
answers of a prompt at once (so its scores are comparable across candidates), writes its
reasoning first, then scores each candidate.
"""
from __future__ import annotations

from typing import Sequence

from ..data.records import ATTRIBUTES, IMAGE_TOKEN, MAX_SCORE, MIN_SCORE, Record

GUIDE_VERSION = "mm-helpsteer-v1"

GUIDE = f"""\
You are an expert annotator rating answers of AI assistants to questions about images.
You will see one or more images, a conversation that ends with a user question, and
several candidate answers to that question. Judge every answer against what the images
actually show and what the user asked. Rate each answer on five attributes, each an
integer from {MIN_SCORE} to {MAX_SCORE}. Rate each attribute on its own: a long answer can
be correct, a short one can be unhelpful.

Helpfulness — how well the answer serves the user's request overall.
  4: fully answers the question; nothing important missing; a user would be satisfied.
  3: answers the question with minor gaps or minor irrelevant content.
  2: partly answers it; important parts missing, vague or off-topic.
  1: barely addresses the question.
  0: does not answer it, refuses without reason, or is unusable.
Correctness — every statement is true of the images and of the world; no hallucination.
  4: everything stated is correct, including every object, colour, count, position and text
     claimed to be in the image.
  3: correct on the key point, one small inaccuracy elsewhere.
  2: the key point is partly right, or several inaccuracies.
  1: the key point is wrong, or mostly invented content.
  0: entirely wrong or entirely invented (describes things that are not in the image).
Coherence — clear, consistent and well formed, whatever its content.
  4: perfectly clear and logically consistent; fluent.
  3: mostly clear; small awkwardness or a minor inconsistency.
  2: hard to follow in places; repetition or contradiction.
  1: largely confusing, repetitive or self-contradictory.
  0: incoherent: garbled, looping, cut off mid-sentence.
Complexity — the expertise needed to write the answer (not whether it is good).
  4: deep domain expertise.   3: specialised knowledge.   2: a well-educated adult.
  1: basic language competence.   0: a single word or phrase anyone could write.
Verbosity — how much detail the answer gives, relative to what the question asks for
(not whether that is good).
  4: far more than asked: long elaboration, digressions.   3: more than asked.
  2: about what the question asks for.   1: terse: less detail than asked.
  0: a bare minimum (one word or number).

Procedure: first look at the images and work out the right answer yourself. Then, in
"reasoning", compare the candidate answers one by one: which claims are true of the image,
which are not, how clear and how long each is. Only then give the scores, one entry per
candidate, using the candidate numbers shown. Score candidates independently of their
order. Reply with the JSON object only."""

_REASK = ("Your previous reply could not be used: {problem}. Reply again with the complete "
          "JSON object: a \"reasoning\" string and a \"ratings\" list with exactly one entry "
          "for each candidate 1..{n}, each with the five integer scores from "
          f"{MIN_SCORE} to {MAX_SCORE}.")


def response_schema(n_candidates: int) -> dict:
    """JSON schema of the answer: reasoning first (so the model thinks before scoring),
    then one rating object per candidate."""
    score = {"type": "integer", "minimum": MIN_SCORE, "maximum": MAX_SCORE}
    rating = {"type": "object",
              "properties": {"candidate": {"type": "integer", "minimum": 1,
                                           "maximum": n_candidates},
                             **{a: dict(score) for a in ATTRIBUTES}},
              "required": ["candidate", *ATTRIBUTES]}
    return {"type": "object",
            "properties": {"reasoning": {"type": "string"},
                           "ratings": {"type": "array", "items": rating,
                                       "minItems": n_candidates, "maxItems": n_candidates}},
            "required": ["reasoning", "ratings"]}


def render_conversation(record: Record) -> str:
    """The conversation as plain text, each `<image>` placeholder named `[image k]` so the
    annotator can tell which attached image a turn refers to."""
    lines, k = [], 0
    for turn in record.conversation:
        content = turn["content"]
        while IMAGE_TOKEN in content:
            k += 1
            content = content.replace(IMAGE_TOKEN, f"[image {k}]", 1)
        lines.append(f"{turn['role'].upper()}: {content.strip()}")
    return "\n\n".join(lines)


def build_prompt(record: Record, texts: Sequence[str] | None = None) -> str:
    """The text part of the request (images are attached before it as separate parts)."""
    texts = [r.text for r in record.responses] if texts is None else list(texts)
    n_img = len(record.images)
    head = (f"{n_img} image{'s are' if n_img != 1 else ' is'} attached above, in order "
            f"([image 1]{f' … [image {n_img}]' if n_img > 1 else ''}).\n\n" if n_img else
            "No image is attached to this conversation.\n\n")
    answers = "\n\n".join(f'<candidate number="{i}">\n{t}\n</candidate>'
                          for i, t in enumerate(texts, 1))
    return (f"{head}## Conversation\n\n{render_conversation(record)}\n\n"
            f"## Candidate answers to the last user turn ({len(texts)})\n\n{answers}\n\n"
            f"Rate each of the {len(texts)} candidates as the guide says.")


def reask_note(problem: str, n_candidates: int) -> str:
    """Appended to the request when the previous answer was unusable."""
    return _REASK.format(problem=problem, n=n_candidates)
