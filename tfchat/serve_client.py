"""Ask a running TF Serving for text: REST or gRPC requests to an exported model.

    python -m tfchat.serve_client --url http://localhost:8501 --model default "ROMEO:"
    python -m tfchat.serve_client --url http://localhost:8501 --model default \\
        --max-new-tokens 100 --temperature 0.8 --top-k 40 --seed 1 "Hello" "Hi there"
    python -m tfchat.serve_client --grpc localhost:8500 --model default "ROMEO:"
    python -m tfchat.serve_client --url http://localhost:8501 --model default \\
        --signature score "the text to score"
    python -m tfchat.serve_client --url http://localhost:8501 --model enc \\
        --signature fill_mask --top-k 3 "to be or not to [MASK] ."
    python -m tfchat.serve_client --url http://localhost:8501 --model clf \\
        --signature classify "a text to label"

REST requests go to `/v1/models/<model>[/versions/<n>]:predict` in either of
TF Serving's two body forms: `instances` (one object per prompt) or `inputs`
(one list per input name). gRPC requests are `PredictRequest`s from
`tensorflow-serving-api`. Settings left out fall back to the defaults
written into the exported signature.

REST needs only the standard library; gRPC needs the `serving` extra
(`pip install "tfchat[serving]"`: tensorflow-serving-api and grpcio).
"""

import argparse
import json
import sys

from tfchat import quiet

quiet.command_startup(__name__)  # first, before anything imports TensorFlow

from tfchat import cli
from tfchat.serving.client import predict_grpc, predict_rest


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m tfchat.serve_client",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("texts", nargs="+", metavar="TEXT",
                        help="Prompts (or texts to score); \\n is a newline.")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="TF Serving's REST address, e.g. http://localhost:8501.")
    where.add_argument("--grpc", metavar="HOST:PORT", help="TF Serving's gRPC address, e.g. localhost:8500.")
    parser.add_argument("--model", required=True, help="The model name TF Serving serves (MODEL_NAME).")
    parser.add_argument("--version", type=int, default=None, help="A model version (default: the newest).")
    parser.add_argument("--signature", default="serving_default",
                        help="serving_default (generate) or score; fill_mask or classify "
                             "for exports of mlm or classify runs.")
    parser.add_argument("--form", choices=("instances", "inputs"), default="instances",
                        help="REST body form: row (instances) or column (inputs).")
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument("--temperature", type=float, default=None, help="0 = greedy.")
    parser.add_argument("--top-k", type=int, default=None,
                        help="Sampling top-k; with fill_mask, the candidates per [MASK].")
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--seed", type=int, default=None, help="Same seed, same text.")
    parser.add_argument("--timeout", type=float, default=60.0)
    quiet.add_verbose_flag(parser)
    return parser


@cli.command
def main(argv=None):
    args = build_parser().parse_args(argv)
    texts = [t.replace("\\n", "\n") for t in args.texts]
    settings = {}
    if args.signature in ("serving_default", "generate"):
        settings = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature,
                    "top_k": args.top_k, "top_p": args.top_p, "seed": args.seed}
    elif args.signature == "fill_mask":
        settings = {"top_k": args.top_k}
    if args.url:
        rows = predict_rest(args.url, args.model, texts, settings, args.signature,
                            args.form, args.version, args.timeout)
    else:
        rows = predict_grpc(args.grpc, args.model, texts, settings, args.signature,
                            args.version, args.timeout)
    for text, row in zip(texts, rows):
        if "text" in row:
            print(text + row["text"])
        else:
            print(json.dumps({"text": text, **row}, ensure_ascii=False))
        if len(rows) > 1:
            print("-" * 40)
    return 0


if __name__ == "__main__":
    sys.exit(main())
