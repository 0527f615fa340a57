"""QuRe's score, the max over an image's tokens of the dot product with the query: the
one implementation, shared by the models (:meth:`qure.models.CIRBackbone.score`, the
contrastive loss: gallery chunks only, differentiable) and the miner
(:func:`qure.mining.iter_max_token_scores`: one chunk of queries at a time, writing each
gallery chunk straight into the output block). A module of its own, importing nothing
of the project, so that the models do not depend on the miner's code.
"""

from __future__ import annotations

import torch

# Upper bound on the elements of one [Q, chunk, T] block in :func:`max_sim_scores`
# (2**24 float32 = 64 MiB), so a full train-set gallery never needs 60 GB at once.
SCORE_BLOCK_ELEMENTS = 1 << 24


def max_sim_scores(queries: torch.Tensor, images: torch.Tensor,
                   chunk_size: int | None = None, *,
                   out: torch.Tensor | None = None) -> torch.Tensor:
    """``scores[q, n] = max_t <queries[q], images[n, t]>``; shape [Q, N].

    The gallery is processed in chunks of ``chunk_size`` images (default: as many as keep
    a [Q, chunk, T] block under :data:`SCORE_BLOCK_ELEMENTS`), so the full Q x N x T
    tensor is never materialised. Differentiable; chunking does not change the result.
    With ``out`` ([Q, N], the scores' dtype and device) each chunk's maxima are written
    into it in place and ``out`` is returned (not differentiable).
    """
    if queries.dim() != 2 or images.dim() != 3 or queries.shape[-1] != images.shape[-1]:
        raise ValueError(f"expected queries [Q,D] and images [N,T,D], got "
                         f"{tuple(queries.shape)} and {tuple(images.shape)}")
    n = images.shape[0]
    if chunk_size is None:
        chunk_size = max(1, SCORE_BLOCK_ELEMENTS // max(queries.shape[0] * images.shape[1], 1))
    if out is None and chunk_size >= n:
        return _max_over_tokens(queries, images)
    blocks = []
    for start in range(0, n, chunk_size):
        chunk = images[start:start + chunk_size]
        if out is None:
            blocks.append(_max_over_tokens(queries, chunk))
        else:
            _max_over_tokens(queries, chunk, out[:, start:start + chunk.shape[0]])
    return torch.cat(blocks, dim=1) if out is None else out


def _max_over_tokens(queries: torch.Tensor, images: torch.Tensor,
                     out: torch.Tensor | None = None) -> torch.Tensor:
    """One gallery block: [Q, D] x [m, T, D] -> [Q, m], one matmul then the max."""
    m, t, d = images.shape
    sims = (queries @ images.reshape(m * t, d).t()).view(-1, m, t)
    if out is None:
        return sims.amax(-1)
    return torch.amax(sims, dim=2, out=out)
