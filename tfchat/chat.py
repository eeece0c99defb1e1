"""Chat with a trained run in the terminal: `python -m tfchat.chat --run runs/<name>`.

Interactive (stdin is a terminal): the conversation history is kept and sent
with every message, and the reply is printed as it is generated. Commands:

    /reset           forget the conversation (the system message stays)
    /system <text>   set the system message (/system alone clears it)
    /retry           answer the last message again (the replies are numbered)
    /exit            quit (so do Ctrl-D and Ctrl-C at the prompt)

With `--feedback prefs.jsonl` your judgements become preference data that
`python -m tfchat.fit --objective dpo --data.path prefs.jsonl --init_from RUN`
trains on (each is appended and flushed at once; a killed chat loses none):

    /prefer N        reply N to the last message was the best: one pair of it
                     over each other reply; the conversation goes on with it
    /good, /bad      the last reply was good or bad: a labelled reply (a good
                     and a bad reply to the same prompt make a pair)

Non-interactive: one message from the arguments, or from stdin when it is
not a terminal, gets one reply on stdout:

    python -m tfchat.chat --run runs/default "What is AI?"
    echo "What is AI?" | python -m tfchat.chat --run runs/default --temperature 0

When the conversation outgrows the model's context, the oldest turns are left
out of the prompt (the system message is kept) and a note says so.
"""

import argparse
import os
import sys

from tfchat import quiet

quiet.command_startup(__name__, fast_exit=True)  # first, before anything imports TensorFlow

from tfchat.errors import TfchatError

HELP = ("/reset clears the history, /system <text> sets the system message, /retry answers "
        "again, /exit quits.")
FEEDBACK_HELP = ("/prefer N records reply N as the best, /good and /bad judge the last reply; "
                 "saved to {path}.")


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
    parser.add_argument("--checkpoint", choices=("best", "latest"), default=None,
                        help="Which checkpoint of the run to load (default: latest; for a dpo "
                             "run best: see README, Preference tuning).")
    parser.add_argument("--quantize", choices=("int8",), default=None,
                        help="Quantize the weights first (int8: weight-only, per channel; see "
                             "python -m tfchat.export --help).")
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
    parser.add_argument("--feedback", default=None, metavar="FILE",
                        help="Append your /prefer, /good and /bad judgements to this JSONL "
                             "file, as preference data for objective dpo (interactive only).")
    quiet.add_verbose_flag(parser)
    return parser


def interactive(session, stdout=sys.stdout, feedback=None):
    """The read-reply loop over stdin; `feedback` is a
    `tfchat.data.preferences.FeedbackLog` for the judging commands."""
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
    if feedback:
        print(FEEDBACK_HELP.format(path=feedback.path), file=stdout, flush=True)

    def say(text):
        print(f"({text})", file=stdout, flush=True)

    def show(prompt):
        if prompt.truncated:
            print(session.truncation_note(prompt), file=stdout)
        # Numbered when judging, so /prefer can name them.
        label = f"bot[{len(session.replies) + 1}]> " if feedback else "bot> "
        print(label, end="", file=stdout, flush=True)
        try:
            for piece in session.reply(prompt):
                print(piece, end="", file=stdout, flush=True)
        except KeyboardInterrupt:
            print(" (interrupted)", end="", file=stdout)
        print(file=stdout, flush=True)

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
        command = line.split()[0]
        if command in ("/retry", "/prefer", "/good", "/bad"):
            try:
                if command == "/retry":
                    show(session.retry())
                elif not feedback:
                    say(f"{command} records feedback: start the chat with --feedback FILE")
                else:
                    say(judge(session, feedback, line))
            except TfchatError as e:
                say(str(e))
            continue
        if line.startswith("/"):
            say(f"unknown command {command}; {HELP}")
            continue
        show(session.ask(line))


def judge(session, feedback, line):
    """Records the judgement `line` (/prefer N, /good or /bad) in the
    feedback log; returns what was recorded, to show."""
    from tfchat.data.chat_template import Message
    from tfchat.data.preferences import labelled_record, pair_record

    command, *args = line.split()
    if command == "/prefer":
        if len(args) != 1 or not args[0].isdigit():
            raise TfchatError("Use /prefer N, N the number of the best reply.")
        number = int(args[0])
        chosen, others = session.prefer(number)
        if not others:
            raise TfchatError("The replies are all the same; nothing recorded.")
        for rejected in others:
            feedback.add(pair_record(session.seen, [Message("assistant", chosen)],
                                     [Message("assistant", rejected)]))
        return (f"recorded reply {number} over {len(others)} other repl"
                f"{'y' if len(others) == 1 else 'ies'} in {feedback.path}")
    if args:
        raise TfchatError(f"{command} takes no argument.")
    context, reply = session.last_reply()
    feedback.add(labelled_record(context, [Message("assistant", reply)], command == "/good"))
    return f"recorded the last reply as {command[1:]} in {feedback.path}"


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
        feedback = None
        if args.feedback:
            if message is not None:
                raise TfchatError("--feedback records judgements in the interactive chat; "
                                  "run it in a terminal without a message.")
            from tfchat.data.preferences import FeedbackLog

            feedback = FeedbackLog(args.feedback)
        from tfchat.inference.chat_session import ChatSession
        from tfchat.inference.generator import Generator
        from tfchat.run import check_generates, load_run, quantized_run

        run = check_generates(load_run(args.run, checkpoint=args.checkpoint, forward_pass=False))
        if args.quantize:
            run = quantized_run(run, args.quantize)
        if not run.objective.chats:
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
        interactive(session, feedback=feedback)
        if feedback and feedback.records:
            print(f"{feedback.records} judgement(s) appended to {args.feedback}; train on them:\n"
                  f"  python -m tfchat.fit --objective dpo --init_from {args.run} "
                  f"--data.path {args.feedback} --name {os.path.basename(os.path.normpath(args.run))}_dpo")
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
