"""Chat with a trained run in the terminal: `python -m tfchat.chat --run runs/<name>`.

Interactive (stdin is a terminal): the conversation history is kept and sent
with every message, and the reply is printed as it is generated. Commands:

    /reset           forget the conversation (the system message stays)
    /system <text>   set the system message (/system alone clears it)
    /exit            quit (so do Ctrl-D and Ctrl-C at the prompt)

Non-interactive: one message from the arguments, or from stdin when it is
not a terminal, gets one reply on stdout:

    python -m tfchat.chat --run runs/default "What is AI?"
    echo "What is AI?" | python -m tfchat.chat --run runs/default --temperature 0

When the conversation outgrows the model's context, the oldest turns are left
out of the prompt (the system message is kept) and a note says so.
"""

import argparse
import sys

from tfchat import quiet

quiet.command_startup(__name__, fast_exit=True)  # first, before anything imports TensorFlow

from tfchat.errors import TfchatError

HELP = "/reset clears the history, /system <text> sets the system message, /exit quits."


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m tfchat.chat",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--run", required=True, help="Run folder of a chat run, e.g. runs/default.")
    parser.add_argument("message", nargs="*",
                        help="A message to answer once, non-interactively.")
    parser.add_argument("--system", default="", help="System message to start with.")
    parser.add_argument("--max-new-tokens", type=int, default=200,
                        help="Longest reply, in tokens.")
    parser.add_argument("--temperature", type=float, default=0.7,
                        help="0 = greedy (always the most likely token).")
    parser.add_argument("--top-k", type=int, default=40,
                        help="Sample from the k most likely tokens (0 = all).")
    parser.add_argument("--top-p", type=float, default=1.0,
                        help="Nucleus sampling threshold (1 = off).")
    parser.add_argument("--repetition-penalty", type=float, default=1.0,
                        help="Divide the logits of tokens already present by this (1 = off).")
    parser.add_argument("--stop", action="append", default=[],
                        help="Also end a reply before this text (repeatable).")
    parser.add_argument("--seed", type=int, default=None,
                        help="Seed each reply's sampling, for reproducible replies.")
    quiet.add_verbose_flag(parser)
    return parser


def interactive(session, stdout=sys.stdout):
    """The read-reply loop over stdin."""
    try:
        # Line editing and history for `input`; without it Python writes
        # input's prompt to stderr.
        import readline  # noqa: F401

        read = lambda: input("you> ")  # noqa: E731
    except ImportError:
        def read():
            print("you> ", end="", file=stdout, flush=True)
            return input()
    print(HELP, file=stdout, flush=True)
    while True:
        try:
            line = read()
        except (EOFError, KeyboardInterrupt):
            print(file=stdout)
            return
        line = line.strip()
        if not line:
            continue
        if line == "/exit":
            return
        if line == "/reset":
            session.reset()
            print("(the conversation was reset)", file=stdout, flush=True)
            continue
        if line == "/system" or line.startswith("/system "):
            session.system = line[len("/system"):].strip()
            shown = f"set to: {session.system}" if session.system else "cleared"
            print(f"(system message {shown})", file=stdout, flush=True)
            continue
        if line.startswith("/"):
            print(f"(unknown command {line.split()[0]}; {HELP})", file=stdout, flush=True)
            continue
        prompt = session.ask(line)
        if prompt.truncated:
            print(session.truncation_note(prompt), file=stdout)
        print("bot> ", end="", file=stdout, flush=True)
        try:
            for piece in session.reply(prompt):
                print(piece, end="", file=stdout, flush=True)
        except KeyboardInterrupt:
            print(" (interrupted)", end="", file=stdout)
        print(file=stdout, flush=True)


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        if args.message:
            message = " ".join(args.message)
        elif not sys.stdin.isatty():
            message = sys.stdin.read()
            if not message.strip():
                raise TfchatError("No message: stdin was empty.")
        else:
            message = None
        from tfchat.inference.chat_session import ChatSession
        from tfchat.inference.generator import Generator
        from tfchat.run import check_generates, load_run

        run = check_generates(load_run(args.run, forward_pass=False))
        if run.config.objective != "chat":
            print(
                f"note: {args.run} is a {run.config.objective} run, not a chat "
                "run; its replies may not follow the chat template.",
                file=sys.stderr,
            )
        session = ChatSession(
            Generator(run.backbone, run.tokenizer), system=args.system,
            max_new_tokens=args.max_new_tokens, temperature=args.temperature,
            top_k=args.top_k, top_p=args.top_p, seed=args.seed,
            repetition_penalty=args.repetition_penalty, stop_strings=args.stop,
        )
    except TfchatError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if message is None:
        context = run.backbone.block_size
        print(f"Chatting with {args.run} (step {run.step}, context {context} tokens).")
        interactive(session)
        return 0
    prompt = session.ask(message.strip())
    if prompt.truncated:
        print(session.truncation_note(prompt), file=sys.stderr)
    for piece in session.reply(prompt):
        print(piece, end="", flush=True)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
