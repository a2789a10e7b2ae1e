"""Perplexity figures from sums, and how the summary reads as text.

KenLM's two definitions: including OOVs ``exp(-sum(logprob) / tokens)`` and
excluding them ``exp(-sum(logprob of non-OOV tokens) / (tokens - oov))``.
Across tokenisers (words, subword pieces), the measures lm-evaluation-harness
gives for rolling log-likelihood: ``word_perplexity = exp(-logprob / words)``
and ``bits_per_byte = -logprob / bytes / ln 2``, where ``words`` counts the
text's whitespace words plus one ``<eos>`` per line and ``bytes`` the UTF-8
bytes of its normalised text plus one per line (``streamlm.data.tokenizer``): the same
text gives the same counts whatever the tokens. For a word model ``words`` is
``tokens``, and ``word_perplexity`` is ``perplexity``.
Totals across inputs sum log-probabilities, tokens and OOVs; perplexities are
computed once from the sums, never averaged.
"""

from __future__ import annotations

import math

LN10 = math.log(10.0)
LN2 = math.log(2.0)


def summarize(tokens: int, oov: int, logprob: float, logprob_oov: float = 0.0,
              words: int | None = None, nbytes: int | None = None) -> dict:
    """The summary keys of one input or of all inputs (KenLM's definitions).

    ``logprob`` is the natural-log sum over all tokens, ``logprob_oov`` the part
    of it that falls on OOV tokens. Perplexities are None when undefined. With
    ``words`` and ``nbytes``, also ``words``, ``word_perplexity``, ``bytes`` and
    ``bits_per_byte`` (see the module doc).
    """
    ppl = math.exp(-logprob / tokens) if tokens else None
    kept = tokens - oov
    ppl_x = math.exp(-(logprob - logprob_oov) / kept) if kept else None
    return {
        "tokens": int(tokens),
        "oov": int(oov),
        "logprob": float(logprob),
        "log10prob": float(logprob / LN10),
        "logprob_excl_oov": float(logprob - logprob_oov),  # exact merges (distributed)
        "perplexity": ppl,
        "perplexity_excl_oov": ppl_x,
        "bits_per_token": (-logprob / tokens / LN2) if tokens else None,
    } | ({} if words is None else {
        "words": int(words),
        "word_perplexity": _exp(-logprob / words) if words else None,
        "bytes": int(nbytes),
        "bits_per_byte": (-logprob / nbytes / LN2) if nbytes else None,
    })


def _exp(x: float) -> float | None:
    """exp(x), None where it overflows (a perplexity per word beyond 1e308)."""
    try:
        return math.exp(x)
    except OverflowError:
        return None


def format_summary(summary: dict) -> str:
    """The summary as readable text (KenLM ``query``'s figures, per input and total)."""

    def block(d: dict, title: str) -> list[str]:
        def f(x, fmt):
            return "n/a" if x is None else format(x, fmt)

        return [
            title,
            f"  tokens                    {d['tokens']:,}",
            f"  OOVs                      {d['oov']:,}{literal(d)}",
            f"  log-probability (ln)      {f(d['logprob'], '.4f')}",
            f"  log-probability (log10)   {f(d['log10prob'], '.4f')}",
            f"  perplexity incl. OOVs     {f(d['perplexity'], '.4f')}",
            f"  perplexity excl. OOVs     {f(d['perplexity_excl_oov'], '.4f')}",
            f"  bits per token            {f(d['bits_per_token'], '.4f')}",
        ] + ([] if "words" not in d else [
            f"  words (incl. <eos>)       {d['words']:,}",
            f"  perplexity per word       {f(d['word_perplexity'], '.4f')}",
            f"  bytes                     {d['bytes']:,}",
            f"  bits per byte             {f(d['bits_per_byte'], '.4f')}",
        ]) + ([] if not d.get("skipped_rows") else [
            f"  bad rows skipped          {d['skipped_rows']:,} (--errors skip)",
        ]) + mixed(d)

    def literal(d: dict) -> str:  # OOVs that are a literal <unk> of the text (PTB's)
        n = d.get("unk_literal")
        return f" ({n:,} a literal <unk> of the text)" if n else ""

    def mixed(d: dict) -> list[str]:  # a mix with an n-gram model (streamlm.jobs.mix)
        m = d.get("mix")
        if not m:
            return []
        out = []
        if "lambda" in m:
            tuned = f" (tuned on {m['tuned_on']})" if m.get("tuned_on") else ""
            out.append(f"  mixed with                {m['ngram_model']}, lambda {m['lambda']:.4g}"
                       f"{tuned}: lambda x RNN + (1 - lambda) x n-gram")
        for k, name in (("rnn", "RNN"), ("ngram", "n-gram")):
            a = m[k]
            ppl, ppl_x = (("n/a" if x is None else f"{x:.4f}")
                          for x in (a["perplexity"], a["perplexity_excl_oov"]))
            out.append(f"  {name + ' alone:':<26}perplexity {ppl}, excl. OOVs {ppl_x}, its "
                       f"own OOVs {a['own_oov']:,}")
        return out

    lines: list[str] = []
    per = summary.get("inputs", [])
    if len(per) > 1:
        for d in per:
            lines += block(d, d["path"])
        lines += block(summary, "total")
    elif per:
        lines += block(summary, per[0]["path"])
    dyn = summary.get("dynamic")
    if dyn:  # dynamic evaluation (streamlm.jobs.dynamic): what it did
        tuned = f", tuned on {dyn['tuned_on']}" if dyn.get("tuned_on") else ""
        lines.append(f"{'dynamic evaluation':<28}{dyn['method']}, lr {dyn['lr']:g}, decay "
                     f"{dyn['decay']:g}, a step every {dyn['segment']} tokens{tuned}")
        if dyn.get("static_perplexity") is not None:
            lines.append(f"{'perplexity, static':<28}{dyn['static_perplexity']:.4f} (the "
                         "trained weights, the same tokens)")
    if summary.get("seconds") is not None:  # the run's wall time, and its speed
        tps = summary.get("tokens_per_second")
        lines.append(f"{'wall time':<28}{summary['seconds']:.2f} s"
                     + ("" if tps is None else f" ({tps:,.0f} tokens/s)"))
    return "\n".join(lines) + "\n"
