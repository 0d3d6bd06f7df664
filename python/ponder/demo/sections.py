"""The demo's sections: each runs one part of the library on the toy world and returns a
:class:`~ponder.demo.report.Section`. They only call public APIs of the layers below (toy models,
samplers, ...), so each is also an example of using them.

A section takes a :class:`Context` (output folder, quick or full sizes, seed, progress) and is
registered in :data:`SECTIONS` in the order the demo prints them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..figures import pyplot, save
from .report import Section, Table

__all__ = ["SECTIONS", "Context"]


@dataclass(frozen=True)
class Context:
    """What every section is given: ``out`` (a folder for images), ``quick`` (small sizes: a
    smoke run, not numbers to report), ``seed`` and ``progress`` (tqdm bars)."""

    out: Path
    quick: bool = False
    seed: int = 0
    progress: bool = True


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def toy_section(ctx: Context) -> Section:
    """The toy world: the shipped draft and target models' greedy accuracy on held-out problems."""
    from ..toy import SPECS, evaluate_accuracy, load_toy_model

    start = time.perf_counter()
    n = 60 if ctx.quick else 300
    rows, acc = [], {}
    for name in ("draft", "target"):
        model, tok = load_toy_model(name)
        params = sum(p.numel() for p in model.parameters())
        result = evaluate_accuracy(model, tok, SPECS[name].splits().test[:n])
        acc[name] = result["accuracy"]
        by = result["by_steps"]
        rows.append([name, f"{params / 1e6:.2f}M", _pct(result["accuracy"]),
                     *(_pct(by.get(k, float("nan"))) for k in (1, 2, 3))])
    tables = [Table(["model", "parameters", "accuracy", "1 step", "2 steps", "3 steps"], rows,
                    caption=f"greedy accuracy on the first {n} test problems (final answer "
                            "checked by ponder.toy.verify)")]
    findings = [(f"the target model solves {_pct(acc['target'])} of the problems, the draft "
                 f"{_pct(acc['draft'])}: room for a PRM to pick better draft samples and for RSD "
                 "to call the target only where the draft fails")]

    return Section(
        "toy", "The toy world and its models",
        intro="Multi-step arithmetic problems written step by step (steps separated by a blank "
              "line, a final 'Answer: N'), and small Llama models ponder trained on them "
              "(shipped in the package; `ponder toy train` retrains them).",
        tables=tables, findings=findings, seconds=time.perf_counter() - start)


def samplers_section(ctx: Context) -> Section:
    """SPS vs SGLD vs MALA (mass reaching the other modes of a 2-D mixture, from one mode) and
    RTK vs DDPM (diffusion inference), as MMD against gradient / score evaluations."""
    from ..samplers import experiments as ex

    start = time.perf_counter()
    if ctx.quick:
        sps = ex.sps_experiment((2,), chains=200, budget=200, checkpoints=4, seed=ctx.seed,
                                quick=True, progress=ctx.progress)
        rtk = ex.rtk_experiment((2,), n=300, seed=ctx.seed, quick=True, progress=ctx.progress)
    else:
        sps = ex.sps_experiment((2,), chains=1000, budget=800, checkpoints=16, seed=ctx.seed,
                                quick=True, progress=ctx.progress)
        rtk = ex.rtk_experiment((2,), n=1000, seed=ctx.seed, quick=True, progress=ctx.progress)

    floor = next(r for r in sps if r.sampler == "floor")
    level = max(2 * floor.mmd, 0.005)
    rows = []
    for name, params in dict.fromkeys((r.sampler, r.params) for r in sps if r.sampler != "floor"):
        runs = [r for r in sps if (r.sampler, r.params) == (name, params)]
        half = runs[max(0, math.ceil(len(runs) / 2) - 1)]
        reach = ex._calls_to_reach(runs, level)
        rows.append([name, params, f"{half.mmd:.4f} @ {half.cost}",
                     f"{runs[-1].mmd:.4f} @ {runs[-1].cost}",
                     str(reach) if reach else "not reached"])
    tables = [Table(["sampler", "setting", "MMD^2 @ calls (half)", "MMD^2 @ calls (end)",
                     f"calls to MMD^2 <= {level:.4f}"], rows,
                    caption="2-D mixture, modes at +-5 e_1 and +-5 e_2, all chains start in one "
                            f"mode (exact-sample floor {floor.mmd:.4f})")]
    rfloor = next(r for r in rtk if r.sampler == "floor")
    tables.append(Table(["sampler", "setting", "score evaluations", "MMD^2"],
                        [[r.sampler, r.params, str(r.cost), f"{r.mmd:.4f}"]
                         for r in rtk if r.sampler != "floor"],
                        caption="diffusion inference on a 2-D mixture (exact-sample floor "
                                f"{rfloor.mmd:.4f})"))
    try:
        images = ex.plot(sps, rtk, ctx.out)
    except ImportError:  # matplotlib is optional
        images = []
    findings = [line.removeprefix("- ") for line in ex.findings(sps, rtk).splitlines()]
    return Section(
        "samplers", "Samplers: SPS and RTK against their baselines",
        intro="ponder.samplers on the fused Langevin kernels (ponder.ops.langevin): the "
              "stochastic proximal samplers against SGLD and MALA, and reverse-transition-kernel "
              "diffusion inference against DDPM. `ponder experiments samplers` runs the full "
              "grids in d = 2, 10, 50.",
        tables=tables, findings=findings, images=images, seconds=time.perf_counter() - start)


def _think_rows(model, tokenizer, prompts, settings, *, batch_size, max_new_tokens):
    """Dense, then ThinK at each of ``settings``: rows of (name, KiB, ratio, tokens/s, texts).

    tokens/s is the decode tokens of a step over the median step time: one step the shared
    machine delays does not move it (a sum over 15 steps of a few ms moved by 2x)."""
    import statistics

    import torch

    from ..kv import apply_think, remove_think
    from ..kv.measure import generate_measured

    gen_kw = {"batch_size": batch_size, "max_new_tokens": max_new_tokens}
    runs, steps = {}, {}
    with torch.inference_mode():
        steps["dense"] = []
        runs["dense"] = generate_measured(model, tokenizer, prompts, **gen_kw,
                                          step_seconds=steps["dense"])
        for name, kwargs in settings.items():
            apply_think(model, **kwargs)
            steps[name] = []
            try:
                runs[name] = generate_measured(model, tokenizer, prompts, **gen_kw,
                                               step_seconds=steps[name])
            finally:
                remove_think(model)
    rows = []
    for name, (texts, (_, used), seconds, tokens) in runs.items():
        gaps = steps[name]
        rate = (tokens / len(gaps) / statistics.median(gaps)) if gaps else float("nan")
        rows.append((name, used / 2**10, used / runs["dense"][1][1], rate, texts))
    return rows


def think_section(ctx: Context) -> Section:
    """ThinK: the toy target model patched with ponder.kv.apply_think (accuracy and agreement
    with the dense cache are kept), long-context retrieval with the toy retrieval model
    (accuracy by prune ratio), and a random-init Llama at a long prompt (bytes, speed)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from ..toy import SPECS, load_toy_model, make_tokenizer, verify

    start = time.perf_counter()
    # 1. The toy target on arithmetic test problems. Its prompts are short (about 20 tokens),
    # hence a small observation window and recent store: the pruning still covers most keys.
    n = 16 if ctx.quick else 96
    problems = SPECS["target"].splits().test[:n]
    model, tok = load_toy_model("target")
    short = {f"ThinK lambda={r}": {"prune_ratio": r, "window": 8, "recent": 8}
             for r in (0.4, 0.5)}
    rows = _think_rows(model, tok, [p.prompt for p in problems], short, batch_size=16,
                       max_new_tokens=max(len(p.target) for p in problems) + 8)
    dense_texts = rows[0][4]
    table1 = Table(
        ["cache", "KV KiB (batch of 16)", "vs dense", "accuracy", "same output as dense"],
        [[name, f"{kib:,.1f}", f"{ratio:.3f}",
          _pct(sum(verify(p, t) for p, t in zip(problems, texts)) / n),
          f"{sum(a == b for a, b in zip(texts, dense_texts))}/{n}"]
         for name, kib, ratio, _, texts in rows],
        caption=f"the toy target model on {n} arithmetic test problems, greedy; window 8, "
                "recent 8 (prompts are ~20 tokens)")

    # 2. Long-context retrieval: the trained lookup model answers from the (pruned) cache.
    table_r, retrieval, image = _think_retrieval(ctx)

    # 3. A random-init Llama (GQA, head dim 64) at a long prompt: what the cache holds, and
    # decode speed. Its outputs mean nothing; the bytes and the time do.
    length = 512 if ctx.quick else 4096
    torch.manual_seed(ctx.seed)
    config = LlamaConfig(vocab_size=len(make_tokenizer()), hidden_size=512, intermediate_size=1024,
                         num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2,
                         max_position_embeddings=length + 64, pad_token_id=0, bos_token_id=1,
                         eos_token_id=2)
    big = LlamaForCausalLM(config).eval()
    big.generation_config.update(eos_token_id=None)  # decode exactly max_new_tokens
    prompt = "".join(str(i % 10) for i in range(length - 1))
    long = {f"ThinK lambda={r}": {"prune_ratio": r} for r in (0.4, 0.5)}
    rows2 = _think_rows(big, tok, [prompt], long, batch_size=1, max_new_tokens=16)
    table2 = Table(["cache", "KV KiB", "vs dense", "decode tokens/s"],
                   [[name, f"{kib:,.0f}", f"{ratio:.3f}", f"{rate:,.1f}"]
                    for name, kib, ratio, rate, _ in rows2],
                   caption=f"random-init Llama (4 layers, 8 query / 2 KV heads of dim 64), one "
                           f"{length}-token prompt, 16 new tokens (tokens/s: 1 / the median "
                           f"decode step); window 32, recent 32")
    same = [sum(a == b for a, b in zip(r[4], dense_texts)) for r in rows[1:]]
    kept = [lam for lam, accs in retrieval.items() if lam is not None
            and all(acc >= retrieval[None][length] for length, acc in accs.items())]
    broken = [lam for lam in retrieval if lam is not None and lam not in kept]
    findings = [
        (f"long-context retrieval: the lookup model is as accurate with ThinK as with the dense "
         f"cache at every context length at lambda {', '.join(map(str, kept)) or '(none)'}"
         + (f", and not at {', '.join(map(str, broken))}: its lookup head's queries and keys "
            f"live in 72 of its 128 channels, and ThinK keeps the channels the prompt's last "
            f"queries use, until too few are left" if broken else "")),
        (f"keys are half of the cache, so pruning a fraction lambda of their channels holds about "
         f"1 - lambda/2 of the dense bytes: measured {rows2[1][2]:.3f} at lambda = 0.4 and "
         f"{rows2[2][2]:.3f} at 0.5 on the {length}-token prompt"),
        (f"on the toy target, ThinK's greedy outputs equal the dense cache's on at least "
         f"{min(same)} of the {n} problems at every lambda tried"),
    ]
    return Section(
        "think", "ThinK: a channel-pruned KV cache",
        intro="ponder.kv.apply_think(model) patches a loaded Hugging Face model: after prefill "
              "each layer keeps the key channels its last prompt queries use most, stores them "
              "compactly (fewer bytes, for real) and decodes with "
              "ponder.ops.think.pruned_decode_attention; remove_think undoes it.",
        tables=[table1, table_r, table2], findings=findings, images=image,
        seconds=time.perf_counter() - start)


# Three ratios and two lengths show the point (kept at 0.4, lost from 0.6) within the demo's
# budget: an 8K context cost four times the 4K one in prefill alone (ponder think --model
# retrieval --context N measures any length).
_RETRIEVAL_LAMBDAS = (0.4, 0.6, 0.8)


def _think_retrieval(ctx: Context):
    """The trained toy retrieval model with a dense cache and with ThinK at several lambdas, at
    each context length: (table, {lambda: {length: accuracy}}, images)."""
    from ..toy import load_toy_model, make_retrieval, verify_retrieval

    model, tok = load_toy_model("retrieval")
    lengths, n = ((512,), 8) if ctx.quick else ((1024, 4096), 8)
    settings = {f"ThinK lambda={lam}": {"prune_ratio": lam} for lam in _RETRIEVAL_LAMBDAS}
    accuracy: dict[float | None, dict[int, float]] = {}
    table_rows = {}
    for length in lengths:
        examples = make_retrieval(n, context_tokens=length, seed=ctx.seed + length)
        runs = _think_rows(model, tok, [e.prompt for e in examples], settings, batch_size=8,
                           max_new_tokens=2)
        for (name, kib, ratio, _, texts), lam in zip(runs, (None, *_RETRIEVAL_LAMBDAS)):
            acc = sum(verify_retrieval(e, t) for e, t in zip(examples, texts)) / n
            accuracy.setdefault(lam, {})[length] = acc
            table_rows.setdefault(name, [name]).extend([_pct(acc), f"{ratio:.3f}"])
    header = ["cache"]
    for length in lengths:
        header += [f"accuracy @ {length}", f"KV bytes vs dense @ {length}"]
    table = Table(header, list(table_rows.values()),
                  caption=f"the trained toy retrieval model (2 layers, 8 heads of dim 128), {n} "
                          "lookups per context length (keys of 4 digits among distractor pairs, "
                          "a 1-digit value read in a decode step; chance 10%); ThinK window 32, "
                          "recent 32")
    images = []
    try:
        plt = pyplot("the ThinK retrieval figure")
    except ImportError:  # matplotlib is optional
        return table, accuracy, images
    fig, ax = plt.subplots(figsize=(5, 3.2))
    lams = [0.0, *_RETRIEVAL_LAMBDAS]
    for length in lengths:
        ax.plot(lams, [100 * accuracy[None if lam == 0.0 else lam][length] for lam in lams],
                marker="o", label=f"{length} tokens")
    ax.axhline(10, color="grey", lw=0.8, ls="--", label="chance")
    ax.set_xlabel("ThinK prune ratio lambda (0 = dense)")
    ax.set_ylabel("lookup accuracy (%)")
    ax.set_ylim(-5, 105)
    ax.legend(frameon=False)
    images.append(save(fig, ctx.out / "think_retrieval.png", dpi=120))
    return table, accuracy, images


def prm_section(ctx: Context) -> Section:
    """The toy PRM: how well it judges steps, and best-of-N with it against majority vote."""
    from ..toy import SPECS
    from ..toy.prm import evaluate_toy_prm, load_toy_prm

    start = time.perf_counter()
    n, samples = (16, 4) if ctx.quick else (150, 8)
    problems = SPECS["target"].splits().test[:n]
    prm = load_toy_prm()
    result = evaluate_toy_prm(prm, problems, n=samples, seed=ctx.seed + 1)
    bon = result["best_of_n"]["accuracy"]
    names = {"first": "first sample", "majority": "majority vote", "oracle": "oracle (any right)"}
    rows = [[names.get(rule, rule.replace("prm-", "PRM, ") + " step score"), _pct(acc)]
            for rule, acc in bon.items()]
    steps = result["steps"]
    judge = Table(["steps judged", "AUC", "accuracy at 0.5"],
                  [[f"{steps['n']:,}", f"{steps['auc']:.3f}", _pct(steps["accuracy"])]],
                  caption="step-level judgement on held-out draft samples and corrupted "
                          "solutions (labels from step-by-step verification)")
    best = max((v for k, v in bon.items() if k.startswith("prm-")), default=float("nan"))
    findings = [(f"choosing among {samples} draft samples by the PRM's score: {_pct(best)} right, "
                 f"against {_pct(bon.get('majority', float('nan')))} for majority vote and "
                 f"{_pct(bon.get('first', float('nan')))} for the first sample")]
    return Section(
        "prm", "Process reward model: judging steps and best-of-N",
        intro="ponder.toy.load_toy_prm() is a ponder.rewards.ProcessRewardModel whose small "
              "head (152 parameters, trained by ponder's PRMTrainer on ER-PRM rollouts of the "
              "toy draft) reads the frozen toy target's token log-probabilities of each step: it "
              "checks the arithmetic of the step it scores (ponder.ops.prm.score_steps at the "
              "step tags).",
        tables=[judge, Table(["selection rule", "accuracy"], rows,
                             caption=f"best-of-{samples} over {n} test problems, draft samples at "
                                     "temperature 1")],
        findings=findings, seconds=time.perf_counter() - start)


FREE_RUN = "RSD, draft-side PRM from the draft's pass, delta=0.93"


def rsd_section(ctx: Context) -> Section:
    """RSD with the toy models: accuracy and estimated FLOPs against draft-only and target-only."""
    import math

    from ..decoding import rsd_generate
    from ..toy import SPECS, ToyOracleScorer, load_toy_model, verify
    from ..toy.prm import load_toy_prm

    start = time.perf_counter()
    n = 24 if ctx.quick else 300
    problems = SPECS["target"].splits().test[:n]
    draft, tok = load_toy_model("draft")
    target, _ = load_toy_model("target")
    prm = load_toy_prm()
    free = load_toy_prm(kind="check-draft-local")
    runs = [("draft only", None, -math.inf), ("target only", None, math.inf)]
    runs += [(f"RSD, toy PRM, delta={d}", prm, d) for d in (0.3, 0.5)]
    runs.append((FREE_RUN, free, 0.93))
    runs.append(("RSD, oracle step checker", ToyOracleScorer(problems), 0.5))
    stats = {}
    for name, scorer, delta in runs:
        stats[name] = rsd_generate(draft, target, scorer, problems, tokenizer=tok, delta=delta,
                                   verifier=verify, prm_from_draft=scorer is free).stats
    ref = stats["target only"]["flops"]
    rows = []
    for name, st in stats.items():
        steps = st["draft_steps"] + st["target_steps"]
        rows.append([name, _pct(st["accuracy"]),
                     _pct(st["target_steps"] / steps) if steps else "-",
                     f"{st['flops'] / ref:.2f}", f"{(st['flops'] - st['flops_prm']) / ref:.2f}"])
    table = Table(["run", "accuracy", "steps by the target", "FLOPs vs target only",
                   "same, PRM cost left out"], rows,
                  caption=f"{n} test problems, greedy; FLOPs estimated as 2 x parameters per "
                          "token per model (the toy PRM costs one target forward per token; the "
                          "draft-side PRM scores from the draft's own pass: only its 152-"
                          "parameter head runs)")
    best = max((k for k in stats if k.startswith("RSD, toy PRM")),
               key=lambda k: stats[k]["accuracy"])
    st = stats[best]
    findings = [
        (f"{best}: {_pct(st['accuracy'])} right (draft only {_pct(stats['draft only']['accuracy'])},"
         f" target only {_pct(stats['target only']['accuracy'])}) at "
         f"{(st['flops'] - st['flops_prm']) / ref:.2f} of the target-only FLOPs without the PRM's "
         f"cost, {st['flops'] / ref:.2f} with it"),
        ("FLOPs are only saved when scoring a step costs much less than writing it: the paper's "
         "PRMs are small next to their targets, while the toy PRM reads the toy target itself "
         "(one target forward per scored token)"),
        (f"{FREE_RUN}: {_pct(stats[FREE_RUN]['accuracy'])} right at "
         f"{stats[FREE_RUN]['flops'] / ref:.2f} of the target-only FLOPs, the PRM included "
         "(a head on the draft's own token log-probs, trained on exact step labels of the "
         "draft's solutions, scoring each step from the draft's generation pass)"),
    ]
    return Section(
        "rsd", "RSD: reward-guided speculative decoding",
        intro="ponder.decoding.rsd_generate with the toy draft and target models and the toy PRM "
              "(and, for comparison, an oracle step checker that knows the right steps).",
        tables=[table], findings=findings, seconds=time.perf_counter() - start)


def mathhay_section(ctx: Context) -> Section:
    """MathHay offline: synthetic tasks, quality control in the sandbox, haystacks cut to a token
    budget, and the evaluation harness checked with the oracle reader."""
    from ..mathhay import (OracleReader, SandboxUnavailableError, evaluate, generate_benchmark,
                           quality_control)

    start = time.perf_counter()
    bench = generate_benchmark(tasks_per_type=1 if ctx.quick else 2, n_documents=60,
                               seed=ctx.seed)
    findings = []
    try:
        reports = quality_control(bench["tasks"], bench["documents"])
        seconds = sum(r["sandbox_seconds"] for r in reports)
        kept = {r["task_id"] for r in reports if r["consistent"]}
        findings.append(f"quality control: {len(kept)}/{len(reports)} tasks consistent (solve() "
                        f"in the sandbox against an independent reader of the text), "
                        f"{len(reports) / seconds:.1f} solves/s")
        bench = dict(bench, tasks=[t for t in bench["tasks"] if t["task_id"] in kept])
    except SandboxUnavailableError as err:
        findings.append(f"quality control skipped: the sandbox cannot be built here ({err.limit})")
    budgets = [4096, 16384] if ctx.quick else [4096, 16384, 32768]
    placements = ["first", "middle", "last"]
    recs = evaluate(bench, OracleReader(), budgets=budgets, placements=placements)
    rows = []
    for b in budgets:
        for p in placements:
            mine = [r for r in recs if r["budget"] == b and r["placement"] == p
                    and r["correct"] is not None]
            rows.append([f"{b:,}", p, len(mine),
                         f"{max(r['n_tokens'] for r in mine):,}" if mine else "-",
                         _pct(sum(r["correct"] for r in mine) / len(mine)) if mine else "-"])
    answered = [r for r in recs if r["correct"] is not None]
    right = sum(r["correct"] for r in answered)
    findings.append(f"the oracle reader answers {right}/{len(answered)} prompts right"
                    + (": the relevant documents are in each haystack, whole, and the scoring "
                       "is right" if right == len(answered) else
                       ": some haystack lost its relevant documents, or the scoring is wrong"))
    return Section(
        "mathhay", "MathHay: a long-context math benchmark, offline",
        intro="ponder.mathhay.generate_benchmark writes documents about invented companies and "
              "tasks of the seven types (steps x documents) with solve() code; quality control "
              "runs the code in the sandbox (namespaces, chroot, no privileges, limits); "
              "build_haystack cuts each prompt to a token budget (regex tokenizer here) with the "
              "relevant documents at document boundaries.",
        tables=[Table(["budget", "placement", "prompts", "most tokens", "oracle accuracy"], rows,
                      caption="prompts cut to the budget; the oracle reads the documents' text")],
        findings=findings, seconds=time.perf_counter() - start)


def oreo_section(ctx: Context) -> Section:
    """OREO's test-time side: value-guided beam search with the shipped toy OREO policy and value
    model, against greedy decoding of the same policy and of the SFT policy (the toy draft)."""
    from ..decoding.value_search import value_beam_search
    from ..toy import SPECS, evaluate_accuracy, load_toy_model, verify
    from ..toy.oreo import load_toy_oreo

    start = time.perf_counter()
    n, beam = (8, 2) if ctx.quick else (100, 4)
    problems = SPECS["draft"].splits().test[:n]
    policy, value, tok = load_toy_oreo()
    draft, _ = load_toy_model("draft")
    greedy = {name: evaluate_accuracy(m, tok, problems)["accuracy"]
              for name, m in (("SFT policy (toy draft), greedy", draft),
                              ("OREO policy, greedy", policy))}
    res = value_beam_search(policy, value, tok, [p.prompt for p in problems], beam_width=beam,
                            max_new_tokens=max(len(p.target) for p in problems) + 16,
                            seed=ctx.seed)
    beam_acc = sum(verify(p, t) for p, t in zip(problems, res.texts)) / n
    rows = [[name, _pct(acc), "-"] for name, acc in greedy.items()]
    rows.append([f"OREO policy, value beam search (B = {beam})", _pct(beam_acc),
                 f"{res.sampled_tokens:,}"])
    best_greedy = max(greedy.values())
    verdict = "above" if beam_acc > best_greedy else "not above"
    why = (": the toy value model does not rank samples usefully yet" if beam_acc <= best_greedy
           else "")
    findings = [f"value-guided beam search is {verdict} greedy decoding on the toy world "
                f"({_pct(beam_acc)} against {_pct(best_greedy)}){why}; docs/oreo.md has the "
                "full comparison (RFT, token vs step level, best-of-N by the value) and "
                "`ponder oreo effect` reruns it"]
    return Section(
        "oreo", "OREO: value-guided beam search",
        intro="ponder.toy.oreo.load_toy_oreo() is a step-level OREO policy and value model "
              "trained by ponder.train.OREOTrainer from the toy draft on its own verified "
              "samples; ponder.decoding.value_beam_search samples B x B next steps, keeps the B "
              "the value model rates best and carries their KV caches to the next step.",
        tables=[Table(["decoding", "accuracy", "tokens sampled"], rows,
                      caption=f"the first {n} test problems")],
        findings=findings, seconds=time.perf_counter() - start)


SECTIONS: dict[str, Callable[[Context], Section]] = {
    "toy": toy_section,
    "think": think_section,
    "prm": prm_section,
    "rsd": rsd_section,
    "oreo": oreo_section,
    "samplers": samplers_section,
    "mathhay": mathhay_section,
}
