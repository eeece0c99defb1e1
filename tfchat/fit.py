"""Train a language model: `python -m tfchat.fit`.

With no arguments it trains a small chat model (BPE 2,000, 4 layers, width
128, 192-token blocks with several conversations packed into each) on the
English conversations of the chatterbot-corpus package (loss on the
assistant's tokens only; about 5 minutes on 2 CPU cores), which then answers
95% of its single-exchange training prompts with a training reply, and
prints how to chat with it. Everything else comes from config files and `--section.field value`
overrides:

    python -m tfchat.fit --config shakespeare_char
    python -m tfchat.fit --data.path my_corpus/ --tokenizer.kind bpe \\
        --model.num_layers 6 --train.max_steps 5000 --name my_run
    python -m tfchat.fit --name my_run --resume      # continue a stopped run
    python -m tfchat.fit --init_from runs/my_run --data.path chats.jsonl \\
        --model.lora_rank 8 --name my_chat           # chat fine-tuning, LoRA
    python -m tfchat.fit --init_from ./SmolLM2-135M --data.path chats.jsonl \\
        --model.lora_rank 8 --model.block_size 256   # from a pretrained model

`--init_from` takes a run folder, or a pretrained checkpoint (a keras-hub
preset or Hugging Face directory, or an hf:// / kaggle:// handle), which is
first converted into runs/pretrained/ (`python -m tfchat.convert --help`).

Preference tuning (DPO) of a chat run on chosen/rejected pairs (JSONL; see
README's Preference tuning, and `python -m tfchat.chat --feedback`), with
dpo's own defaults for the rate, steps and schedule unless you set them:

    python -m tfchat.fit --objective dpo --init_from runs/my_chat \\
        --data.path prefs.jsonl --name my_dpo

Masked-LM pretraining, then classification fine-tuning from it:

    python -m tfchat.fit --objective mlm --tokenizer.kind wordpiece --name enc
    python -m tfchat.fit --objective classify --tokenizer.kind wordpiece \\
        --init_from runs/enc --data.path labels.csv --name clf

A run lives in runs/<name>/: its config, tokenizer, checkpoints and
TensorBoard logs (tensorboard --logdir runs).
"""

import os
import sys

from tfchat import quiet

quiet.command_startup(__name__)  # first, before anything imports TensorFlow

from tfchat import cli
from tfchat import config as config_lib
from tfchat.errors import TfchatError


def build_parser():
    parser = config_lib.parser_with_config(__doc__, prog="python -m tfchat.fit")
    parser.add_argument(
        "--resume", action="store_true",
        help="Continue the run named by --name from its latest checkpoint.",
    )
    parser.add_argument(
        "--overwrite", action="store_true",
        help="Delete an existing run of the same name and start over.",
    )
    quiet.add_verbose_flag(parser)
    from tfchat.families import supported_families  # pure Python

    parser.epilog = (parser.epilog or "") + (
        "\n\nPretrained families --init_from converts (python -m tfchat.convert --help):\n"
        + supported_families()
    )
    return parser


def make_config(args):
    overrides = config_lib.overrides_from_args(args)
    if args.resume:
        from tfchat.run_folder import load_config

        name = overrides.get("name", config_lib.Config.name)
        runs_dir = overrides.get("runs_dir", config_lib.Config.runs_dir)
        saved = load_config(os.path.join(runs_dir, name)).to_dict()
        return config_lib.build_config(args.config, overrides, base=saved)
    config = config_lib.build_config(args.config, overrides)
    from tfchat.data.prepared import is_prepared, tokenizer_settings

    if is_prepared(config.data.path) and not config.init_from:
        # Prepared tokens come with their tokenizer: its settings, unless
        # the command line says otherwise (then `train` explains).
        base = {"tokenizer": tokenizer_settings(config.data.path)}
        config = config_lib.build_config(args.config, overrides, base=base)
    from tfchat import objectives
    from tfchat.objectives.base import config_value

    # The runs whose settings the objective takes (fine-tuning keeps init_from's
    # model shape and tokenizer; a student takes its teacher's tokenizer),
    # unless the command line says otherwise (then `train` explains).
    for key, sections in objectives.settings_from(config):
        path = config_value(config, key)
        if not path:
            continue
        from tfchat.pretrained import init_from_run
        from tfchat.run_folder import load_config

        # A checkpoint that is not a tfchat run yet is converted first.
        run_path = init_from_run(path, config.runs_dir)
        *parents, leaf = key.split(".")
        section = overrides
        for parent in parents:
            section = section.setdefault(parent, {})
        section[leaf] = run_path
        saved = load_config(run_path).to_dict()
        base = {name: saved[name] for name in sections}
        config = config_lib.build_config(args.config, overrides, base=base)
    return config


@cli.command
def main(argv=None):
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        keys = ", ".join(k for k, *_ in config_lib.flat_keys())
        raise TfchatError(f"Unknown option {unknown[0]!r}. Valid config keys: {keys}.")
    # Here, not at the top: --help and argument errors answer without
    # loading TensorFlow.
    from tfchat import objectives
    from tfchat.job import train

    config = objectives.resolve(make_config(args))
    train(config, resume=args.resume, overwrite=args.overwrite)
    print("\nDone. " + objectives.get(config.objective).next_steps(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
