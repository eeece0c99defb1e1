"""A `ChatSession` in a terminal: `interactive`, the read-reply loop with
its commands (/reset, /system, /retry, /exit, and with a feedback log the
judging ones, /prefer, /good, /bad, which `judge` records), and
`reply_once`, one message's reply. `python -m tfchat.chat` calls them.

Imports nothing heavy at the top: the chat command's `--help` stays fast."""

import os
import sys

from tfchat.errors import TfchatError

HELP = ("/reset clears the history, /system <text> sets the system message, /retry answers "
        "again, /exit quits.")
FEEDBACK_HELP = ("/prefer N records reply N as the best, /good and /bad judge the last reply; "
                 "saved to {path}.")


def one_message(words, stdin=None):
    """The message to answer once: `words` (the command's arguments)
    joined, or stdin when it is not a terminal; None for the interactive
    chat."""
    stdin = sys.stdin if stdin is None else stdin
    if words:
        return " ".join(words)
    if stdin.isatty():
        return None
    message = stdin.read()
    if not message.strip():
        raise TfchatError("No message: stdin was empty.")
    return message


def reply_once(session, message, stdout=None, stderr=None):
    """Prints the reply to `message` on `stdout` as it is generated, and a
    note on `stderr` if the prompt had to be cut to fit."""
    stdout = sys.stdout if stdout is None else stdout
    stderr = sys.stderr if stderr is None else stderr
    prompt = session.ask(message.strip())
    if prompt.truncated:
        print(session.truncation_note(prompt), file=stderr)
    for piece in session.reply(prompt):
        print(piece, end="", file=stdout, flush=True)
    print(file=stdout)


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


def feedback_summary(feedback, run_path):
    """What the chat says at its end about the judgements it appended (and
    how to train on them), or None when there were none."""
    if not (feedback and feedback.records):
        return None
    name = os.path.basename(os.path.normpath(run_path))
    return (f"{feedback.records} judgement(s) appended to {feedback.path}; train on them:\n"
            f"  python -m tfchat.fit --objective dpo --init_from {run_path} "
            f"--data.path {feedback.path} --name {name}_dpo")
