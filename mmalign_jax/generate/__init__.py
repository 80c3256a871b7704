"""Generation: the jit'd KV-cache sampler (`sampling.py`) and the candidate-sampling command
(`candidates.py`, `python -m mmalign_jax.generate --config configs/generate.py[:preset]`).

    from mmalign_jax.generate import Generator, SamplingConfig, generate_tokens

Everything of `sampling.py` is importable from here, as when this package was one module.
`candidates` is imported on first use (it pulls in the data and training code).
"""
from mmalign_jax.generate.sampling import (  # noqa: F401
    Completion,
    GenerationOutput,
    Generator,
    SamplingConfig,
    bucket_length,
    cut_at_stop_strings,
    filter_top_k,
    filter_top_p,
    generate_tokens,
    processed_logits,
    sample_logits,
)

__all__ = [
    "SamplingConfig", "GenerationOutput", "generate_tokens", "sample_logits", "filter_top_k",
    "filter_top_p", "processed_logits", "Generator", "Completion", "bucket_length",
    "cut_at_stop_strings", "candidates",
]


def __getattr__(name):
    if name == "candidates":
        import importlib
        module = importlib.import_module(".candidates", __name__)
        globals()[name] = module
        return module
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
