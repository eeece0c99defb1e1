"""Tokenize a corpus once: `python -m tfchat.prepare`.

Reads the corpus `data.path` names (text files, a folder, a glob, JSONL,
chatterbot:<language>), tokenizes both splits with the run's tokenizer,
trained first from the training split as `tfchat.fit` would (or taken from
an existing run with --tokenizer-from), and writes sharded token files and
an index to --out. Training then reads the tokens instead of the text:

    python -m tfchat.prepare --config shakespeare_char --out prepared/shakespeare
    python -m tfchat.fit --config shakespeare_char --data.path prepared/shakespeare

The tokenizer runs on every CPU core and the corpus streams through, so
memory stays flat whatever its size. If it is interrupted, run the same
command again: finished shards are kept and the rest is redone. Put --out
on storage every worker reads and run the same `tfchat.fit` command on
each: every worker reads only its own shards (README: Several machines).
Objectives causal and distill read prepared folders (packing applies as usual).

With data-hygiene settings (data.dedup, data.scrub_pii, ...: README, Data
hygiene) the corpus is cleaned first and --out gets data_report.json;
--dry-run only cleans and prints that report.
"""

import json
import os
import shutil
import sys
import tempfile

from tfchat import quiet

quiet.command_startup(__name__)  # first, before anything imports TensorFlow

from tfchat import cli
from tfchat import config as config_lib
from tfchat.errors import TfchatError


def build_parser():
    parser = config_lib.parser_with_config(__doc__, prog="python -m tfchat.prepare")
    parser.add_argument("--out", default="prepared",
                        help="Folder to write the tokens to (default: prepared).")
    parser.add_argument(
        "--tokenizer-from", metavar="RUN",
        help="Use this run's tokenizer (to train from it with init_from, or to match "
             "it) instead of training one from the corpus.",
    )
    parser.add_argument(
        "--shard-tokens", type=int, default=None, metavar="N",
        help="Tokens per shard file (default 50,000,000: about 100 MB). Smaller shards "
             "share out over more workers whole.",
    )
    parser.add_argument("--dry-run", action="store_true",
                        help="Run the data-hygiene stage and print its report (documents "
                             "kept and removed per reason, PII found); write no tokens.")
    quiet.add_verbose_flag(parser)
    return parser


@cli.command
def main(argv=None):
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        keys = ", ".join(k for k, *_ in config_lib.flat_keys() if k.startswith(("data.", "tokenizer.")))
        raise TfchatError(f"Unknown option {unknown[0]!r}. Valid keys here: {keys}.")
    if args.shard_tokens is not None and args.shard_tokens < 1:
        raise TfchatError(f"--shard-tokens must be at least 1, not {args.shard_tokens}.")
    # Here, not at the top: --help answers without loading TensorFlow.
    from tfchat.data import prepared
    from tfchat.data.cleaned import REPORT, clean_corpus, hygiene_enabled, placeholders
    from tfchat.data.corpus import Corpus
    from tfchat.data.tokenizer import load_tokenizer, train_tokenizer
    from tfchat.run import RunFolder

    overrides = config_lib.overrides_from_args(args)
    if args.tokenizer_from:
        source = RunFolder(args.tokenizer_from)
        # That run's vocabulary settings, which the index records.
        overrides["tokenizer"] = source.read_config().to_dict()["tokenizer"]
    config = config_lib.build_config(args.config, overrides)
    config_lib.validate(config)
    if prepared.is_prepared(config.data.path):
        raise TfchatError(f"{config.data.path} is prepared already.")
    data, cleaned = config.data, None
    if args.dry_run:
        if not hygiene_enabled(config.data):
            raise TfchatError("--dry-run shows the data-hygiene stage's report; no hygiene "
                              "setting is on (data.fix_unicode, data.dedup, data.scrub_pii, ...).")
        scratch = tempfile.mkdtemp(prefix="tfchat-dry-run-")
        try:  # the report, without leaving a copy of the corpus on disk
            report = clean_corpus(config.data, scratch, config.train.seed).report
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        print(json.dumps(report, indent=2, ensure_ascii=False))
        return 0
    if hygiene_enabled(config.data):
        cache = os.path.join(os.path.dirname(os.path.abspath(args.out)), ".cleaned")
        cleaned = clean_corpus(config.data, cache, config.train.seed)
        data = cleaned.data
    corpus = Corpus(data)
    if args.tokenizer_from:
        tokenizer = load_tokenizer(source.tokenizer)
    elif prepared.is_prepared(args.out):
        # Resuming: the tokenizer the first call trained.
        tokenizer = load_tokenizer(f"{args.out}/{prepared.TOKENIZER_DIR}")
    else:
        if config.tokenizer.kind == "pretrained":
            raise TfchatError("A pretrained tokenizer comes with its run: pass "
                              "--tokenizer-from runs/<converted run>.")
        print(f"Training the {config.tokenizer.kind} tokenizer on {config.data.path}...")
        tokenizer = train_tokenizer(config.tokenizer, corpus.iter_texts("train"),
                                    symbols=placeholders(config.data))
    shard_tokens = args.shard_tokens or prepared.DEFAULT_SHARD_TOKENS
    prepared.prepare(corpus, tokenizer, config.tokenizer, args.out, shard_tokens)
    if cleaned:
        shutil.copyfile(os.path.join(cleaned.folder, REPORT), os.path.join(args.out, REPORT))
        print(f"Data hygiene: {cleaned.report['documents_kept']} of "
              f"{cleaned.report['documents_read']} documents kept; {args.out}/{REPORT}.")
    print(f"\nTrain on it with: python -m tfchat.fit --data.path {args.out} ...")
    return 0


if __name__ == "__main__":
    sys.exit(main())
