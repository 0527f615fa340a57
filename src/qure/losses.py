"""Training objectives on max-over-tokens scores.

* :func:`reward_loss` is QuRe's objective (``train_qure.py``): for each query one target
  and one sampled hard negative, ``kl_div(log_softmax([s+, s-]/τ), [1, 0], 'batchmean')``,
  which equals ``mean(-log σ((s+ - s-)/τ))``, a Bradley-Terry pairwise reward loss. It is
  computed here in the log-sigmoid form (stable for any score gap).
* :func:`info_nce` is the fair contrastive baseline on the same backbone
  (research notes §C): query→target cross-entropy over the batch's targets with the same
  max-over-tokens score and learned temperature (SPRC's ``loss_itc``), optionally
  symmetric, with mined negatives appended as extra columns, and with in-batch duplicates
  of a query's own target masked out.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from qure.models.interface import max_sim_scores


def reward_loss(s_pos: torch.Tensor, s_neg: torch.Tensor,
                temperature: torch.Tensor | float) -> torch.Tensor:
    """Mean over the batch of ``-log σ((s_pos - s_neg) / τ)``; inputs are scores [B]."""
    if s_pos.shape != s_neg.shape or s_pos.dim() != 1:
        raise ValueError(f"expected two [B] score vectors, got {tuple(s_pos.shape)} and "
                         f"{tuple(s_neg.shape)}")
    return -F.logsigmoid((s_pos - s_neg) / temperature).mean()


def info_nce(query: torch.Tensor, target_images: torch.Tensor,
             temperature: torch.Tensor | float, *,
             extra_negatives: torch.Tensor | None = None, symmetric: bool = False,
             target_names: Sequence[str] | None = None) -> torch.Tensor:
    """In-batch InfoNCE from each query to its own target among the batch's targets.

    ``query`` [B,D] and ``target_images`` [B,T,D] are L2-normalised embeddings; logits are
    ``max_t <q_i, target_j[t]> / τ`` ([B,B]) with the diagonal as the positive.

    ``extra_negatives`` [B,K,T,D]: per-query mined negatives, appended as K more columns
    for their own query only. ``symmetric`` adds the target→query direction (over the
    in-batch block). ``target_names``: image names of the targets; a column holding the
    same image as the query's target (another triplet with that target) is masked rather
    than counted as a negative.
    """
    b = query.shape[0]
    if target_images.dim() != 3 or target_images.shape[0] != b:
        raise ValueError(f"expected target_images [{b},T,D], got {tuple(target_images.shape)}")
    logits = max_sim_scores(query, target_images) / temperature
    if target_names is not None:
        if len(target_names) != b:
            raise ValueError(f"{len(target_names)} target names for a batch of {b}")
        ids = {name: i for i, name in enumerate(dict.fromkeys(target_names))}
        key = torch.tensor([ids[n] for n in target_names], device=logits.device)
        duplicate = (key[:, None] == key[None, :]) & ~torch.eye(b, dtype=torch.bool,
                                                                device=logits.device)
        logits = logits.masked_fill(duplicate, float("-inf"))
    labels = torch.arange(b, device=logits.device)
    forward_logits = logits
    if extra_negatives is not None:
        if extra_negatives.dim() != 4 or extra_negatives.shape[0] != b:
            raise ValueError(f"expected extra_negatives [{b},K,T,D], got "
                             f"{tuple(extra_negatives.shape)}")
        mined = torch.einsum("bd,bktd->bkt", query, extra_negatives).amax(-1) / temperature
        forward_logits = torch.cat([logits, mined], dim=1)
    loss = F.cross_entropy(forward_logits, labels)
    if symmetric:
        loss = 0.5 * (loss + F.cross_entropy(logits.t(), labels))
    return loss
