"""Corpus and sentence BLEU-4 through sacreBLEU (Post 2018), the implementation papers report.

Two tokenisations, named in every number's signature:

- `13a` (default): sacreBLEU's own defaults (mteval-v13a tokens, exp smoothing), so a score is
  comparable with published BLEU and carries sacreBLEU's signature string.
- `seed`: this project's earlier hand-written BLEU (words and single punctuation characters, no
  smoothing: any zero precision gives 0), kept so numbers stay comparable with the runs scored
  before sacreBLEU; here sacreBLEU does the counting on those tokens (tok:none). They differ
  where 13a keeps a token whole that the regex splits: `1.5`, `don't`.

One reference per hypothesis.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, Sequence

from sacrebleu.metrics import BLEU

Tokenisation = Literal["13a", "seed"]
TOKENISATIONS: tuple[str, ...] = ("13a", "seed")
TOKEN_RE = re.compile(r"\w+|[^\w\s]")


def tokenize(text: str) -> list[str]:
    """The seed tokenisation: words and single punctuation characters."""
    return TOKEN_RE.findall(text)


@dataclass(frozen=True)
class BleuStats:
    bleu: float                      # 0..100
    precisions: tuple[float, ...]    # clipped n-gram precisions, 0..1
    brevity_penalty: float
    hyp_len: int
    ref_len: int
    signature: str                   # sacreBLEU's, e.g. nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0


def _scorer(tokenisation: Tokenisation, max_n: int, sentence: bool) -> BLEU:
    if tokenisation == "seed":
        return BLEU(tokenize="none", smooth_method="none", max_ngram_order=max_n)
    if tokenisation == "13a":
        # Sentence BLEU: sacreBLEU's documented advice is effective order (short segments).
        return BLEU(max_ngram_order=max_n, effective_order=sentence)
    raise ValueError(f"unknown BLEU tokenisation {tokenisation!r} (expected one of {', '.join(TOKENISATIONS)})")


def _prepare(texts: Sequence[str], tokenisation: Tokenisation) -> list[str]:
    return [" ".join(tokenize(t)) for t in texts] if tokenisation == "seed" else list(texts)


def _stats(score, scorer: BLEU) -> BleuStats:   # score: sacrebleu.metrics.bleu.BLEUScore
    return BleuStats(score.score, tuple(p / 100.0 for p in score.precisions), score.bp, score.sys_len,
                     score.ref_len, str(scorer.get_signature()))


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str], tokenisation: Tokenisation = "13a",
                max_n: int = 4) -> BleuStats:
    if len(hypotheses) != len(references):
        raise ValueError("one reference per hypothesis")
    scorer = _scorer(tokenisation, max_n, sentence=False)
    return _stats(scorer.corpus_score(_prepare(hypotheses, tokenisation), [_prepare(references, tokenisation)]),
                  scorer)


def sentence_bleu(hypothesis: str, reference: str, tokenisation: Tokenisation = "13a", max_n: int = 4) -> BleuStats:
    scorer = _scorer(tokenisation, max_n, sentence=True)
    return _stats(scorer.sentence_score(_prepare([hypothesis], tokenisation)[0], _prepare([reference], tokenisation)),
                  scorer)
