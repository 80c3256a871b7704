"""The obvious DPO log-probs, to check the trainer's shared-prefix pass against.

One full forward per [prompt | response] sequence (prompt padding removed, right padded,
the image encoded for each sequence, positions the model's own from the ids and mask), then
the response tokens' log-probs summed. Any model family: its image keys come from the batch."""
from __future__ import annotations

import numpy as np

from mmalign_jax import objectives
from mmalign_jax.models import registry


def naive_dpo_logps(model, variables, batch, pad_id: int = 0):
    """(chosen, rejected) summed log-probs, each [B]. `batch` holds concrete arrays."""
    batch = {k: np.asarray(v) for k, v in batch.items()}
    pm = batch["prompt_mask"]
    b, p = pm.shape
    r = batch["chosen_ids"].shape[1]
    ids = np.full((2 * b, p + r), pad_id, np.int32)
    att = np.zeros((2 * b, p + r), np.int32)
    predicts = np.zeros((2 * b, p + r), np.float32)   # positions whose next token is scored
    for side, key in enumerate(("chosen", "rejected")):
        for i in range(b):
            prompt = batch["prompt_ids"][i][pm[i] > 0]
            n = int(batch[f"{key}_mask"][i].sum())
            seq = np.concatenate([prompt, batch[f"{key}_ids"][i][:n]])
            row = side * b + i
            ids[row, :len(seq)] = seq
            att[row, :len(seq)] = 1
            predicts[row, len(prompt) - 1:len(seq) - 1] = 1
    family = registry.for_config(model.cfg)
    pix = family.model_images({k: np.concatenate([batch[k]] * 2) for k in family.image_keys})
    imask = np.concatenate([batch["image_mask"]] * 2)
    logits = model.apply(variables, ids, pix, att, image_mask=imask)
    tok = objectives.token_logps(logits[:, :-1], ids[:, 1:])
    sums = (tok * predicts[:, :-1]).sum(1)
    return sums[:b], sums[b:]
