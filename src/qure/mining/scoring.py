"""QuRe's score, the max over an image's tokens of the dot product with the query.

:func:`max_sim_scores` is the one implementation of that score. The models
(:meth:`qure.models.CIRBackbone.score`, the contrastive loss) call it as is: gallery
chunks only, differentiable. The miner's :func:`iter_max_token_scores` calls it on one
chunk of queries at a time, writing each gallery chunk straight into the output block.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from qure.mining.base import MiningError, _check_positive

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


def iter_max_token_scores(
    query_emb: torch.Tensor,
    image_tokens: torch.Tensor,
    chunk_size: int | None = None,
    *,
    gallery_chunk_size: int | None = None,
    max_block_bytes: int = 4 << 20,
) -> Iterator[tuple[slice, torch.Tensor]]:
    """Yield ``(rows, scores[rows])`` for QuRe's score, one chunk of queries at a time.

    ``scores[q, n] = max_t <query_emb[q], image_tokens[n, t]>``: BLIP-2's similarity
    between a query embedding and an image's query-token features (QuRe: 32 tokens of
    256-d), without temperature. The [Q, N, T] tensor of the released ``score()`` is
    never formed: each step multiplies ``chunk_size`` queries by ``gallery_chunk_size``
    images' tokens, a block of at most about ``max_block_bytes``. Results are computed
    in the embeddings' dtype on their device (by :func:`max_sim_scores`).
    """
    _check_embeddings(query_emb, image_tokens)
    q_total = query_emb.shape[0]
    n_img, n_tok, _ = image_tokens.shape
    if chunk_size is None:
        chunk_size = 256
    _check_positive("chunk_size", chunk_size)
    elem = query_emb.element_size()
    if gallery_chunk_size is None:
        gallery_chunk_size = max(1, max_block_bytes // max(1, chunk_size * n_tok * elem))
    _check_positive("gallery_chunk_size", gallery_chunk_size)
    # Once, so that the gallery chunks are views rather than a copy per query chunk.
    image_tokens = image_tokens.contiguous()
    for q0 in range(0, q_total, chunk_size):
        q1 = min(q_total, q0 + chunk_size)
        out = torch.empty(q1 - q0, n_img, dtype=query_emb.dtype, device=query_emb.device)
        max_sim_scores(query_emb[q0:q1], image_tokens, gallery_chunk_size, out=out)
        yield slice(q0, q1), out


def max_token_scores(
    query_emb: torch.Tensor,
    image_tokens: torch.Tensor,
    chunk_size: int | None = None,
    *,
    gallery_chunk_size: int | None = None,
    max_block_bytes: int = 4 << 20,
) -> torch.Tensor:
    """The full [Q, N] matrix of :func:`iter_max_token_scores` (max over tokens of q·t)."""
    _check_embeddings(query_emb, image_tokens)
    out = torch.empty(query_emb.shape[0], image_tokens.shape[0], dtype=query_emb.dtype,
                      device=query_emb.device)
    for rows, block in iter_max_token_scores(
        query_emb, image_tokens, chunk_size, gallery_chunk_size=gallery_chunk_size,
        max_block_bytes=max_block_bytes,
    ):
        out[rows] = block
    return out


def _check_embeddings(query_emb: torch.Tensor, image_tokens: torch.Tensor) -> None:
    if not isinstance(query_emb, torch.Tensor) or query_emb.ndim != 2:
        raise MiningError("query_emb: expected a 2-D tensor [Q, D]")
    if not isinstance(image_tokens, torch.Tensor) or image_tokens.ndim != 3:
        raise MiningError("image_tokens: expected a 3-D tensor [N, T, D]")
    if not query_emb.is_floating_point() or not image_tokens.is_floating_point():
        raise MiningError("query_emb, image_tokens: expected floating-point tensors")
    if image_tokens.shape[2] != query_emb.shape[1]:
        raise MiningError(
            f"image_tokens: feature size {image_tokens.shape[2]} does not match "
            f"query_emb's {query_emb.shape[1]}"
        )
    if image_tokens.dtype != query_emb.dtype or image_tokens.device != query_emb.device:
        raise MiningError("image_tokens: must share query_emb's dtype and device")
    if image_tokens.shape[1] < 1:
        raise MiningError("image_tokens: needs at least one token per image")
