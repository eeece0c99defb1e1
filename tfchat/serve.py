"""Serve a trained run over the OpenAI HTTP API, with a web chat page:
`python -m tfchat.serve --run runs/<name>` (needs the serve extra:
`pip install -e ".[serve]"`).

    POST /v1/chat/completions   chat runs: messages in the run's chat template
    POST /v1/completions        any GPT run: prompt, echo, logprobs
    GET  /v1/models             the run's name
    GET  /health                liveness and load (no key needed)
    GET  /                      the web chat page

Point any OpenAI client at it (`base_url="http://127.0.0.1:8000/v1"`):

    curl http://127.0.0.1:8000/v1/chat/completions -H "Content-Type: application/json" \\
      -d '{"model": "default", "messages": [{"role": "user", "content": "Hi!"}]}'

Requests that arrive together are decoded in one batch (up to --max-batch
rows; --max-waiting more wait, beyond that 429). It listens on 127.0.0.1
only unless --host says otherwise; with --api-key every /v1 route needs
`Authorization: Bearer KEY`. For production traffic export a SavedModel for
TF Serving instead (python -m tfchat.export); README, Serve, compares them.
"""

import argparse
import os
import sys

from tfchat import quiet

quiet.command_startup(__name__, fast_exit=True)  # first, before anything imports TensorFlow

from tfchat import cli
from tfchat.errors import TfchatError


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m tfchat.serve",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--run", required=True, help="Run folder of a causal or chat run.")
    parser.add_argument("--host", default="127.0.0.1",
                        help="Address to listen on (default 127.0.0.1: this machine only; "
                             "0.0.0.0 for every interface).")
    parser.add_argument("--port", type=int, default=8000, help="Port (default 8000).")
    parser.add_argument("--name", default=None,
                        help="The model name clients see in /v1/models (default: the run "
                             "folder's name). Requests may name any model: one is served.")
    parser.add_argument("--api-key", default=os.environ.get("TFCHAT_API_KEY"),
                        help="Require 'Authorization: Bearer KEY' on /v1 routes (default: "
                             "$TFCHAT_API_KEY, else no key).")
    parser.add_argument("--max-batch", type=int, default=16,
                        help="Most sequences decoded together (default 16).")
    parser.add_argument("--max-waiting", type=int, default=64,
                        help="Most sequences waiting for a place in the batch; more get "
                             "HTTP 429 (default 64).")
    parser.add_argument("--chunk-tokens", type=int, default=8,
                        help="Tokens decoded per row between the moments requests may join "
                             "or leave the batch, and per streamed piece (default 8).")
    parser.add_argument("--feedback", default=None, metavar="FILE",
                        help="Append the web page's thumbs up/down to this JSONL file, as "
                             "python -m tfchat.chat --feedback does (preference data for "
                             "objective dpo).")
    cli.add_checkpoint_flag(parser)
    cli.add_quantize_flag(parser)
    quiet.add_verbose_flag(parser)
    return parser


@cli.command
def main(argv=None):
    args = build_parser().parse_args(argv)
    if not 0 < args.port < 65536:
        raise TfchatError(f"--port must be 1..65535; received {args.port}.")
    if args.max_batch < 1 or args.max_waiting < 0 or args.chunk_tokens < 1:
        raise TfchatError("--max-batch and --chunk-tokens must be at least 1, --max-waiting "
                          "at least 0.")
    try:
        from tfchat.serving.http_server import create_app, serve
    except ImportError as e:
        raise TfchatError(f"python -m tfchat.serve needs the serve extra ({e.name} is missing): "
                          'pip install "tfchat[serve]" (or pip install -e ".[serve]" in a '
                          "checkout).") from None
    from tfchat.serving.openai_api import ServedRun

    _check_address(args.host, args.port)  # before seconds of loading the model

    feedback = None
    if args.feedback:
        from tfchat.data.preferences import FeedbackLog

        feedback = FeedbackLog(args.feedback)
    run = cli.load_command_run(args.run, args.checkpoint, args.quantize, generates=True,
                               forward_pass=False)
    name = args.name or os.path.basename(os.path.normpath(args.run))
    served = ServedRun(run, name, max_batch=args.max_batch, max_waiting=args.max_waiting,
                       chunk_tokens=args.chunk_tokens)
    app = create_app(served, api_key=args.api_key, feedback=feedback)
    url = f"http://{args.host}:{args.port}"
    routes = "/v1/chat/completions, /v1/completions" if served.chats else (
        f"/v1/completions only ({run.config.objective} run: no chat template)")
    serve(app, args.host, args.port, on_ready=lambda: print(
        f"Serving {args.run} as '{name}' (step {run.step}) at {url}: {routes}; chat page "
        f"{url}/. Ctrl-C stops.", flush=True))
    return 0


def _check_address(host, port):
    import socket

    try:
        with socket.create_server((host, port)):
            pass
    except OSError as e:
        raise TfchatError(f"Cannot listen on {host}:{port}: {e.strerror or e} (another server "
                          "there? choose another --port).") from None


if __name__ == "__main__":
    sys.exit(main())
