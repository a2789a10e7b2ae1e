"""Write bench/results/REPORT.md from the JSON files the bench scripts leave in bench/results/.

    python -m bench.report

Reads speed.json and speed_t1.json (bench_speed), startup.json (bench_startup),
memory.json (bench_memory), kernels.json (bench_kernels), class.json
(bench_class), split.json (bench_split), kenlm*.json (bench_kenlm),
documents.json (bench_documents), api.json (bench_api), subword.json
(bench_subword) and shakespeare*.json (bench_shakespeare); any that is missing is
skipped. Each section ends with the file's provenance (commit, date, CPU, threads,
command). The hand-written history (profiles, analysis, what each change bought) is
bench/HISTORY.md.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from bench.common import RESULTS, Shape

TASK_TITLE = {"train": "training N=20, T=35", "score_many": "scoring N=20 streams, T=100",
              "score_single": "scoring 1 stream"}
# issue 6 targets: streamlm / torch
TARGETS = {(100, "train"): 1.5, (100, "score_many"): 1.5, (100, "score_single"): 2.0,
           (650, "train"): 1.1, (650, "score_many"): 1.1, (650, "score_single"): 1.1}


def _load(name):
    f = RESULTS / name
    return json.loads(f.read_text()) if f.exists() else None


def provenance_lines(r: dict, name: str) -> list[str]:
    """Where a section's figures came from: the file and its provenance."""
    # bench_gated, bench_dynamic*, bench_load, torch_lm, sgemm_rate and profile_gated write
    # their provenance at the top level of the result, the others under "provenance"
    p = r.get("provenance") or r
    threads = p.get("threads")
    threads = "each command's default" if threads is None else threads
    parts = [f"commit {p.get('commit') or 'not recorded'}"
             + (f" (committed in {p['committed_in']})" if p.get("committed_in") else "")
             + (" with uncommitted changes" if p.get("dirty") else ""),
             f"date {p.get('date') or 'not recorded'}",
             f"CPU {p.get('cpu') or 'not recorded'}",
             f"threads {threads}",
             f"command `{p['command']}`" if p.get("command") else "command not recorded"]
    out = [f"- Source: `bench/results/{name}`: " + "; ".join(parts) + "."]
    if p.get("machine_note"):
        out.append(f"- Run: {p['machine_note']}.")
    if p.get("note"):
        out.append(f"- Note: {p['note']}.")
    return out + [""]


def speed_section(r, title="## Speed (tokens/s, V=10000)") -> list[str]:
    out = [title, ""]
    m, v = r["machine"], r["versions"]
    out += [f"- Machine: {m['cpu']}, {m['cores']} cores, {m['platform']}",
            f"- Versions: Python {v['python']}, numpy {v['numpy']} ({v['numpy_blas']}), "
            f"numba {v['numba']}, torch {v['torch']}"
            + (f"; streamlm at commit {v['streamlm_commit']}" if v.get("streamlm_commit") else ""),
            f"- Threads: {r['threads']} for every library (NUMBA_NUM_THREADS, "
            f"OPENBLAS_NUM_THREADS, OMP_NUM_THREADS, MKL_NUM_THREADS, torch.set_num_threads); "
            f"each peer in its own process.",
            f"- Medians of {r['reps']} timed repetitions per peer (warm-up excluded), the peers "
            f"interleaved repetition by repetition. The machine is shared: compare ratios, "
            f"not absolute figures across runs.",
            f"- Every worker first reproduced the float64 numpy oracle's mean loss on two blocks "
            f"(fresh state, then carried state / after one Adam step) to {r['tol']:g}; the largest "
            f"error is listed.",
            "- SGEMM (numpy float32, 700xH @ Hx10000, same threads), measured as one more "
            "peer interleaved with the others, so the rate is that of the same moments: "
            + "; ".join(f"H={x['H']} during {x['task']}: {x['median']:.0f} GFLOP/s"
                        for x in r.get("sgemm_same_time", [])),
            "- GEMM-bound limit = that SGEMM rate / FLOP per token; forward 2(DH + H^2 + HV), "
            "training 3x that.",
            "- 1-minute load average after each task: "
            + ", ".join(f"{x['H']}/{x['task']}: {x['loadavg']:.1f}" for x in r["runs"]
                        if "loadavg" in x and x["peer"] == r["runs"][0]["peer"]), ""]
    runs = r["runs"]
    hidden = sorted({x["H"] for x in runs})
    for H in hidden:
        shape = Shape(10000, H, H)
        same = {x["task"]: x["median"] for x in r.get("sgemm_same_time", []) if x["H"] == H}
        out += [f"### D=H={H}", "",
                "| task | peer | N x T | tok/s (median) | vs torch | share of GEMM limit "
                "| check err | first call s |",
                "|---|---|---|---:|---:|---:|---:|---:|"]
        for task in ("train", "score_many", "score_single"):
            tr = [x for x in runs if x["H"] == H and x["task"] == task]
            if not tr:
                continue
            peers = list(dict.fromkeys(x["peer"] for x in tr))
            med = {}
            for p in peers:
                tps = [x["tokens_per_rep"] / t for x in tr if x["peer"] == p for t in x["times"]]
                med[p] = float(np.median(tps))
            flop = shape.fwd_flop_per_token() * (3 if task == "train" else 1)
            rate = same.get(task)
            for p in peers:
                x0 = next(x for x in tr if x["peer"] == p)
                err = max(x["err"] for x in tr if x["peer"] == p)
                fc = float(np.median([x["first_call_s"] for x in tr if x["peer"] == p]))
                ratio = f"{med[p] / med['torch']:.2f}x" if "torch" in med else "-"
                share = f"{med[p] * flop / (rate * 1e9):.0%}" if rate else "-"
                out.append(f"| {TASK_TITLE[task]} | {p} | {x0['N']} x {x0['T']} | {med[p]:,.0f} | "
                           f"{ratio} | {share} | {err:.1e} | {fc:.2f} |")
        out.append("")
    # targets
    ours = [p for p in ("streamlm", "streamlm+mkl") if any(x["peer"] == p for x in runs)]
    out += [f"### Targets (streamlm / torch, same run, {r['threads']} thread(s))", "",
            "streamlm: the default install (numpy's OpenBLAS); streamlm+mkl: with "
            "`pip install 'streamlm[mkl]'` (Intel MKL, the BLAS PyTorch uses).", "",
            "| config | target | " + " | ".join(f"{p} | met" for p in ours) + " |",
            "|---|---:|" + "---:|---|" * len(ours)]
    for (H, task), want in TARGETS.items():
        tr = [x for x in runs if x["H"] == H and x["task"] == task]
        if not tr:
            continue
        med = {}
        for p in ours + ["torch"]:
            tps = [x["tokens_per_rep"] / t for x in tr if x["peer"] == p for t in x["times"]]
            if tps:
                med[p] = float(np.median(tps))
        if "torch" not in med:
            continue
        cells = []
        for p in ours:
            if p not in med:
                cells.append("- | -")
                continue
            got = med[p] / med["torch"]
            cells.append(f"{got:.2f}x | {'yes' if got >= want else '**no**'}")
        out.append(f"| D=H={H} {TASK_TITLE[task]} | {want:.1f}x | " + " | ".join(cells) + " |")
    out.append("")
    return out


def startup_section(r) -> list[str]:
    out = ["## Start-up and compile time", ""]
    out += [f"- {r['note']}" if r.get("note") else ""]
    out += ["Wall time depends on the machine's load; CPU time (user + sys of the process, "
            "median) much less so.", "",
            "| command | cache | wall s (median) | CPU s (median) | runs |",
            "|---|---|---:|---:|---:|"]
    for row in r["rows"]:
        cpu = f"{row['cpu_s']:.2f}" if "cpu_s" in row else "-"
        out.append(f"| `{row['cmd']}` | {row['cache']} | {row['median_s']:.2f} | {cpu} | "
                   f"{row['n']} |")
    out.append("")
    return out


def memory_section(r) -> list[str]:
    out = ["## Memory (peak RSS of `streamlm score`)", ""]
    if r.get("note"):
        out += [f"- {r['note']}", ""]
    out += ["| input tokens | peak RSS MB | wall s |", "|---:|---:|---:|"]
    for row in r["rows"]:
        out.append(f"| {row['tokens']:,} | {row['rss_mb']:.0f} | {row['wall_s']:.1f} |")
    out.append("")
    return out


def kernels_section(r) -> list[str]:
    out = ["## Kernel-level measurements", ""]
    for sec in r["sections"]:
        out += [f"### {sec['title']}", ""]
        if sec.get("note"):
            out += [sec["note"], ""]
        cols = sec["columns"]
        out.append("| " + " | ".join(cols) + " |")
        out.append("|" + "---|" * len(cols))
        for row in sec["rows"]:
            out.append("| " + " | ".join(str(c) for c in row) + " |")
        out.append("")
    return out


# issue 13 targets: class / full, same run
CLASS_TARGETS = {(100, "1 stream"): 10, (100, "20 streams"): 10, (100, "train"): 8,
                 (650, "1 stream"): 5, (650, "20 streams"): 5, (650, "train"): 4,
                 (256, "1 stream, Zipf"): 50}


def class_section(r) -> list[str]:
    out = ["## Class-factored softmax against the full softmax (end to end)", "",
           "- Whole `streamlm score` processes on PTB train repeated (the tokens column), "
           f"V=10,000, C={r['classes']}, 2 threads, the same weights; "
           "the peers in turn, the ratio is the median of the pairwise ratios. Training: "
           "steady-state tokens/s of `streamlm train` (median of its log intervals).",
           "- Zipf: V=100,000, H=256, C=316, a synthetic Zipf corpus "
           "(streamlm.jobs.demo.zipf_corpus).",
           *([f"- {r['note']}"] if r.get("note") else []),
           "", "| H | mode | tokens | full tok/s | class tok/s | class / full | target | "
           "peak RSS MB (full / class) |", "|---:|---|---:|---:|---:|---:|---:|---|"]
    for run in r["runs"]:
        f, c = run["full"], run["class"]
        fr = f.get("median_tokens_per_s", float(np.median(f["tokens_per_s"])))
        cr = c.get("median_tokens_per_s", float(np.median(c["tokens_per_s"])))
        t = CLASS_TARGETS.get((run["H"], run["mode"].split(" (")[0]))
        rss = (f"{f['peak_rss_mb']:.0f} / {c['peak_rss_mb']:.0f}" if "peak_rss_mb" in f else "")
        ntok = run.get("tokens", None if run["mode"].startswith("train") else r["tokens"])
        out.append(f"| {run['H']} | {run['mode']} | {f'{ntok:,}' if ntok else ''} | "
                   f"{fr:,.0f} | {cr:,.0f} | "
                   f"{run['ratio_class_over_full']:.2f}x | {f'{t}x' if t else ''} | {rss} |")
    out.append("")
    return out


def split_section(r) -> list[str]:
    out = ["## One stream's recurrence on one thread and on two (kernel level)", "",
           "- `python -m bench.bench_split`: a block of one stream, float32, Wh in panels made "
           "once; `K.rnn_forward_rows` on one thread against `TanhRNN.advance_split` "
           "(streamlm.nn.cells) on two (half of the panels each, meeting every step), in turn, "
           "median of "
           f"{r['reps']}; both write the same bytes (checked first). streamlm splits from "
           "H=256 (SPLIT_MIN_H).", "",
           "| H | Wh KB | one thread us/step | two threads us/step | one / two |",
           "|---:|---:|---:|---:|---:|"]
    for x in r["rows"]:
        out.append(f"| {x['H']} | {x['wh_kb']:.0f} | {x['one_thread_us_per_step']:.2f} | "
                   f"{x['two_threads_us_per_step']:.2f} | {x['one_over_two']:.2f}x |")
    out.append("")
    return out


def kenlm_section(r) -> list[str]:
    out = ["## Against KenLM `query` (end to end, per core)", "",
           f"- {r['tokens']:,} PTB tokens (PTB train x{r['ptb_times']}); KenLM: `query -v summary`"
           " of the PTB KN5 binary, one core; streamlm: `streamlm score MODEL TEXT --reset line "
           "--batch 64`, one core with one thread and two cores with two. Perplexity: PTB test, "
           "every sentence alone (`--reset line`, as `query`) and carried across sentences "
           "(`--reset none`). The chart: the command's `--chart` (default "
           "`bench/figures/kenlm_chart.png`).", "",
           "| peer | PTB test ppl (line) | ppl (carried) | tok/s 1 thread | per core vs KenLM "
           "| tok/s 2 threads | per core vs KenLM |", "|---|---:|---:|---:|---:|---:|---:|"]
    for p in r["peers"]:
        two = (f"{p['tokens_per_s_2t']:,.0f} | {p['per_core_vs_kenlm_2t']:.3f}x"
               if "tokens_per_s_2t" in p else " | ")
        stream = f"{p['ppl_stream']:.2f}" if p.get("ppl_stream") else ""
        out.append(f"| {p['name']} | {p['ppl_line']:.2f} | {stream} | "
                   f"{p['tokens_per_s_1t']:,.0f} | {p['per_core_vs_kenlm_1t']:.3f}x | {two} |")
    out.append("")
    return out


def api_section(r) -> list[str]:
    c = r["check"]
    out = ["## Python API: score_batch vs a score loop vs the kenlm module (bench_api.py)", "",
           f"- {r['sentences']:,} sentences of {Path(r['text']).name}, {r['tokens']:,} tokens "
           f"(`</s>` counted); streamlm model {Path(r['model']).name} ({r['softmax']} softmax, "
           f"D={r['D']}, H={r['H']}, V={r['V']:,}"
           + (f", C={r['C']}" if r.get("C") else "") + "); the kenlm module on the PTB KN5 "
           "model (binary).",
           f"- One process, {r['threads']} thread(s) for every library (the kenlm module has "
           f"one); medians of {r['reps']} repetitions, the peers rotated each repetition; "
           f"ratios are from the same run. Load average {r['machine']['loadavg']:.1f}.",
           "- Checked first: score_batch == the score loop per sentence, max |diff| in log10 "
           + ", ".join(f"{k} {v:.1e}" for k, v in c["batch_vs_loop_max_abs_log10"].items())
           + f"; the kenlm module's sentence scores == KenLM query's `Total:` lines "
           f"(max |diff| {c['kenlm_vs_query_max_abs_log10']:.1e}; total log10 "
           f"{c['kenlm_total_log10']:.4f} vs {c['query_total_log10']:.4f}).", "",
           "| peer | s (median) | sentences/s | tokens/s | vs kenlm loop | vs streamlm score "
           "loop |", "|---|---:|---:|---:|---:|---:|"]
    for p in r["peers"]:
        out.append(f"| {p['name']} | {p['median_s']:.3f} | {p['sentences_per_s']:,.0f} | "
                   f"{p['tokens_per_s']:,.0f} | {p['vs_kenlm_loop']:.4f}x | "
                   f"{p['vs_streamlm_loop']:.2f}x |")
    out.append("")
    return out


def documents_section(r) -> list[str]:
    m = r["memory"]
    return ["## Documents: Parquet against plain text, memory by rows", "",
            f"- {r['rows']:,} short documents ({r['tokens']:,} tokens), {r['model']}: the same "
            "sentences as a Parquet `text` column (one per row, `--reset doc`, per-document "
            "records) and as a plain file (one per line, `--reset line`, per-line records).", "",
            "| | tok/s (median) |", "|---|---:|",
            f"| plain text | {r['median_text_tokens_per_s']:,.0f} |",
            f"| Parquet documents | {r['median_parquet_tokens_per_s']:,.0f} |",
            f"| Parquet / text (median of pairs; target >= 0.8) | "
            f"{r['ratio_parquet_over_text']:.3f} |", "",
            "| rows | tokens | peak RSS MB |", "|---:|---:|---:|",
            *(f"| {v['rows']:,} | {v['tokens']:,} | {v['peak_rss_mb']:.0f} |"
              for v in (m['small'], m['large'])),
            "", f"- Growth from the small to the large corpus: "
            f"{100 * r['rss_growth_small_to_large']:+.1f}% (target within 10%).", ""]


def subword_section(r) -> list[str]:
    a, o = r["all_threads"], r["one_thread"]
    return ["## Subword: the share of scoring time that SentencePiece encoding takes", "",
            f"- {r['text']}: {r['words']:,} words, {r['tokens']:,} pieces, scored as raw text "
            f"by {r['model']} (in-process, medians).", "",
            "| SentencePiece threads | score wall s | encoding s | encoding share | all "
            "tokenising share |", "|---|---:|---:|---:|---:|",
            *(f"| {n} | {x['median_wall_s']:.2f} | {x['median_encode_s']:.2f} | "
              f"{100 * x['encode_share']:.1f}% | {100 * x['tokenise_share']:.1f}% |"
              for n, x in ((r["threads"], a), (1, o))),
            "", f"- As a whole `streamlm score` process: {r['median_cli_wall_s']:.2f} s. "
            "Target: encoding under 20%.", ""]


def shakespeare_section(r) -> list[str]:
    head = (f"## Word against subword on tinyshakespeare (V={r['vocab']:,}, D=H={r['size']}, "
            f"class softmax, {r['minutes']:g} min each, dropout {r.get('dropout', 0.25)})")
    return [head, "", "| model | held-out tokens | OOV | perplexity | word_perplexity | "
            "bits_per_byte |", "|---|---:|---:|---:|---:|---:|",
            *(f"| {k} | {m['heldout_tokens']:,} | {m['heldout_oov']:,} | {m['perplexity']:.1f} "
              f"| {m['word_perplexity']:.1f} | {m['bits_per_byte']:.3f} |"
              for k, m in r["models"].items()), ""]


def gated_section(r) -> list[str]:
    tokens = r["rows"][0].get("tokens") if r["rows"] else None
    out = ["## Gated cells against PyTorch (same weights, same answer; tokens/s"
           + (f"; {tokens:,} tokens)" if tokens else ")"), "",
           "| cell | one stream: streamlm / torch | 20 streams: streamlm / torch | "
           "training: streamlm / torch |", "|---|---:|---:|---:|"]
    for x in r["rows"]:
        cells = [f"{x[k]['streamlm_tok_s']:,.0f} / {x[k]['torch_tok_s']:,.0f} "
                 f"(**{x[k]['ratio']:.2f}×**)" for k in ("one_stream", "twenty_streams",
                                                          "train")]
        out.append(f"| {x['cell']} {x['layers']}×{x['H']} | " + " | ".join(cells) + " |")
    t = r["targets"]
    return out + ["", f"Targets: one stream ≥ {t['one_stream']}×, 20 streams ≥ "
                  f"{t['twenty_streams']}×, training ≥ {t['train']}×.", ""]


def _stats_from(on: str | None) -> str:
    """The heading's note of where a dynamic run's RMS statistics came from."""
    return f"; RMS statistics from {on}" if on else ""


def dynamic_section(r) -> list[str]:
    out = [f"## Dynamic evaluation ({r['model']}{_stats_from(r.get('stats_on'))})", "",
           "| text | tokens | static | dynamic (`auto`) | change | step, decay | "
           "plain SGD (defaults) |", "|---|---:|---:|---:|---:|---|---:|"]
    for k in ("ptb", "shakespeare"):
        x = r[k]
        out.append(f"| {k} | {x['tokens']:,} | {x['static_perplexity']:.2f} | "
                   f"{x['dynamic_perplexity']:.2f} | {100 * x['change']:+.1f}% | "
                   f"{x['dynamic']['lr']:g}, {x['dynamic']['decay']:g} | "
                   f"{x['sgd_perplexity']:.2f} |")
    c = r["cost"]
    return out + ["", f"Cost on PTB test: {c['dynamic_tok_s']:,.0f} against "
                  f"{c['static_tok_s']:,.0f} tokens/s, **{c['dynamic_over_static']:.2f}×** "
                  "the time of static scoring (whole processes, medians).", ""]


def dynamic_segment_section(r) -> list[str]:
    stats = _stats_from(r["rows"][0].get("stats_on") if r["rows"] else None)
    out = [f"## Dynamic evaluation's segment length ({r['model']}{stats})", "",
           "| segment | step | decay | PTB test | static | change | dynamic / static |",
           "|---:|---:|---:|---:|---:|---:|---:|"]
    for x in r["rows"]:
        out.append(f"| {x['segment']} | {x['lr']:g} | {x.get('decay', 0.0):g} | "
                   f"{x['test_perplexity']:.2f} | {x['static_perplexity']:.2f} | "
                   f"{100 * x['change']:+.1f}% | **{x['dynamic_over_static']:.2f}×** |")
    return out + ["", f"Target: at most {r['target_cost']:g}× static scoring (whole processes, "
                  "medians).", ""]


def load_section(r) -> list[str]:
    out = ["## Scoring on a shared machine (medians of whole processes)", "",
           "| cell | H | softmax | mode | tokens | alone tok/s | busy / alone | "
           "pair / pair at --threads 1 | --threads 1 / default |",
           "|---|---:|---|---|---:|---:|---:|---:|---:|"]
    for x in r["rows"]:
        out.append(f"| {x.get('cell', 'rnn')}×{x.get('layers', 1)} | {x['H']} | "
                   f"{x['softmax']} | {x['mode']} | {x['tokens']:,} | "
                   f"{x['tokens_per_s_alone']:,.0f} | {x['busy_over_alone']:.2f}× | "
                   f"{x['pair_over_pair_t1']:.2f}× | {x['alone_t1_over_alone']:.2f}× |")
    t = r["targets"]
    return out + ["", f"Targets: busy / alone ≤ {t['busy_over_alone']}×, pair / "
                  f"pair at --threads 1 ≤ {t['pair_over_pair_t1']}×.", ""]


def torch_lm_section(r) -> list[str]:
    o = r["options"]
    out = [f"## PyTorch's word_language_model on PTB, {o['minutes']:g} minutes "
           f"({o['layers']}×{o['hidden']} {o['model']}, tied {o['tied']}, dropout "
           f"{o['dropout']})", "", "| epoch | valid | lr | elapsed s |", "|---:|---:|---:|---:|",
           *(f"| {c['epoch']} | {c['valid_ppl']:.2f} | {c['lr']:g} | {c['elapsed_s']:.0f} |"
             for c in r["curve"])]
    return out + ["", f"Best valid {r['best_valid_ppl']:.2f}, test **{r['test_ppl']:.2f}** "
                  f"after {r['epochs']} epochs.", ""]


def sgemm_section(r) -> list[str]:
    sh = r["shape"]
    return [f"## The machine's SGEMM rate ({sh['rows']}×{sh['hidden']} @ {sh['hidden']}×"
            f"{sh['vocab']}, {r['blas']})", "", "| way | GFLOP/s (median of rounds) |",
            "|---|---:|",
            *(f"| {k} | {v:.0f} |" for k, v in r["median_gflops"].items()), ""]


def profile_gated_section(r) -> list[str]:
    o = r["options"]
    return [f"## Where a gated training step goes ({o['layers']}×{o['hidden']} {o['cell']}, "
            f"V={o['vocab']}, N=20, T=35, {r['blas']})", "", "| phase | ms | share | GFLOP/s |",
            "|---|---:|---:|---:|",
            *(f"| {x['phase']} | {x['ms']:.1f} | {100 * x['share']:.1f}% | {x['gflops']:.0f} |"
              for x in r["rows"]), ""]


def main():
    lines = ["# streamlm benchmarks: the tables of bench/results/", "",
             "Written by `python -m bench.report` from the JSON the bench scripts leave in "
             "bench/results/ (`bash bench/run_all.sh` runs them all; bench/README.md says which "
             "claim comes from which file, bench/HISTORY.md what each change bought). Each "
             "section names its source file and its provenance. Scripts: bench_speed.py "
             "(tokens/s vs PyTorch and numpy), bench_startup.py (start-up / compile), "
             "bench_memory.py (peak RSS), "
             "bench_kernels.py (kernel-level choices), bench_class.py (class against full "
             "softmax), bench_split.py (one stream's recurrence on two threads), "
             "bench_kenlm.py (against KenLM query), bench_documents.py (Parquet "
             "documents), bench_api.py (the Python API against the kenlm module), bench_subword.py "
             "(SentencePiece encoding's share of scoring), bench_shakespeare.py (word against "
             "subword, by bits per byte), bench_gated.py (LSTM and GRU against PyTorch), "
             "bench_dynamic.py (dynamic against static scoring), bench_dynamic_segment.py "
             "(its segment length), bench_load.py (scoring on a shared machine), torch_lm.py "
             "(PyTorch's PTB recipe for a wall-time budget), sgemm_rate.py (the machine's SGEMM "
             "rate), profile_gated.py (where a gated training step goes).", ""]
    t1 = lambda r: speed_section(r, "## Speed with ONE thread per library (per-core efficiency)")  # noqa: E731
    for name, fn in (("speed.json", speed_section),
                     ("speed_t1.json", t1),
                     ("startup.json", startup_section),
                     ("memory.json", memory_section),
                     ("kernels.json", kernels_section),
                     ("class.json", class_section),
                     ("split.json", split_section),
                     ("kenlm_zen5.json", kenlm_section),
                     ("kenlm.json", kenlm_section),
                     ("kenlm_xeon.json", kenlm_section),
                     ("kenlm_xeon_h224.json", kenlm_section),
                     ("documents.json", documents_section),
                     ("api.json", api_section),
                     ("subword.json", subword_section),
                     ("shakespeare.json", shakespeare_section),
                     ("shakespeare_dropout05.json", shakespeare_section),
                     ("kenlm_gated.json", kenlm_section),
                     ("gated.json", gated_section),
                     ("gated_1m.json", gated_section),
                     ("gated_epyc.json", gated_section),
                     ("load.json", load_section),
                     ("load_lstm.json", load_section),
                     ("dynamic.json", dynamic_section),
                     ("dynamic_segment.json", dynamic_segment_section),
                     ("dynamic_segment_class.json", dynamic_segment_section),
                     ("dynamic_train_stats.json", dynamic_section),
                     ("dynamic_2x400.json", dynamic_section),
                     ("dynamic_segment_train_stats.json", dynamic_segment_section),
                     ("dynamic_segment_2x400.json", dynamic_segment_section),
                     ("dynamic_segment_class_train_stats.json", dynamic_segment_section),
                     ("torch_lstm2x200_ptb30.json", torch_lm_section),
                     ("torch_lstm2x400_ptb120.json", torch_lm_section),
                     ("torch_lstm2x400_ptb120_xeon.json", torch_lm_section),
                     ("sgemm_xeon.json", sgemm_section),
                     ("profile_gated_xeon.json", profile_gated_section)):
        r = _load(name)
        if r is not None:
            lines += fn(r)
            lines += provenance_lines(r, name)
    from streamlm.data.atomic import atomic_path

    out = RESULTS / "REPORT.md"
    with atomic_path(out) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
