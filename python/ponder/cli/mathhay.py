"""``ponder mathhay``: the MathHay long-context math benchmark, offline by default.

    ponder mathhay                                   the whole offline benchmark, end to end
    ponder mathhay generate --out bench.json         synthetic documents and tasks
    ponder mathhay qc --benchmark bench.json --keep kept.json    sandboxed quality control
    ponder mathhay haystack --benchmark kept.json --budget 32768 --output stacks.jsonl
    ponder mathhay eval --benchmark kept.json --budget 1024 --policy toy-target \\
        --results results.jsonl --table table.md --heatmap heat.png

``eval`` asks the shipped toy models (``toy-target``, ``toy-draft``), a transformers model folder,
an OpenAI-compatible server (``--server URL --model NAME``; the key from ``PONDER_SERVER_KEY`` or
``OPENAI_API_KEY``), or ``oracle`` (reads the documents: the harness's own check). Budgets count
tokens of ``--tokenizer``: ``regex`` (words and punctuation), ``toy`` (characters),
``tiktoken:NAME`` or a local tokenizer folder; by default the local model's own tokenizer.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from . import checks
from .generation import add_server_options, text_generator

TOY_LMS = ("toy-target", "toy-draft")
ORACLE = "oracle"


def _read_benchmark(path: str) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except ValueError as err:
        raise checks.CommandError(f"--benchmark {path}: not JSON: {err}") from None
    if not (isinstance(data, dict) and isinstance(data.get("documents"), list)
            and isinstance(data.get("tasks"), list)):
        raise checks.CommandError(f"--benchmark {path}: expected a JSON object with 'documents' "
                                  "and 'tasks' lists (as `ponder mathhay generate` writes)")
    return data


def _write_json(path: str | Path, data) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, allow_nan=True) + "\n")


def _tokenizer(name: str | None, local_tok=None):
    """The budget's tokenizer object (None: the regex tokenizer)."""
    if name is None:
        return local_tok
    if name == "regex":
        return None
    if name == "toy":
        from ..toy.tokenizer import make_tokenizer

        return make_tokenizer()
    if name.startswith("tiktoken:"):
        try:
            import tiktoken

            return tiktoken.get_encoding(name.split(":", 1)[1])
        except Exception as err:  # no package, or the encoding file is not cached offline
            raise checks.CommandError(f"--tokenizer {name}: {type(err).__name__}: "
                                      f"{str(err)[:200]}") from None
    if not Path(name).is_dir():
        raise checks.CommandError(f"--tokenizer {name}: not regex, toy, tiktoken:NAME or a "
                                  "tokenizer folder")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name, local_files_only=True)


def _folder(text: str) -> str:
    if not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"not a folder: {text}")
    return text


def _placement(text: str):
    if text in ("first", "middle", "last"):
        return text
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"must be first, middle, last or a percentile in "
                                         f"[0, 100], got {text!r}")
    return value


def _generate(args, out: str | None = None) -> dict:
    from ..mathhay import generate_benchmark

    bench = generate_benchmark(tasks_per_type=args.tasks_per_type, n_documents=args.documents,
                               seed=args.seed, metrics_per_document=args.metrics_per_document,
                               filler_sentences=args.filler_sentences)
    _write_json(out or args.out, bench)
    print(f"wrote {len(bench['documents'])} documents and {len(bench['tasks'])} tasks to "
          f"{out or args.out}")
    return bench


def _generate_with_llm(args) -> dict:
    """Tasks written by a language model over the documents of ``--corpus`` (the original's
    chain from the documents on; topics and queries need a search, which is not a command)."""
    import random

    from ..mathhay import CachedGenerator, TASK_TYPES
    from ..mathhay.llm_generation import corpus_documents, generate_tasks

    docs = corpus_documents(args.corpus)
    if not docs:
        raise checks.CommandError(f"--corpus {args.corpus}: no .txt or .md file passes the "
                                  "original's filters (>10 distinct numbers, >=10 sentences, "
                                  ">=400 words)")
    rng = random.Random(args.seed)
    tasks = []
    with text_generator(args, lambda: _load_policy(args.policy, args)) as (gen, _):
        if args.cache:
            gen = CachedGenerator(gen, args.cache, name=str(args.server_model or args.policy))
        for task_type in TASK_TYPES:
            need = {"sd": 1, "2d": 2, "3d": 3}[task_type[2:]]
            if need > len(docs):
                print(f"  {task_type}: skipped, the corpus has fewer than {need} documents")
                continue
            for k in range(args.tasks_per_type):
                task = generate_tasks(gen, rng.sample(docs, need), task_type,
                                      task_id=f"{task_type}-{k:04d}",
                                      max_new_tokens=args.max_new_tokens)
                if task is None:
                    print(f"  {task_type}-{k:04d}: no aligned task after the refinement")
                else:
                    tasks.append(task)
    bench = {"documents": docs, "tasks": tasks}
    _write_json(args.out, bench)
    print(f"wrote {len(docs)} documents and {len(tasks)} tasks to {args.out}")
    return bench


def _cmd_generate(args) -> int:
    if args.corpus:
        _generate_with_llm(args)
    else:
        for flag, value in (("--server", args.server), ("--cache", args.cache)):
            if value:
                raise checks.CommandError(f"{flag} needs --corpus (the synthetic generator "
                                          "asks no model)")
        _generate(args)
    return 0


def _qc(bench: dict, output: str | None, keep: str | None, rel_tol: float,
        independent=None) -> dict:
    from ..mathhay import SandboxUnavailableError, quality_control

    start = time.monotonic()
    try:
        reports = quality_control(bench["tasks"], bench["documents"], rel_tol=rel_tol,
                                  independent=independent)
    except SandboxUnavailableError as err:
        raise checks.CommandError(f"quality control needs the sandbox, which this host cannot "
                                  f"build ({err.limit}): {err}") from None
    seconds = time.monotonic() - start
    good = {r["task_id"] for r in reports if r["consistent"]}
    print(f"quality control: {len(good)}/{len(reports)} tasks consistent; "
          f"{len(reports) / seconds:.1f} solves/s through the sandbox "
          f"({seconds / max(1, len(reports)) * 1000:.0f} ms each)")
    for r in reports:
        if not r["consistent"]:
            print(f"  dropped {r['task_id']}: {r['reason']}")
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        with open(output, "w") as f:
            for r in reports:
                f.write(json.dumps(r, allow_nan=True) + "\n")
    kept = dict(bench, tasks=[t for t in bench["tasks"] if t["task_id"] in good])
    if keep:
        _write_json(keep, kept)
    return kept


def _cmd_qc(args) -> int:
    bench = _read_benchmark(args.benchmark)
    if args.independent == "reader":
        if args.server:
            raise checks.CommandError("--server needs --independent model")
        kept = _qc(bench, args.output, args.keep, args.rel_tol)
    else:
        from ..mathhay.llm_generation import llm_independent

        with text_generator(args, lambda: _load_policy(args.policy, args)) as (gen, _):
            kept = _qc(bench, args.output, args.keep, args.rel_tol,
                       llm_independent(gen, max_new_tokens=args.max_new_tokens))
    return 0 if kept["tasks"] else 1


def _haystacks(bench: dict, budgets, placements, tok, output: str | None) -> None:
    from ..mathhay import build_haystack
    from ..mathhay.haystack import BudgetTooSmall

    f = open(output, "w") if output else None
    try:
        for budget in budgets:
            times, skipped = [], 0
            for task in bench["tasks"]:
                for placement in placements:
                    start = time.monotonic()
                    try:
                        h = build_haystack(task, bench["documents"], budget=budget,
                                           placement=placement, tokenizer=tok)
                    except BudgetTooSmall:
                        skipped += 1
                        continue
                    except ValueError as err:
                        raise checks.CommandError(f"{err} (ponder mathhay generate --documents "
                                                  "N makes more)") from None
                    times.append(time.monotonic() - start)
                    if f is not None:
                        f.write(json.dumps(h) + "\n")
            mean = sum(times) / len(times) if times else float("nan")
            print(f"haystacks at {budget} tokens: {len(times)} built, {mean:.3f} s each"
                  + (f", {skipped} skipped (the relevant documents alone exceed the budget)"
                     if skipped else ""))
    finally:
        if f is not None:
            f.close()


def _cmd_haystack(args) -> int:
    bench = _read_benchmark(args.benchmark)
    _haystacks(bench, args.budget or [32768], args.placement or ["first", "middle", "last"],
               _tokenizer(args.tokenizer), args.output)
    return 0


def _load_policy(name: str, args):
    if name in TOY_LMS:
        from ..toy import load_toy_model

        return load_toy_model(name.removeprefix("toy-"))
    return checks.load_causal_lm(name, "--policy", allow_download=args.allow_download,
                                 allow_pickle=args.allow_pickle)


def _evaluate(bench: dict, args, *, results: str | None, table: str | None,
              heatmap_path: str | None, budgets, placements) -> list[dict]:
    from ..mathhay import CachedGenerator, OracleReader, accuracy_table, evaluate, heatmap

    def run(gen, local_tok, name):
        tok = _tokenizer(args.tokenizer, local_tok)
        if args.cache:
            gen = CachedGenerator(gen, args.cache, name=name)
        start = time.monotonic()
        recs = evaluate(bench, gen, budgets=budgets, placements=placements, results=results,
                        tokenizer=tok, rel_tol=args.rel_tol, max_new_tokens=args.max_new_tokens,
                        batch_size=args.batch_size, model_name=name)
        seconds = time.monotonic() - start
        asked = [r for r in recs if r.get("correct") is not None]
        print(f"evaluated {name}: {len(asked)} prompts answered "
              f"({len(recs) - len(asked)} skipped: the relevant documents exceed the budget) "
              f"in {seconds:.1f} s")
        return recs

    if args.policy == ORACLE and not args.server:
        recs = run(OracleReader(), None, ORACLE)
    else:
        with text_generator(args, lambda: _load_policy(args.policy, args)) as (gen, tok):
            served = getattr(gen, "model", None) if args.server else None
            recs = run(gen, tok, str(args.server_model or served or args.policy))
    text = accuracy_table(recs)
    print(text)
    if table:
        Path(table).parent.mkdir(parents=True, exist_ok=True)
        Path(table).write_text(text)
    if heatmap_path and any(r.get("correct") is not None for r in recs):
        print(f"heatmap: {heatmap(recs, heatmap_path)}")
    return recs


def _cmd_eval(args) -> int:
    bench = _read_benchmark(args.benchmark)
    _evaluate(bench, args, results=args.results, table=args.table, heatmap_path=args.heatmap,
              budgets=args.budget or [1024, 2048, 4096, 8192],
              placements=args.placement or ["first", "middle", "last"])
    return 0


def _cmd_all(args) -> int:
    """The offline benchmark end to end, in ``--out``: generate, quality control, haystacks,
    evaluation (the toy model, and the oracle as the harness's check)."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bench = _generate(args, str(out / "benchmark.json"))
    kept = _qc(bench, str(out / "qc.jsonl"), str(out / "benchmark.qc.json"), args.rel_tol)
    budgets = args.budget or [1024, 2048, 4096, 8192]
    placements = args.placement or ["first", "middle", "last"]
    tok_name = args.tokenizer or ("toy" if args.policy in TOY_LMS else None)
    _haystacks(kept, budgets, placements, _tokenizer(tok_name), None)
    for policy in dict.fromkeys([args.policy, ORACLE]):
        args.policy = policy
        if tok_name is not None:
            args.tokenizer = tok_name
        tag = policy if policy in (*TOY_LMS, ORACLE) else "model"
        _evaluate(kept, args, results=str(out / f"results.{tag}.jsonl"),
                  table=str(out / f"table.{tag}.md"), heatmap_path=str(out / f"heatmap.{tag}.png"),
                  budgets=budgets, placements=placements)
    print(f"everything is in {out}{os.sep}")
    return 0


def _generation_options(q, *, small: bool) -> None:
    q.add_argument("--tasks-per-type", type=checks.positive_int, default=1 if small else 4)
    q.add_argument("--documents", type=checks.int_at_least(3), default=40 if small else 60,
                   help="documents to write (those no task uses fill the haystacks)")
    q.add_argument("--metrics-per-document", type=checks.int_at_least(1, 7),
                   default=1 if small else 3,
                   help="metrics per document, four years each (default %(default)s)")
    q.add_argument("--filler-sentences", type=checks.int_at_least(0, 30),
                   default=2 if small else 30,
                   help="sentences of prose per document (30 passes the original's filters)")
    q.add_argument("--seed", type=checks.seed, default=0)


def _eval_options(q) -> None:
    q.add_argument("--budget", type=checks.positive_int, action="append",
                   help="a token budget; repeat it (default 1024 2048 4096 8192)")
    q.add_argument("--placement", type=_placement, action="append",
                   help="first, middle, last or a percentile; repeat it (default the three)")
    q.add_argument("--policy", default="toy-target",
                   help="toy-target, toy-draft, oracle or a transformers model folder")
    q.add_argument("--tokenizer", default=None,
                   help="regex, toy, tiktoken:NAME or a folder (default: the model's own)")
    q.add_argument("--rel-tol", type=checks.positive_real, default=0.01,
                   help="relative tolerance of a correct answer (default 0.01)")
    q.add_argument("--max-new-tokens", type=checks.positive_int, default=64)
    q.add_argument("--batch-size", type=checks.positive_int, default=1,
                   help="prompts a batch (default 1: long prompts, padded together, cost "
                   "memory)")
    q.add_argument("--cache", default=None, type=checks.output_file,
                   help="a JSONL file of cached responses (a rerun pays for nothing twice)")
    checks.add_model_flags(q)
    add_server_options(q)


def add_parser(subparsers) -> None:
    """Register ``ponder mathhay ...``."""
    p = subparsers.add_parser("mathhay", help="the MathHay long-context math benchmark "
                              "(offline by default)", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="mathhay-run", type=checks.output_dir,
                   help="the folder of the end-to-end run (no subcommand)")
    _generation_options(p, small=True)
    _eval_options(p)
    p.set_defaults(func=_cmd_all, mathhay_command=None)
    sub = p.add_subparsers(dest="mathhay_command")

    g = sub.add_parser("generate", help="synthetic documents and tasks (original schema), or "
                       "tasks written by a model over --corpus")
    g.add_argument("--out", required=True, type=checks.output_file)
    _generation_options(g, small=False)
    llm = g.add_argument_group("tasks written by a language model")
    llm.add_argument("--corpus", type=_folder, default=None,
                     help="a folder of .txt / .md documents: a model (--policy or --server) "
                     "writes the tasks, with the alignment check")
    llm.add_argument("--policy", default="toy-target",
                     help="the local model for --corpus: a transformers folder (or a toy model)")
    llm.add_argument("--max-new-tokens", type=checks.positive_int, default=1024)
    llm.add_argument("--batch-size", type=checks.positive_int, default=1)
    llm.add_argument("--cache", default=None, type=checks.output_file,
                     help="a JSONL file of cached responses")
    checks.add_model_flags(g)
    add_server_options(g)
    g.set_defaults(func=_cmd_generate)

    q = sub.add_parser("qc", help="sandboxed solve() against an independent solution")
    q.add_argument("--benchmark", required=True, type=checks.existing_file)
    q.add_argument("--output", type=checks.output_file, help="per-task reports (JSONL)")
    q.add_argument("--keep", type=checks.output_file, help="the benchmark, consistent tasks only")
    q.add_argument("--rel-tol", type=checks.positive_real, default=1e-6)
    q.add_argument("--independent", choices=["reader", "model"], default="reader",
                   help="the independent solution: 'reader' reads synthetic documents' text; "
                   "'model' asks --policy or --server to answer from the documents")
    q.add_argument("--policy", default="toy-target",
                   help="the local model of --independent model (a transformers folder)")
    q.add_argument("--max-new-tokens", type=checks.positive_int, default=512)
    q.add_argument("--batch-size", type=checks.positive_int, default=1)
    checks.add_model_flags(q)
    add_server_options(q)
    q.set_defaults(func=_cmd_qc)

    h = sub.add_parser("haystack", help="prompts cut to a token budget (JSONL)")
    h.add_argument("--benchmark", required=True, type=checks.existing_file)
    h.add_argument("--budget", type=checks.positive_int, action="append",
                   help="a token budget; repeat it (default 32768)")
    h.add_argument("--placement", type=_placement, action="append")
    h.add_argument("--tokenizer", default="regex")
    h.add_argument("--output", type=checks.output_file)
    h.set_defaults(func=_cmd_haystack)

    e = sub.add_parser("eval", help="ask a model, score, tabulate (resumable)")
    e.add_argument("--benchmark", required=True, type=checks.existing_file)
    e.add_argument("--results", type=checks.output_file, help="JSONL, resumed if it exists")
    e.add_argument("--table", type=checks.output_file, help="the accuracy table (Markdown)")
    e.add_argument("--heatmap", type=checks.output_file, help="a PNG heatmap")
    _eval_options(e)
    e.set_defaults(func=_cmd_eval)
