"""Sample text from a trained run: `python -m tfchat.generate`.

    python -m tfchat.generate --run runs/default --prompt "User: Hello" \\
        --max-new-tokens 200 --temperature 0.8 --top-k 40 --seed 1

`--temperature 0` is greedy; sampling is `tfchat.inference.generator`'s.
"""

import argparse
import sys

from tfchat import quiet

quiet.command_startup(__name__, fast_exit=True)  # first, before anything imports TensorFlow

from tfchat import cli


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m tfchat.generate",
        description="Sample text from a trained tfchat run.",
    )
    parser.add_argument("--run", required=True, help="Run folder, e.g. runs/default.")
    parser.add_argument("--prompt", action="append", default=None,
                        help="Prompt text (repeat for a batch; \\n is a newline). Default: a newline.")
    parser.add_argument("--max-new-tokens", type=int, default=200)
    cli.add_checkpoint_flag(parser)
    cli.add_quantize_flag(parser)
    cli.add_sampling_flags(parser, temperature=0.8, top_k=0, help_texts={
        "temperature": "0 = greedy; higher = more random.",
        "stop": "Stop before this text (repeatable; \\n is a newline)."})
    quiet.add_verbose_flag(parser)
    return parser


@cli.command
def main(argv=None):
    args = build_parser().parse_args(argv)
    from tfchat.inference.generator import Generator

    run = cli.load_command_run(args.run, args.checkpoint, args.quantize, generates=True,
                               forward_pass=False)
    prompts = [p.replace("\\n", "\n") for p in (args.prompt or ["\n"])]
    options = cli.sampling_options(args)
    options["stop_strings"] = [s.replace("\\n", "\n") for s in args.stop]
    texts = Generator(run.backbone, run.tokenizer).generate(prompts, args.max_new_tokens, **options)
    for prompt, text in zip(prompts, texts):
        print(prompt + text)
        if len(texts) > 1:
            print("-" * 40)
    return 0


if __name__ == "__main__":
    sys.exit(main())
