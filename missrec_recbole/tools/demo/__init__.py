"""Deterministic, generated multimodal demo datasets with learnable structure.

The demo domains (``Demo-A`` .. ``Demo-D``) stand in for real Amazon/CLIP data in examples,
tests and quick benchmarks. They use exactly the on-disk format of the real datasets
(docs/data.md): leave-one-out ``.inter`` files, ``item2index`` / ``user2index`` maps,
a ``.text`` file and raw little-endian float32 feature files (``feat1CLS`` = text,
``feat3CLS`` = image, all-zero row = missing modality).

Generative model (all randomness from one seed; shared parts depend only on the seed, the
per-domain parts only on ``(seed, domain name)``, so generating one domain alone gives the same
bytes as generating it together with others):

* ``N_INTERESTS`` latent interests are shared by all domains: a centre in a ``LATENT_DIM``-d latent
  space, ``N_SUBSTYLES`` sub-style offsets, a small text vocabulary, and a row of a global, sparse
  interest-transition matrix. Each domain uses an overlapping subset of the interests, with
  skewed (Zipf-like) interest popularity, plus a small domain-wide latent shift.
* Item = one primary interest (10 % of items also lean towards a secondary one), one sub-style, an
  item-specific offset and one of ``N_LOOKS`` global visual "looks"; popularity inside an interest
  is Zipf-like.
* Text feature = fixed random projection of a "text view" of the latent vector (centre and
  sub-style strong, offset and look weak), image feature = a different projection of an "image
  view" (centre, offset and look strong, sub-style weak); both get latent and isotropic noise and a
  common mean direction (mean pairwise cosine ~0.43, like CLIP) and are scaled to CLIP-like L2
  norms (text ~7.5, image ~9.8). Both modalities carry the interest; text carries the sub-style,
  image the offset and the look: with both present, fusing beats either alone.
* ~10-20 % of the items (seeded) have an all-zero image row (missing image).
* Users have 1-3 interests, a preferred sub-style per interest and a preferred look. A sequence
  stays in its current interest (p=0.6) or moves along the shared transition matrix (mostly to the
  user's own interests, sometimes exploring); inside an interest the next item is drawn with
  weight popularity^1.5 times a Gaussian kernel around 0.6 * previous item's latent vector + 0.4 *
  the user's taste. Items are not repeated within a sequence. Lengths are 5-20 (truncated
  exponential, mean ~11).
* Items that nobody interacted with are dropped; item indices follow first appearance (like the
  real datasets), user indices follow generation order.

``baseline_ndcg`` computes two reference rankings on a generated (or any) domain: popularity
(train frequency) and a feature heuristic (cosine to the mean feature of the last 3 history items),
both with the pessimistic tie rule of docs/design.md §5. The feature heuristic beats popularity and
learned models have room above both (measured values: benchmarks/README.md, "Demo data").

Determinism: same seed, feature_dim and ``GENERATOR_VERSION`` give byte-identical files on the
same platform (independently of the BLAS thread count). Across CPUs/BLAS builds the float32
features may differ in the last bit.

Command line::

    python -m missrec_recbole.tools.demo -o dataset/ [--seed 2023] [--force] [--domains Demo-A ...]

The package, by job: :mod:`~.settings` (names, version, knobs), :mod:`~.world` (what the domains of a seed share),
:mod:`~.simulate` (one domain, in steps), :mod:`~.store` (writing in the atomic file format, the marker, generating
only what is missing), :mod:`~.baselines` (the reference rankings) and :mod:`~.cli`.
"""

from missrec_recbole.tools.demo.baselines import baseline_ndcg, load_domain
from missrec_recbole.tools.demo.settings import DEMO_DOMAINS, GENERATOR_VERSION, MARKER_FILE
from missrec_recbole.tools.demo.store import ensure_demo_dataset, generate_demo_dataset, is_demo_domain_complete

__all__ = ["DEMO_DOMAINS", "GENERATOR_VERSION", "MARKER_FILE", "generate_demo_dataset", "ensure_demo_dataset",
           "is_demo_domain_complete", "load_domain", "baseline_ndcg"]
