"""QuRe's score, the max over an image's tokens of the dot product with the query.

:func:`qure.scoring.max_sim_scores` is the one implementation of that score (shared
with the models); :func:`iter_max_token_scores` calls it on one chunk of queries at a
time, writing each gallery chunk straight into the output block.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from qure.mining.base import MiningError, _check_positive
from qure.scoring import max_sim_scores


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
