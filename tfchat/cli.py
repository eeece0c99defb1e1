"""What the `python -m tfchat.<command>` modules share, so that each only
parses its arguments and calls the library:

  * `command`, the one error wrapper: a `TfchatError` from a command's
    `main` is printed as `error: <message>` on stderr and `main` returns 1;
  * the flags several commands declare alike: `add_sampling_flags`,
    `add_quantize_flag`, `add_checkpoint_flag`;
  * loading the run a command works on: `load_command_run`, and
    `load_run_to_evaluate` (which checkpoint `tfchat.evaluate` measures).

Importing it loads no TensorFlow: `--help` and argument errors answer fast.
"""

import functools
import sys

from tfchat.errors import TfchatError


def command(main):
    """Decorates a command's `main(argv=None)`: a `TfchatError` it raises
    becomes the one line `error: <message>` on stderr and the return value
    1 (the exit code, `sys.exit(main())`). Anything else passes through."""

    @functools.wraps(main)
    def run(argv=None):
        try:
            return main(argv)
        except TfchatError as e:
            from tfchat.data.cleaned import name_sources

            print(f"error: {name_sources(str(e))}", file=sys.stderr)
            return 1

    return run


def run_command(main, argv=None):
    """Calls `main(argv)` as `command` wraps it; returns the exit code."""
    return command(main)(argv)


SAMPLING_HELP = {
    "temperature": "0 = greedy (always the most likely token); higher = more random.",
    "top_k": "Sample from the k most likely tokens (0 = all).",
    "top_p": "Nucleus sampling threshold (1 = off).",
    "repetition_penalty": "Divide the logits of tokens already present by this (1 = off).",
    "stop": "Stop before this text (repeatable).",
    "seed": "Seed for reproducible samples.",
}


def add_sampling_flags(parser, temperature=0.8, top_k=0, help_texts=None):
    """Adds the six sampling flags of the commands that generate text:
    --temperature, --top-k, --top-p, --repetition-penalty, --stop
    (repeatable) and --seed. `temperature` and `top_k` are the command's
    defaults; `help_texts` replaces flags' help by name ({"stop": ...})."""
    help_texts = help_texts or {}
    unknown = set(help_texts) - set(SAMPLING_HELP)
    if unknown:
        raise ValueError(f"No sampling flag {sorted(unknown)}; they are {sorted(SAMPLING_HELP)}.")
    texts = {**SAMPLING_HELP, **help_texts}
    parser.add_argument("--temperature", type=float, default=temperature, help=texts["temperature"])
    parser.add_argument("--top-k", type=int, default=top_k, help=texts["top_k"])
    parser.add_argument("--top-p", type=float, default=1.0, help=texts["top_p"])
    parser.add_argument("--repetition-penalty", type=float, default=1.0,
                        help=texts["repetition_penalty"])
    parser.add_argument("--stop", action="append", default=[], help=texts["stop"])
    parser.add_argument("--seed", type=int, default=None, help=texts["seed"])
    return parser


def sampling_options(args):
    """The sampling flags of `add_sampling_flags` as the keyword arguments
    of `Generator.generate` and `ChatSession`."""
    return dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                repetition_penalty=args.repetition_penalty, seed=args.seed,
                stop_strings=list(args.stop))


QUANTIZE_MODES = ("int8",)  # tfchat.run.QUANTIZE_MODES, without importing TensorFlow for --help
QUANTIZE_HELP = ("Quantize the weights first (int8: weight-only, per channel; see "
                 "python -m tfchat.export --help).")


def add_quantize_flag(parser, help=QUANTIZE_HELP):
    """Adds --quantize (int8, or off by default)."""
    parser.add_argument("--quantize", choices=QUANTIZE_MODES, default=None, help=help)
    return parser


CHECKPOINT_HELP = ("Which checkpoint of the run to load (default: latest; for a dpo "
                   "run best: see README, Preference tuning).")


def add_checkpoint_flag(parser, default=None, help=CHECKPOINT_HELP, choices=("best", "latest")):
    """Adds --checkpoint (best or latest; by default the run's own choice,
    `tfchat.run.default_checkpoint`)."""
    parser.add_argument("--checkpoint", choices=choices, default=default, help=help)
    return parser


def load_command_run(path, checkpoint=None, quantize=None, generates=False, forward_pass=True):
    """The run at `path` as a command uses it: its `checkpoint` (default:
    the run's own choice), checked to generate text when `generates` (or
    when quantized: only GPTs are), and quantized when `quantize` names a
    mode. `forward_pass=False` skips building the model's training graph."""
    from tfchat.run import check_generates, load_run, quantized_run

    run = load_run(path, checkpoint=checkpoint, forward_pass=forward_pass)
    if generates:
        run = check_generates(run)
    if quantize:
        run = quantized_run(run, quantize)
    return run


def load_run_to_evaluate(path, checkpoint=None, quantize=None):
    """The run at `path` with the checkpoint `tfchat.evaluate` measures
    (`Run.checkpoint` says which): `checkpoint` if given; for the objectives
    that generate text, the one chat, generate and export use (the latest:
    the default chat job learns its conversations by heart, and its
    validation loss is lowest a third of the way in, long before it recalls
    them; or a dpo run's best); for the others the best, the lowest
    validation loss, or the latest while no evaluation has saved a best."""
    from tfchat import objectives
    from tfchat.run import RunFolder, load_run, quantized_run

    if checkpoint or objectives.get(RunFolder(path).read_config().objective).generates:
        run = load_run(path, checkpoint=checkpoint)
    else:
        try:
            run = load_run(path, checkpoint="best")
        except TfchatError:
            # No evaluation has saved a best checkpoint yet (an interrupted run).
            run = load_run(path, checkpoint="latest")
    if quantize:
        run = quantized_run(run, quantize)
    return run
