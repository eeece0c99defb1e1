"""Where a one-shot chat reply's start-up time goes.

    python benchmarks/chat_startup.py RUN [MESSAGE]

Runs the steps of `python -m tfchat.chat --run RUN --temperature 0 MESSAGE`
in order, with the tfchat found on the path, and prints each phase's seconds
to stderr; the last line, EXIT_AT, is the wall-clock time when the script
ends, so `date +%s.%N` after it gives the interpreter's shutdown time. Works on
older trees too (`load_run` without `forward_pass`): put one on PYTHONPATH.
benchmarks/RESULTS.md, "One-shot chat reply start-up", has the numbers.
"""

import inspect
import os
import sys
import time

T_START = time.perf_counter()
marks = []


def mark(name):
    marks.append((name, time.perf_counter()))


def main(path, message):
    import tensorflow as tf

    mark("import tensorflow (with Keras)")
    from tfchat import run as run_lib
    from tfchat.inference.chat_session import ChatSession
    from tfchat.inference.generator import Generator

    mark("import tfchat modules (keras_hub)")
    if os.path.exists(os.path.join(os.path.dirname(run_lib.__file__), "quiet.py")):
        import atexit
        import gc

        atexit.register(gc.freeze)  # what the chat command does (fast_exit)
    kwargs = {}
    if "forward_pass" in inspect.signature(run_lib.load_run).parameters:
        kwargs["forward_pass"] = False  # what the chat command passes
    real_build = run_lib.build_model

    def timed_build(*args, **kw):
        mark("load config + tokenizer")
        model = real_build(*args, **kw)
        mark("build the model")
        return model

    run_lib.build_model = timed_build
    run = run_lib.check_generates(run_lib.load_run(path, **kwargs))
    mark("restore the checkpoint")

    real_function = tf.function

    def timed_function(*args, **kw):
        function = real_function(*args, **kw)

        class Timed:
            first = True

            def __call__(self, *call_args):
                if not self.first:
                    return function(*call_args)
                self.first = False
                mark("encode the prompt")
                function.get_concrete_function(*call_args)
                mark("trace the generation step")
                out = function(*call_args)
                out.numpy()
                mark("first call of the step")
                return out

        return Timed()

    tf.function = timed_function  # only the generation step is made after this
    session = ChatSession(
        Generator(run.backbone, run.tokenizer), max_new_tokens=200, temperature=0.0,
        top_k=40, top_p=1.0, seed=None, repetition_penalty=1.0, stop_strings=[],
    )
    prompt = session.ask(message)
    reply = "".join(session.reply(prompt))
    mark("decode, later chunks")
    print(reply)
    previous = T_START
    for name, t in marks:
        print(f"  {name:36s} {t - previous:6.2f}", file=sys.stderr)
        previous = t
    print(f"EXIT_AT {time.time():.3f}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "Hello")
