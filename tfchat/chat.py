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
import sys

from tfchat import quiet

quiet.command_startup(__name__, fast_exit=True)  # first, before anything imports TensorFlow

from tfchat import cli
from tfchat.errors import TfchatError


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
    cli.add_checkpoint_flag(parser)
    cli.add_quantize_flag(parser)
    parser.add_argument("--max-new-tokens", type=int, default=200,
                        help="Longest reply, in tokens.")
    cli.add_sampling_flags(parser, temperature=0.7, top_k=40, help_texts={
        "temperature": "0 = greedy (always the most likely token).",
        "stop": "Also end a reply before this text (repeatable).",
        "seed": "Seed each reply's sampling, for reproducible replies."})
    parser.add_argument("--feedback", default=None, metavar="FILE",
                        help="Append your /prefer, /good and /bad judgements to this JSONL "
                             "file, as preference data for objective dpo (interactive only).")
    quiet.add_verbose_flag(parser)
    return parser


@cli.command
def main(argv=None):
    args = build_parser().parse_args(argv)
    from tfchat.inference.chat_loop import feedback_summary, interactive, one_message, reply_once

    message = one_message(args.message)
    feedback = None
    if args.feedback:
        if message is not None:
            raise TfchatError("--feedback records judgements in the interactive chat; "
                              "run it in a terminal without a message.")
        from tfchat.data.preferences import FeedbackLog

        feedback = FeedbackLog(args.feedback)
    from tfchat.inference.chat_session import ChatSession
    from tfchat.inference.generator import Generator

    run = cli.load_command_run(args.run, args.checkpoint, args.quantize, generates=True,
                               forward_pass=False)
    if not run.objective.chats:
        print(f"note: {args.run} is a {run.config.objective} run, not a chat "
              "run; its replies may not follow the chat template.", file=sys.stderr)
    session = ChatSession(Generator(run.backbone, run.tokenizer), system=args.system,
                          max_new_tokens=args.max_new_tokens, **cli.sampling_options(args))
    if message is not None:
        reply_once(session, message)
        return 0
    print(f"Chatting with {args.run} (step {run.step}, context {run.backbone.block_size} tokens).")
    interactive(session, feedback=feedback)
    summary = feedback_summary(feedback, args.run)
    if summary:
        print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
