"""Start from a pretrained model: convert a checkpoint into a tfchat run.

    python -m tfchat.convert ./SmolLM2-135M --name smollm2          # a Hugging Face directory
    python -m tfchat.convert ./gpt2_preset --name gpt2               # a keras-hub preset
    python -m tfchat.convert hf://Qwen/Qwen2.5-0.5B --name qwen      # downloaded when online

writes runs/NAME: the untouched pretrained model (step 0) with the
checkpoint's own tokenizer, on which generate, chat, evaluate, export and
`fit --init_from runs/NAME` all work (`fit --init_from SOURCE` also converts
a source itself, into runs/pretrained/). keras-hub reads the checkpoint (and
tfchat itself reads the Hugging Face form of Mistral, Gemma and Qwen3);
tfchat maps its weights into its own decoder, which exports for stock TF
Serving. The run records its family (model.family).

Supported families:
{families}
"""

import argparse
import os
import sys

from tfchat import quiet

quiet.command_startup(__name__)  # first, before anything imports TensorFlow

from tfchat import cli
from tfchat.errors import TfchatError


def _description():
    from tfchat.families import supported_families  # pure Python

    return __doc__.format(families=supported_families())


def _chat_templates():
    from tfchat.families import chat_templates  # pure Python

    return ("auto", *chat_templates())


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m tfchat.convert",
        description=_description(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "source",
        help="A keras-hub preset directory, a Hugging Face checkpoint directory "
             "(config.json, *.safetensors, tokenizer files), or an hf:// / kaggle:// handle.",
    )
    parser.add_argument("--name", required=True, help="The run's name: it is written to <runs_dir>/<name>.")
    parser.add_argument("--runs_dir", default="runs", help="Folder holding all runs (default: runs).")
    parser.add_argument(
        "--block_size", type=int, default=0,
        help="Context length of the run (default 0: the checkpoint's own; GPT-2's position "
             "table, else the recorded maximum, else 2048). Fine-tuning may use less.",
    )
    parser.add_argument(
        "--dtype", default="float32", choices=("float32", "bfloat16"),
        help="Keep the weights in float32 (default) or bfloat16 (half the memory and disk; "
             "the run then computes in bfloat16).",
    )
    parser.add_argument(
        "--chat_template", default="auto", choices=_chat_templates(),
        help="How the run renders conversations (default auto: the checkpoint's own, from its "
             "tokenizer_config.json or its special tokens).",
    )
    parser.add_argument(
        "--system_prompt", default=None,
        help="The system message of conversations without one (default: the checkpoint "
             "template's, if it has one; '' for none).",
    )
    parser.add_argument("--overwrite", action="store_true", help="Replace an existing run of that name.")
    quiet.add_verbose_flag(parser)
    return parser


@cli.command
def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.block_size < 0:
        raise TfchatError(f"--block_size must be 0 or positive. Received: {args.block_size}")
    from tfchat.pretrained import convert

    run_path = os.path.join(args.runs_dir, args.name)
    convert(args.source, run_path, block_size=args.block_size, dtype=args.dtype,
            overwrite=args.overwrite, chat_template=args.chat_template,
            system_prompt=args.system_prompt)
    from tfchat.run_folder import RunFolder

    model = RunFolder(run_path).read_config().model
    context = model.block_size
    # Fine-tuning at a 2,048-token context costs 16x the work of 128 tokens
    # a row; short chats need far less. A rope model's block size may shrink
    # (a learned position table may not).
    block = " --model.block_size 256" if context > 512 and model.position == "rope" else ""
    print(
        f"Next: python -m tfchat.generate --run {run_path} --prompt 'Once upon a time'\n"
        f"      python -m tfchat.fit --init_from {run_path} --data.path chats.jsonl "
        f"--model.lora_rank 8{block} --name my_chat"
    )
    if block:
        print(f"      (the run's context is {context} tokens; fine-tune with the block size "
              "your conversations need: a smaller one trains much faster)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
