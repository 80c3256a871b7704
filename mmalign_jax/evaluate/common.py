"""What every benchmark runner shares: reading JSON/JSONL files with errors that name the
line, the `result.json` every run writes, and small statistics helpers.

`result.json` (one per benchmark run; `report.py` reads these):

    {"benchmark": "mt-bench", "model": "llava-dpo", "model_path": "...",
     "judge": "openai:gpt-4" | null, "score": 6.73, "score_name": "overall (1-10)",
     "metrics": {...benchmark specific...}, "n_questions": 80,
     "judge_failures": {"count": 0, "unparsable": 0, "errors": 0, "items": [...]},
     "judge_usage": {"calls": .., "input_tokens": .., "output_tokens": .., "cached": ..},
     "generation": {"max_new_tokens": 1024, "temperature": 0.0, "batch_size": 8},
     "data": "/data/mt_bench", "finished": "2026-11-30T12:00:00Z"}
"""
from __future__ import annotations

import datetime
import json
import math
import os
from typing import Any, Iterable, Optional, Sequence

RESULT_FILE = "result.json"


class BenchmarkDataError(ValueError):
    """A benchmark file is missing or not in the official format; the message says which."""


def read_jsonl(path: str) -> list:
    if not os.path.isfile(path):
        raise BenchmarkDataError(f"{path}: file not found")
    rows = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise BenchmarkDataError(f"{path}, line {i}: not JSON ({e})") from None
            if not isinstance(row, dict):
                raise BenchmarkDataError(f"{path}, line {i}: expected a JSON object")
            rows.append(row)
    return rows


def read_json(path: str) -> Any:
    if not os.path.isfile(path):
        raise BenchmarkDataError(f"{path}: file not found")
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise BenchmarkDataError(f"{path}: not JSON ({e})") from None


def require(row: dict, fields: Iterable[str], where: str) -> None:
    missing = [f for f in fields if f not in row]
    if missing:
        raise BenchmarkDataError(f"{where}: missing field(s) {missing}; keys present: "
                                 f"{sorted(row)}")


def mean(xs: Sequence[float]) -> Optional[float]:
    xs = [float(x) for x in xs]
    return sum(xs) / len(xs) if xs else None


def std(xs: Sequence[float]) -> Optional[float]:
    """Population standard deviation (numpy's default, as MM-Vet's evaluator)."""
    m = mean(xs)
    if m is None:
        return None
    return math.sqrt(sum((float(x) - m) ** 2 for x in xs) / len(xs))


def safe_div(a: float, b: float) -> float:
    return float(a) / float(b) if b else 0.0


def model_info(answerer) -> dict:
    return {"model": getattr(answerer, "name", str(answerer)),
            "model_path": getattr(answerer, "path", None)}


def generation_info(sampling, batch_size: int) -> dict:
    return {"max_new_tokens": getattr(sampling, "max_new_tokens", None),
            "temperature": getattr(sampling, "temperature", None),
            "batch_size": int(batch_size)}


def write_result(out_dir: str, result: dict) -> str:
    """Write `result.json` atomically (a reader never sees half a file)."""
    os.makedirs(out_dir, exist_ok=True)
    result = dict(result)
    result.setdefault("finished", datetime.datetime.now(datetime.timezone.utc)
                      .strftime("%Y-%m-%dT%H:%M:%SZ"))
    path = os.path.join(out_dir, RESULT_FILE)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2, ensure_ascii=False)
        f.write("\n")
    os.replace(tmp, path)
    return path


def write_jsonl(path: str, rows: Iterable[dict]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def judge_usage(judge) -> Optional[dict]:
    if judge is None:
        return None
    usage = dict(judge.usage)
    try:
        from mmalign_jax.remote.client import estimate_cost
        usage["estimated_usd"] = estimate_cost(judge.name, usage["input_tokens"],
                                               usage["output_tokens"])
    except ImportError:  # pragma: no cover
        pass
    return usage


def need_judge(judge, benchmark: str) -> None:
    if judge is None:
        raise ValueError(f"{benchmark} is judged by an LLM: pass a judge (CLI: --judge "
                         "gemini|openai [--judge-model NAME] [--judge-base-url URL])")
