"""Evaluate a trained run: `python -m tfchat.evaluate --run runs/<name>`.

What is measured depends on the run's objective (its saved config):

    causal    validation loss, perplexity and token accuracy; greedy
              continuations of held-out text by BLEU, chrF, METEOR and
              ROUGE-1/2/L/Lsum
    chat      the same losses on the assistant's tokens only, plus those
              scores of greedy replies to the validation conversations;
              task records (translation, summarisation, qa) add their
              task's metrics, data.group_field every metric per group
    dpo       on the validation preference pairs: the DPO loss, rewards,
              reward accuracy, the chosen reply's log-probability change
              against the reference and how often it is likelier; and
              greedy replies to their prompts, by chrF against the chosen
              and rejected replies (a model can rank every pair right and
              no longer write: these show it)
    mlm       masked-token loss, accuracy and perplexity
    classify  accuracy, macro-F1, per-class precision/recall/F1 and the
              confusion matrix

on the validation split of the run's data, or of `--data` (classify: all of
`--data`). The results are printed and written to runs/<name>/evaluation.json
(and to `--json FILE` if given), each metric with its sample count and a
bootstrap confidence interval; --plots and --report draw them:

    python -m tfchat.evaluate --run runs/clf
    python -m tfchat.evaluate --run runs/clf --data test.csv --json report.json
    python -m tfchat.evaluate --feedback prefs.jsonl judge2.jsonl   # human judgements
    python -m tfchat.evaluate --run runs/chat --plots plots/ --report report.html
"""

import argparse
import dataclasses
import sys
import time

from tfchat import quiet

quiet.command_startup(__name__)  # first, before anything imports TensorFlow

from tfchat import cli


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m tfchat.evaluate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--run", help="Run folder, e.g. runs/default (required but with --feedback).")
    parser.add_argument("--feedback", nargs="+", metavar="FILE", help="Summarise these feedback "
                        "files (chat --feedback, the chat page's) instead: no --run needed.")
    parser.add_argument("--checkpoint", choices=("best", "latest"), default=None,
                        help="Which checkpoint to evaluate (default: the one chat, generate "
                             "and export use: latest for causal and chat runs, best for dpo "
                             "runs; for mlm and classify best, the lowest validation loss; "
                             "latest where the run has no best yet).")
    parser.add_argument("--data", default=None,
                        help="Evaluate on this data instead of the run's (classify: all of it).")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="Default: 32 (causal, chat) or the run's train.batch_size "
                             "(mlm, classify).")
    parser.add_argument("--max-new-tokens", type=int, default=128,
                        help="Longest generated reply (chat; causal: continuation, at most "
                             "half a block).")
    parser.add_argument("--limit", type=int, default=0,
                        help="Evaluate only the first N validation conversations (chat; 0 = all; "
                             "causal: N held-out continuations, 0 = 32).")
    parser.add_argument("--no-xla", dest="jit_compile", action="store_false",
                        help="Generate without XLA (chat; XLA compiles each new batch shape "
                             "once, then decodes much faster).")
    parser.add_argument("--wordnet", default=None, metavar="DIR",
                        help="WordNet for METEOR's synonyms: a WordNet folder or an nltk data "
                             "folder (default: nltk's data, if on this machine; never downloaded).")
    parser.add_argument("--json", default=None, metavar="FILE",
                        help="Also write the results to this JSON file.")
    parser.add_argument("--plots", metavar="DIR", help="Write the pictures (PNG) into DIR.")
    parser.add_argument("--report", metavar="FILE", help="Write one self-contained HTML report.")
    parser.add_argument("--attention-prompt", metavar="TEXT",
                        help="Prompt of the attention and log-probability pictures (runs that "
                             "generate; default: train.sample_prompt, chat runs 'Hello').")
    cli.add_quantize_flag(parser)
    quiet.add_verbose_flag(parser)
    return parser


@cli.command
def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.feedback:  # human judgements (tfchat/evaluation/feedback.py): no run
        from tfchat.evaluation import feedback

        return feedback.command(args.feedback, args.json)
    if not args.run:
        parser.error("the following arguments are required: --run (or --feedback FILE ...)")
    if args.wordnet:
        from tfchat.evaluation import text_metrics

        text_metrics.use_wordnet(args.wordnet)  # a folder without one fails now
    run = cli.load_run_to_evaluate(args.run, args.checkpoint, args.quantize)
    checkpoint = run.checkpoint
    if args.data:
        data = dataclasses.replace(run.config.data, path=args.data)
        run.config = dataclasses.replace(run.config, data=data)
    options = dict(data=args.data, max_new_tokens=args.max_new_tokens, limit=args.limit,
                   jit_compile=args.jit_compile)
    if args.batch_size:
        options["batch_size"] = args.batch_size
    start = time.perf_counter()
    results = run.objective.evaluate(run, **options)
    rows = results.pop("metrics", [])  # the table's rows, written, not printed
    objective = run.config.objective
    results = {"objective": objective, "step": run.step, "checkpoint": checkpoint,
               **({"quantized": args.quantize} if args.quantize else {}), **results,
               "seconds": round(time.perf_counter() - start, 1)}
    where = (f"all of {args.data}" if args.data and run.objective.labelled
             else f"validation split of {run.config.data.path}")
    print(f"{args.run} ({objective}, step {run.step}, {checkpoint} checkpoint), {where}")
    if run.objective.format_results:
        print(run.objective.format_results(results))
    else:
        from tfchat.evaluation.table import format_plain

        print(format_plain({k: v for k, v in results.items() if k != "examples"}))
        for example in results.get("examples", []):
            print(f"\nuser: {example['user']}\nreference: {example['reference']}\nreply: {example['reply']}")
    warning = run.objective.warning(run.config, results)
    if warning:
        print(f"\nWarning: {warning}")
    from tfchat.data.files import write_json_atomic
    from tfchat.evaluation.table import evaluation_table

    results = evaluation_table({**results, "metrics": rows})

    paths = [run.folder.evaluation] + ([args.json] if args.json else [])
    for path in paths:
        write_json_atomic(path, results)
    print(f"\nWrote {', '.join(paths)}")
    if args.plots or args.report:
        from tfchat.evaluation import report

        print(report.pictures(run, results, args.plots, args.report, args.attention_prompt))
    return 0


if __name__ == "__main__":
    sys.exit(main())
