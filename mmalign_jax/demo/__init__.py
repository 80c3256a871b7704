"""The embedded demo task: coloured shapes, questions with right answers, graded candidate
answers, a ground-truth scorer on the five HelpSteer attributes, a text-only subset, and a
small tokenizer — so the whole pipeline runs offline and its numbers mean something.

    from mmalign_jax import demo
    recs = demo.make_records(8, seed=0)                  # prompts + 5 scored candidates each
    demo.score_answer(scene, question, "The circle is red.")
    paths = demo.write_dataset("/tmp/demo", n_train=2048, n_eval=128, seed=0)
    tok = demo.load_tokenizer()

Names are loaded on first use, so `python -m mmalign_jax.demo.generate` runs cleanly.
"""
import importlib

_EXPORTS = {
    "annotator": ("DemoAnnotator",),
    "answers": ("CANDIDATE_KINDS",),
    "generate": ("make_record", "make_records", "make_sft_record", "make_sft_records",
                 "record_image", "write_dataset"),
    "questions": ("QUESTION_KINDS", "canonical_answer", "make_candidates",
                  "make_question", "truth"),
    "scorer": ("ATTRIBUTES", "DemoScorer", "explain_answer", "is_correct", "score_answer"),
    "shapes": ("COLORS", "SHAPES", "Scene", "SceneObject", "draw_scene", "random_scene"),
    "text_tasks": ("TASK_KINDS", "canonical_text_answer", "explain_text_answer", "make_task",
                   "make_text_candidates", "score_text_answer"),
    "tokenizer": ("IMAGE_TOKEN_ID", "SPECIAL_TOKENS", "load_tokenizer", "tokenizer_path"),
}
_WHERE = {name: mod for mod, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name):
    if name in _WHERE:
        value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
