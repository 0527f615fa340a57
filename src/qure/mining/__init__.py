"""Hard-negative sets for composed image retrieval: QuRe's two-drops rule and its rivals.

Every strategy maps a score matrix ``scores`` [Q, N] (row ``i`` = query ``i`` scored
against its gallery of ``N`` images) and the target column of each query to one set of
gallery columns per query. A training sampler then draws negatives from these sets.

Conventions shared by all strategies
------------------------------------
* **Ranking.** A row is ranked by descending score; equal scores are ordered by column,
  lower column first (a stable sort of the row). The released QuRe code sorts with an
  unstable sort, so its order among ties is unspecified; we fix one.
* **Equal scores make no drop.** The drop between two ranked items is
  ``s[j + 1] - s[j]``, except that it is ``0`` whenever the two scores are equal. For
  finite scores this is plain subtraction; it also defines the drop between two
  ``-inf`` (or two ``+inf``) scores, where the release would get ``nan``.
* **Output.** Each set is a 1-D tensor of columns, sorted ascending, without duplicates,
  never containing the query's target nor its ``exclude_index`` column.
* **NaN scores are rejected**; ``-inf``/``+inf`` are allowed (e.g. masked columns).
* Half-precision scores are upcast to float32 (exactly); float32 and float64 rows are
  ranked and differenced in their own precision, as the release does with NumPy.

``exclude_index``
-----------------
One column per query (``-1`` = none) that no strategy may return, typically the query's
reference image. The release does *not* exclude the reference from the CIRR or FashionIQ
training gallery, so the default ``None`` is the faithful setting. When given:

* ``qure``: the ranking, the drops and the chosen pair are computed on the full row,
  exactly as without exclusion, and the excluded column is then removed from the set.
  The set is therefore the release's set minus at most one item; it stays non-empty
  because a qualifying pair always encloses at least two items.
* ``topk`` / ``after_target_topk``: the excluded column is skipped and the next ranked
  column takes its place, so sizes stay ``min(k, available)``.
* ``trns``: the excluded column is not a candidate and is left out of the Δ distribution
  that quantile bounds are taken from.
* ``all``: the column is simply left out.

Fallback
--------
When a rule yields nothing (``qure``: no qualifying pair of drops, which happens when
three or fewer items rank after the target or when every pair tried is adjacent;
``trns``: an empty mid-zone), the release would reuse the previous query's bounds (or
fail on the first query). Here the ``fallback`` parameter decides, and the query is
flagged in :attr:`HardNegativeSets.fallback`:

* ``"after_target_topk"`` (default): the ``fallback_k`` (default 10) columns ranked
  right after the target, skipping the excluded column; empty if the target ranks last;
* ``"empty"``: an empty set;
* ``"raise"``: :class:`MiningError` naming the queries.

Sets are sorted, so a seeded draw from them is reproducible across processes (the
release stores ``list(set(names))``, whose order follows Python's string hashing).

Implementation
--------------
Rows are processed in chunks of ``chunk_size`` queries, fully vectorised within a chunk.
For ``qure`` most rows never need a sort: a bucket histogram certifies the decisive drops
and a sort-based path handles the rest (:mod:`qure.mining.two_drops`); both equal a plain
per-query NumPy transcription of the rule, which the tests check on random and adversarial
matrices (``tests/mining_reference.py``). The other strategies sort each chunk's rows
(stable) and are not tuned (:mod:`qure.mining.strategies`).

Modules, each importing only those above it: :mod:`~qure.mining.base` (errors, argument
checks), :mod:`~qure.mining.scoring` (the max-over-tokens score, shared with
:mod:`qure.models`), :mod:`~qure.mining.sets` (:class:`HardNegativeSets`),
:mod:`~qure.mining.config` (strategies, defaults, validation),
:mod:`~qure.mining.two_drops`, :mod:`~qure.mining.strategies` and
:mod:`~qure.mining.mine` (the entry points). This package only re-exports them.
"""

from qure.mining.base import MiningError
from qure.mining.config import (
    DEFAULT_FALLBACK,
    DEFAULT_FALLBACK_K,
    DEFAULT_TRNS_HIGH,
    DEFAULT_TRNS_LOW,
    DEFAULT_TRNS_MODE,
    FALLBACKS,
    STRATEGIES,
    TRNS_MODES,
    validate_strategy_params,
)
from qure.mining.mine import hard_negative_sets, mine_chunks, mine_from_embeddings, mine_grouped
from qure.mining.scoring import iter_max_token_scores, max_token_scores
from qure.mining.sets import HardNegativeSets
from qure.scoring import SCORE_BLOCK_ELEMENTS, max_sim_scores

__all__ = [
    "DEFAULT_FALLBACK",
    "DEFAULT_FALLBACK_K",
    "DEFAULT_TRNS_HIGH",
    "DEFAULT_TRNS_LOW",
    "DEFAULT_TRNS_MODE",
    "FALLBACKS",
    "SCORE_BLOCK_ELEMENTS",
    "STRATEGIES",
    "TRNS_MODES",
    "HardNegativeSets",
    "MiningError",
    "hard_negative_sets",
    "iter_max_token_scores",
    "max_sim_scores",
    "max_token_scores",
    "mine_chunks",
    "mine_from_embeddings",
    "mine_grouped",
    "validate_strategy_params",
]
