"""Corpus BLEU-4 (Papineni et al. 2002) with the brevity penalty, one reference per hypothesis.

No BLEU library is installed here; this is the textbook definition: clipped n-gram precisions
summed over the corpus for n = 1..4, their geometric mean, times BP = exp(1 - r/c) when the
corpus hypothesis length c is at most the reference length r. No smoothing (any zero precision
gives 0). Tokens: words and single punctuation characters, which suits code rewrites too.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

TOKEN_RE = re.compile(r"\w+|[^\w\s]")


def tokenize(text: str) -> list[str]:
    return TOKEN_RE.findall(text)


def ngrams(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


@dataclass(frozen=True)
class BleuStats:
    bleu: float                      # 0..100
    precisions: tuple[float, ...]    # clipped n-gram precisions, 0..1
    brevity_penalty: float
    hyp_len: int
    ref_len: int


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str], max_n: int = 4) -> BleuStats:
    if len(hypotheses) != len(references):
        raise ValueError("one reference per hypothesis")
    matches = [0] * max_n
    totals = [0] * max_n
    hyp_len = ref_len = 0
    for hyp, ref in zip(hypotheses, references):
        h, r = tokenize(hyp), tokenize(ref)
        hyp_len += len(h)
        ref_len += len(r)
        for n in range(1, max_n + 1):
            hn, rn = ngrams(h, n), ngrams(r, n)
            matches[n - 1] += sum(min(c, rn[g]) for g, c in hn.items())
            totals[n - 1] += max(len(h) - n + 1, 0)
    precisions = tuple(m / t if t else 0.0 for m, t in zip(matches, totals))
    if hyp_len == 0:
        return BleuStats(0.0, precisions, 0.0, hyp_len, ref_len)
    bp = 1.0 if hyp_len > ref_len else math.exp(1.0 - ref_len / hyp_len)
    if min(precisions) == 0.0:
        return BleuStats(0.0, precisions, bp, hyp_len, ref_len)
    geo = math.exp(sum(math.log(p) for p in precisions) / max_n)
    return BleuStats(100.0 * bp * geo, precisions, bp, hyp_len, ref_len)
