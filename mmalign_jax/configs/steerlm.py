"""SteerLM (PAPER.md): SFT on every candidate, conditioned on its own five scores.

Each candidate becomes one example whose last user turn ends with the attribute string
(`data.sft_mode='steerlm'`, `pairs.steerlm_examples`): `data.steerlm_format='paper'` appends
"\\nPlease answer the question such that your response is in the following attributes in
5-point Likert scale:\\nHelpfulness:4,Correctness:4,Coherence:4,Complexity:4,Verbosity:4";
'nemo' appends "\\n<extra_id_2>helpfulness:4,...". The same SFT trainer as configs/sft.py
(`method='sft'`). Recipe: LoRA lr 4e-4, 3 epochs, global batch 128, max length 2048.
At inference, choose the targets: `python -m mmalign_jax.generate --config
configs/generate.py --config.checkpoint=<this workdir> --attributes verbosity=0,...`.

  python -m mmalign_jax.train --config configs/steerlm.py                       # offline demo
  python -m mmalign_jax.train --config configs/steerlm.py:llava-1.5-13b \
      --config.model.hf_checkpoint=/ckpt/llava-1.5-13b-hf --config.data.data_dir=/data/prefs

The definition the pipeline loads (`pipeline.recipe.load_config`); the repository's
`configs/steerlm.py` re-exports `get_config` for the `--config` flag.
"""
from mmalign_jax.configs import paper
from mmalign_jax.demo import recipe as demo_recipe
from mmalign_jax.train import defaults


def get_config(preset: str = "demo"):
    c = defaults.base_config("sft")
    c.data.sft_mode = "steerlm"
    c.data.steerlm_format = "paper"
    if preset == "demo":
        # Start from the demo SFT model (trained first in <workdir>/sft) and train on all 5
        # scored candidates of each demo prompt (5 examples per prompt). Full fine-tuning of
        # the LM here, not LoRA — presumably because the tiny model learnt its vocabulary
        # from the SFT data alone, where no attribute string occurs, so the attribute tokens
        # (",Verbosity:0", …) keep their random embeddings, which adapters cannot move.
        # Measured from the same SFT model
        # (eval prompts, 2 samples each, T=0.7): this preset gives mean answers of 13 words
        # at verbosity=0 vs 36 at verbosity=4; LoRA r16 lr 1e-3 × 150 steps gave 18.0 vs 18.2
        # words, r64 lr 5e-3 × 300 steps 22 vs 25. A real LLaVA knows those words: the
        # llava presets keep the paper's LoRA.
        c.workdir = "workdir/steerlm-demo"
        demo_recipe.use_sft(c)   # --config.demo_sft.* changes that SFT run
        c.lora.enabled = False
        c.optim.lr = 2e-3
        c.optim.projector_lr = 2e-3
        c.optim.warmup_ratio = 0.05
        c.data.seq_len = 192           # image tokens + question + attributes + answer
        c.train.global_batch_size = 16
        c.train.num_epochs = 0
        c.train.max_steps = 300
        c.train.log_every = 10
        c.train.eval_every = 100
        c.train.eval_batches = 16      # 256 of the eval split's 5×256 examples
        c.train.checkpoint_every = 100
    elif preset in paper.PRESETS:
        paper.apply(c, preset)
        c.workdir = f"workdir/steerlm-{preset}"
        c.optim.lr = 4e-4
        c.data.seq_len = 2048
    else:
        raise ValueError(f"unknown preset {preset!r}: use demo, llava-1.5-7b or llava-1.5-13b")
    return c
