"""`python -m tfchat.chat` through a real terminal and through a pipe, the
chat run's replies, and `python -m tfchat.evaluate` on it."""

import json
import os
import subprocess
import sys

import pytest

from conftest import CHAT_PAIRS
from terminal import ENV, Terminal
from tfchat import chat as chat_cli
from tfchat import evaluate as evaluate_cli
from tfchat.data.chat_template import Message
from tfchat.inference.chat_session import ChatSession
from tfchat.inference.generator import Generator
from tfchat.run import load_run


def test_sft_run_answers_and_stops_at_end_of_turn(chat_run):
    run = load_run(chat_run)
    assert run.config.objective == "chat"
    generator = Generator(run.backbone, run.tokenizer)
    questions = [[Message("user", q)] for q, _ in CHAT_PAIRS]
    replies = generator.chat(questions, max_new_tokens=40)
    # Each reply ends at the learned end-of-turn token, well before 40.
    assert replies == [a for _, a in CHAT_PAIRS]


@pytest.mark.slow
def test_interactive_chat_in_a_terminal(chat_run):
    terminal = Terminal([sys.executable, "-m", "tfchat.chat", "--run", chat_run,
                         "--temperature", "0"])
    try:
        terminal.read_until("you> ")
        terminal.send("how are you?")
        reply = terminal.read_until("you> ")
        assert "bot> i am fine, thank you." in reply
        terminal.send("/system be brief")
        assert "(system message set to: be brief)" in terminal.read_until("you> ")
        terminal.send("/system")  # the tiny model never saw a system message
        assert "(system message cleared)" in terminal.read_until("you> ")
        terminal.send("/reset")
        assert "reset" in terminal.read_until("you> ")
        terminal.send("ping")
        assert "bot> pong" in terminal.read_until("you> ")
        terminal.send("/exit")
        assert terminal.process.wait(timeout=60) == 0
    finally:
        terminal.process.kill()
        os.close(terminal.master)


def test_chat_session_keeps_history_and_truncates(chat_run, capsys):
    run = load_run(chat_run)
    session = ChatSession(Generator(run.backbone, run.tokenizer),
                                   max_new_tokens=24, temperature=0.0)
    for question, answer in CHAT_PAIRS * 2:
        prompt = session.ask(question)
        assert "".join(session.reply(prompt)) == answer
    assert [m.content for m in session.history] == [t for pair in CHAT_PAIRS * 2 for t in pair]
    # The history outgrew the 48-token context: the oldest turns were left
    # out of the last prompt, and the note says so.
    assert prompt.dropped_messages > 0
    assert "the oldest" in session.truncation_note(prompt)


def test_a_long_last_message_keeps_its_start_while_old_turns_go(chat_run):
    run = load_run(chat_run)
    generator = Generator(run.backbone, run.tokenizer)
    context = run.config.model.block_size  # 48
    question = "x" * (context // 2)  # with its markers, more than half the context
    alone = generator.chat_prompt([Message("user", question)], max_new_tokens=24)
    assert not alone.truncated and len(alone.ids) > context // 2
    assert len(alone.ids) <= context - context // 4
    # After earlier turns, those go first; the long message stays whole.
    history = [Message("user", "ping"), Message("assistant", "pong")] * 2
    prompt = generator.chat_prompt(history + [Message("user", question)], max_new_tokens=24)
    assert prompt.dropped_messages > 0 and not prompt.cut_tokens
    assert prompt.ids[-len(alone.ids):] == alone.ids


@pytest.mark.slow
def test_one_message_from_stdin_or_arguments(chat_run, capsys):
    proc = subprocess.run(
        [sys.executable, "-m", "tfchat.chat", "--run", chat_run, "--temperature", "0"],
        input="what is your name?\n", capture_output=True, text=True, env=ENV, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout == "my name is tiny bot.\n"
    assert chat_cli.main(["--run", chat_run, "--temperature", "0", "ping"]) == 0
    assert capsys.readouterr().out == "pong\n"
    assert chat_cli.main(["--run", chat_run + "_missing", "ping"]) == 1
    assert capsys.readouterr().err.startswith("error: No tfchat run at")


@pytest.mark.slow
def test_evaluate_reports_perplexity_bleu_and_rouge(chat_run, capsys):
    assert evaluate_cli.main(["--run", chat_run, "--max-new-tokens", "32"]) == 0
    printed = capsys.readouterr().out
    assert "bleu: " in printed and "rouge_l: " in printed
    with open(os.path.join(chat_run, "evaluation.json"), encoding="utf-8") as f:
        results = json.load(f)
    # The validation conversations repeat training ones the model has
    # memorised: perfect replies, and a perplexity near 1 on them.
    assert results["objective"] == "chat"
    assert results["checkpoint"] == "latest"  # what chat and export use
    assert results["replies"] == results["conversations"] == 6
    assert results["replies_unseen"] == 0  # every validation prompt is in training
    assert results["bleu"] > 99 and results["rouge_l"] > 99
    assert 1.0 <= results["val_perplexity"] < 1.5
    # And it answers every training prompt with its training reply.
    assert "training_prompt_recall: 1" in printed
    assert results["training_prompt_recall"] == 1.0 and results["training_prompts"] == 3


def test_evaluate_scores_unseen_prompts_apart(chat_run, tmp_path):
    import dataclasses

    from conftest import write_jsonl
    from tfchat.evaluation.chat import score_replies

    pairs = [CHAT_PAIRS[i % 3] for i in range(20)]
    pairs[9] = ("who made you?", "a test made me.")  # held out, never trained on
    # In the training split, but not in what the run trained on: a prompt
    # it cannot recall.
    pairs[0] = ("who are you?", "nobody you would know.")
    path = write_jsonl(tmp_path / "chats.jsonl", [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
        for q, a in pairs
    ])
    run = load_run(chat_run)
    run.config = dataclasses.replace(
        run.config, data=dataclasses.replace(run.config.data, path=path)
    )
    results = run.objective.evaluate(run, max_new_tokens=24, jit_compile=False)
    assert results["replies"] == 2 and results["replies_unseen"] == 1
    unseen = results["examples"][0]
    assert unseen["user"] == "who made you?"
    expected = score_replies([unseen["reply"]], [unseen["reference"]])
    assert results["bleu_unseen"] == expected["bleu"]
    assert results["rouge_l_unseen"] == expected["rouge_l"]
    # The seen one is answered perfectly, so the overall scores differ.
    assert results["examples"][1]["reply"] == results["examples"][1]["reference"]
    assert results["rouge_l"] > results["rouge_l_unseen"]
    # Four single-exchange training prompts, three of them learnt.
    assert results["training_prompts"] == 4
    assert results["training_prompt_recall"] == 0.75


class EchoGenerator:
    """Stands in for a `Generator`: reply n to a message is "reply n to
    <message>", in two pieces; no model, no TensorFlow graph."""

    class backbone:
        block_size = 48

    class Prompt:
        truncated = False
        dropped_messages = 0
        cut_tokens = 0

    def __init__(self):
        self.calls = 0

    def chat_prompt(self, messages, max_new_tokens):
        return self.Prompt()

    def stream_chat(self, messages, max_new_tokens, prompt=None, **sampling):
        self.calls += 1
        yield "reply "
        yield f"{self.calls} to {messages[-1].content}"


def test_the_chat_loop_and_its_commands(tmp_path, monkeypatch):
    """`tfchat.inference.chat_loop.interactive`, line by line as the
    terminal shows it, with the judging commands writing the feedback file."""
    import io

    from tfchat.data.preferences import FeedbackLog
    from tfchat.inference import chat_loop

    lines = iter(["hi", "/retry", "/prefer 2", "/good", "/bad x", "/prefer", "/nope",
                  "/system be kind", "/reset", "/retry", "", "/exit", "never read"])

    def typed(prompt=""):
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None  # Ctrl-D

    monkeypatch.setattr("builtins.input", typed)
    out = io.StringIO()
    feedback = FeedbackLog(str(tmp_path / "prefs.jsonl"))
    session = ChatSession(EchoGenerator())
    chat_loop.interactive(session, stdout=out, feedback=feedback)
    path = feedback.path
    assert out.getvalue() == "".join(line + "\n" for line in [
        chat_loop.HELP,
        chat_loop.FEEDBACK_HELP.format(path=path),
        "bot[1]> reply 1 to hi",
        "bot[2]> reply 2 to hi",
        f"(recorded reply 2 over 1 other reply in {path})",
        f"(recorded the last reply as good in {path})",
        "(/bad takes no argument.)",
        "(Use /prefer N, N the number of the best reply.)",
        f"(unknown command /nope; {chat_loop.HELP})",
        "(system message set to: be kind)",
        "(the conversation was reset)",
        "(There is no reply to retry yet.)",
    ])
    assert feedback.records == 2
    with open(path, encoding="utf-8") as f:
        assert len(f.read().splitlines()) == 2
    assert chat_loop.feedback_summary(feedback, "runs/default/") == (
        f"2 judgement(s) appended to {path}; train on them:\n"
        f"  python -m tfchat.fit --objective dpo --init_from runs/default/ "
        f"--data.path {path} --name default_dpo")
    assert chat_loop.feedback_summary(None, "runs/default") is None

    # Without a feedback log the replies are not numbered and judging says how.
    lines = iter(["hi", "/good"])
    out = io.StringIO()
    chat_loop.interactive(ChatSession(EchoGenerator()), stdout=out)
    assert out.getvalue() == "".join(line + "\n" for line in [
        chat_loop.HELP, "bot> reply 1 to hi",
        "(/good records feedback: start the chat with --feedback FILE)", ""])


def test_one_message_comes_from_the_arguments_or_stdin():
    import io

    from tfchat.errors import TfchatError
    from tfchat.inference.chat_loop import one_message, reply_once

    class Pipe(io.StringIO):
        def isatty(self):
            return False

    class Tty(io.StringIO):
        def isatty(self):
            return True

    assert one_message(["what", "is", "AI?"], Pipe("ignored")) == "what is AI?"
    assert one_message([], Pipe("from stdin\n")) == "from stdin\n"
    assert one_message([], Tty()) is None
    with pytest.raises(TfchatError, match="No message: stdin was empty."):
        one_message([], Pipe(" \n"))
    out = io.StringIO()
    reply_once(ChatSession(EchoGenerator()), "  ping \n", stdout=out)
    assert out.getvalue() == "reply 1 to ping\n"
