"""The official judge prompts and answer-prompt suffixes of each benchmark, verbatim.

Each text is copied character for character from the benchmark's own repository (named
next to it), because a judge's scores depend on its exact prompt. Only the texts are
taken over; the code that uses them is ours.
"""
from __future__ import annotations

# ----------------------------------------------------------------------------- MT-Bench
# lm-sys/FastChat, fastchat/llm_judge/data/judge_prompts.jsonl: the four single-answer
# grading prompts (`gen_judgment.py --mode single`). The judge is called with
# `system_prompt` as the system message and `prompt_template` filled in as the user
# message (temperature 0, max_tokens 2048; FastChat's `run_judge_single`).

_RATE = ('After providing your explanation, you must rate the response on a scale of 1 to 10 '
         'by strictly following this format: "[[rating]]", for example: "Rating: [[5]]".')

MT_BENCH_JUDGE_PROMPTS = {
    "single-v1": {
        "system_prompt": "You are a helpful assistant.",
        "prompt_template": (
            "[Instruction]\nPlease act as an impartial judge and evaluate the quality of the "
            "response provided by an AI assistant to the user question displayed below. Your "
            "evaluation should consider factors such as the helpfulness, relevance, accuracy, "
            "depth, creativity, and level of detail of the response. Begin your evaluation by "
            "providing a short explanation. Be as objective as possible. " + _RATE +
            "\n\n[Question]\n{question}\n\n[The Start of Assistant's Answer]\n{answer}\n"
            "[The End of Assistant's Answer]"),
        "output_format": "[[rating]]",
    },
    "single-math-v1": {
        "system_prompt": "You are a helpful assistant.",
        "prompt_template": (
            "[Instruction]\nPlease act as an impartial judge and evaluate the quality of the "
            "response provided by an AI assistant to the user question displayed below. Your "
            "evaluation should consider correctness and helpfulness. You will be given a "
            "reference answer and the assistant's answer. Begin your evaluation by comparing "
            "the assistant's answer with the reference answer. Identify and correct any "
            "mistakes. Be as objective as possible. " + _RATE +
            "\n\n[Question]\n{question}\n\n[The Start of Reference Answer]\n{ref_answer_1}\n"
            "[The End of Reference Answer]\n\n[The Start of Assistant's Answer]\n{answer}\n"
            "[The End of Assistant's Answer]"),
        "output_format": "[[rating]]",
    },
    "single-v1-multi-turn": {
        "system_prompt": (
            "Please act as an impartial judge and evaluate the quality of the response provided "
            "by an AI assistant to the user question displayed below. Your evaluation should "
            "consider factors such as the helpfulness, relevance, accuracy, depth, creativity, "
            "and level of detail of the response. You evaluation should focus on the "
            "assistant's answer to the second user question. Begin your evaluation by providing "
            "a short explanation. Be as objective as possible. " + _RATE + "\n\n"),
        "prompt_template": (
            "<|The Start of Assistant A's Conversation with User|>\n\n### User:\n{question_1}"
            "\n\n### Assistant A:\n{answer_1}\n\n### User:\n{question_2}\n\n### Assistant A:\n"
            "{answer_2}\n\n<|The End of Assistant A's Conversation with User|>"),
        "output_format": "[[rating]]",
    },
    "single-math-v1-multi-turn": {
        "system_prompt": (
            "Please act as an impartial judge and evaluate the quality of the response provided "
            "by an AI assistant to the user question. Your evaluation should consider "
            "correctness and helpfulness. You will be given a reference answer and the "
            "assistant's answer. You evaluation should focus on the assistant's answer to the "
            "second question. Begin your evaluation by comparing the assistant's answer with "
            "the reference answer. Identify and correct any mistakes. Be as objective as "
            "possible. " + _RATE + "\n\n"),
        "prompt_template": (
            "<|The Start of Reference Answer|>\n\n### User:\n{question_1}\n\n### Reference "
            "answer:\n{ref_answer_1}\n\n### User:\n{question_2}\n\n### Reference answer:\n"
            "{ref_answer_2}\n\n<|The End of Reference Answer|>\n\n\n<|The Start of Assistant A's "
            "Conversation with User|>\n\n### User:\n{question_1}\n\n### Assistant A:\n{answer_1}"
            "\n\n### User:\n{question_2}\n\n### Assistant A:\n{answer_2}\n\n<|The End of "
            "Assistant A's Conversation with User|>"),
        "output_format": "[[rating]]",
    },
}

# FastChat `common.NEED_REF_CATS` (MT-Bench's own categories among them): graded with the
# reference-answer prompts.
MT_BENCH_NEED_REF_CATS = ("math", "reasoning", "coding", "arena-hard-200")
MT_BENCH_JUDGE_TEMPERATURE = 0.0
MT_BENCH_JUDGE_MAX_TOKENS = 2048

# --------------------------------------------------------------------------------- MM-Vet
# yuweihao/MM-Vet, mm-vet_evaluator.py: the few-shot grader prompt. The user message is
# `MM_VET_GRADER_PROMPT + "\n" + " | ".join([question, ground truth with " <AND> " /
# " <OR> " spaced, prediction, ""])`; when the reply is not a number in [0, 1] the grader
# is asked again with `MM_VET_RETRY_SUFFIX` appended (at the current temperature, which
# then rises by 0.5), 5 parsed tries in all, after which the sample scores 0.0
# (temperature 0, max_tokens 3).

MM_VET_GRADER_PROMPT = """Compare the ground truth and prediction from AI models, to give a correctness score for the prediction. <AND> in the ground truth means it is totally right only when all elements in the ground truth are present in the prediction, and <OR> means it is totally right when any one element in the ground truth is present in the prediction. The correctness score is 0.0 (totally wrong), 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, or 1.0 (totally right). Just complete the last space of the correctness score.

Question | Ground truth | Prediction | Correctness
--- | --- | --- | ---
What is x in the equation? | -1 <AND> -5 | x = 3 | 0.0
What is x in the equation? | -1 <AND> -5 | x = -1 | 0.5
What is x in the equation? | -1 <AND> -5 | x = -5 | 0.5
What is x in the equation? | -1 <AND> -5 | x = -5 or 5 | 0.5
What is x in the equation? | -1 <AND> -5 | x = -1 or x = -5 | 1.0
Can you explain this meme? | This meme is poking fun at the fact that the names of the countries Iceland and Greenland are misleading. Despite its name, Iceland is known for its beautiful green landscapes, while Greenland is mostly covered in ice and snow. The meme is saying that the person has trust issues because the names of these countries do not accurately represent their landscapes. | The meme talks about Iceland and Greenland. It's pointing out that despite their names, Iceland is not very icy and Greenland isn't very green. | 0.4
Can you explain this meme? | This meme is poking fun at the fact that the names of the countries Iceland and Greenland are misleading. Despite its name, Iceland is known for its beautiful green landscapes, while Greenland is mostly covered in ice and snow. The meme is saying that the person has trust issues because the names of these countries do not accurately represent their landscapes. | The meme is using humor to point out the misleading nature of Iceland's and Greenland's names. Iceland, despite its name, has lush green landscapes while Greenland is mostly covered in ice and snow. The text 'This is why I have trust issues' is a playful way to suggest that these contradictions can lead to distrust or confusion. The humor in this meme is derived from the unexpected contrast between the names of the countries and their actual physical characteristics. | 1.0
"""
MM_VET_RETRY_SUFFIX = "\nPredict the correctness of the answer (digit): "
MM_VET_MAX_TRIES = 5
MM_VET_TEMPERATURE_STEP = 0.5

# The capability codes of mm-vet.json and the names the MM-Vet paper prints.
MM_VET_CAPABILITIES = {"rec": "Recognition", "ocr": "OCR", "know": "Knowledge",
                       "gen": "Language generation", "spat": "Spatial awareness", "math": "Math"}

# ------------------------------------------------------------------ LLaVA-Bench (in-the-wild)
# haotian-liu/LLaVA, llava/eval/table/rule.json (the "llava_bench_{conv,detail,complex}"
# rules, one text for all three) and llava/eval/eval_gpt_review_bench.py (system message,
# content layout, temperature 0.2, max_tokens 1024). Assistant 1 is the reference
# (GPT-4) answer, Assistant 2 the model's; summarize_gpt_review.py reports, per category
# and over all, mean(score 2) / mean(score 1) * 100.

LLAVA_BENCH_SYSTEM = "You are a helpful and precise assistant for checking the quality of the answer."
LLAVA_BENCH_ROLE = "Assistant"
LLAVA_BENCH_RULE = (
    "We would like to request your feedback on the performance of two AI assistants in "
    "response to the user question displayed above. The user asks the question on observing "
    "an image. For your reference, the visual content in the image is represented with a few "
    "sentences describing the image. \nPlease rate the helpfulness, relevance, accuracy, "
    "level of details of their responses. Each assistant receives an overall score on a "
    "scale of 1 to 10, where a higher score indicates better overall performance.\nPlease "
    "first output a single line containing only two values indicating the scores for "
    "Assistant 1 and 2, respectively. The two scores are separated by a space.\nIn the "
    "subsequent line, please provide a comprehensive explanation of your evaluation, "
    "avoiding any potential bias and ensuring that the order in which the responses were "
    "presented does not affect your judgment.")
LLAVA_BENCH_RULES = {f"llava_bench_{c}": {"role": LLAVA_BENCH_ROLE, "prompt": LLAVA_BENCH_RULE}
                     for c in ("conv", "detail", "complex")}
LLAVA_BENCH_TEMPERATURE = 0.2
LLAVA_BENCH_MAX_TOKENS = 1024

# -------------------------------------------------------------- answer-prompt suffixes
# What LLaVA-1.5's evaluation appends to the question before the model answers
# (haotian-liu/LLaVA: playground/data/eval/pope/llava_pope_test.jsonl questions, and
# llava/eval/model_vqa_mmbench.py --single-pred-prompt). MM-Vet, LLaVA-Bench and MT-Bench
# questions are asked as they are.
POPE_ANSWER_SUFFIX = "\nAnswer the question using a single word or phrase."
MMBENCH_ANSWER_SUFFIX = "\nAnswer with the option's letter from the given choices directly."
