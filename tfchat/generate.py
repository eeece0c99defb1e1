"""Sample text from a trained run: `python -m tfchat.generate`.

    python -m tfchat.generate --run runs/default --prompt "User: Hello" \\
        --max-new-tokens 200 --temperature 0.8 --top-k 40 --seed 1

`--temperature 0` is greedy; sampling is `tfchat.inference.generator`'s.
"""

import argparse
import sys

from tfchat import quiet

quiet.command_startup(__name__, fast_exit=True)  # first, before anything imports TensorFlow

from tfchat.errors import TfchatError


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m tfchat.generate",
        description="Sample text from a trained tfchat run.",
    )
    parser.add_argument("--run", required=True, help="Run folder, e.g. runs/default.")
    parser.add_argument("--prompt", action="append", default=None,
                        help="Prompt text (repeat for a batch; \\n is a newline). Default: a newline.")
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--checkpoint", choices=("best", "latest"), default=None,
                        help="Which checkpoint of the run to load (default: latest; for a dpo "
                             "run best: see README, Preference tuning).")
    parser.add_argument("--quantize", choices=("int8",), default=None,
                        help="Quantize the weights first (int8: weight-only, per channel; see "
                             "python -m tfchat.export --help).")
    parser.add_argument("--temperature", type=float, default=0.8,
                        help="0 = greedy; higher = more random.")
    parser.add_argument("--top-k", type=int, default=0, help="Sample from the k most likely tokens (0 = all).")
    parser.add_argument("--top-p", type=float, default=1.0, help="Nucleus sampling threshold (1 = off).")
    parser.add_argument("--repetition-penalty", type=float, default=1.0,
                        help="Divide the logits of tokens already present by this (1 = off).")
    parser.add_argument("--stop", action="append", default=[],
                        help="Stop before this text (repeatable; \\n is a newline).")
    parser.add_argument("--seed", type=int, default=None, help="Seed for reproducible samples.")
    quiet.add_verbose_flag(parser)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    from tfchat.inference.generator import Generator
    from tfchat.run import check_generates, load_run, quantized_run

    try:
        run = check_generates(load_run(args.run, checkpoint=args.checkpoint, forward_pass=False))
        if args.quantize:
            run = quantized_run(run, args.quantize)
        prompts = [p.replace("\\n", "\n") for p in (args.prompt or ["\n"])]
        generator = Generator(run.backbone, run.tokenizer)
        texts = generator.generate(
            prompts, args.max_new_tokens, args.temperature, args.top_k,
            args.top_p, args.seed, repetition_penalty=args.repetition_penalty,
            stop_strings=[s.replace("\\n", "\n") for s in args.stop],
        )
    except TfchatError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for prompt, text in zip(prompts, texts):
        print(prompt + text)
        if len(texts) > 1:
            print("-" * 40)
    return 0


if __name__ == "__main__":
    sys.exit(main())
