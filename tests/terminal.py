"""A command run on a pseudo-terminal, as a person at a terminal runs it."""

import os
import pathlib
import pty
import select
import subprocess
import time

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
# Subprocesses must import this checkout's tfchat, not an installed one.
ENV = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "TF_CPP_MIN_LOG_LEVEL": "3",
       "PYTHONUNBUFFERED": "1"}


class Terminal:
    """A child process on a pseudo-terminal, read until a marker shows."""

    def __init__(self, args):
        self.master, slave = pty.openpty()
        self.process = subprocess.Popen(
            args, stdin=slave, stdout=slave, stderr=subprocess.PIPE, env=ENV,
            cwd=str(REPO_ROOT), close_fds=True,
        )
        os.close(slave)
        self.output = ""

    def read_until(self, marker, timeout=90):
        deadline = time.monotonic() + timeout
        while marker not in self.output:
            assert self.process.poll() is None or select.select([self.master], [], [], 0)[0], (
                f"chat exited: {self.output!r} {self.process.stderr.read()[-2000:]!r}"
            )
            assert time.monotonic() < deadline, f"no {marker!r} in {self.output!r}"
            if select.select([self.master], [], [], 0.2)[0]:
                self.output += os.read(self.master, 4096).decode("utf-8", "replace")
        seen, self.output = self.output.split(marker, 1)
        return seen

    def send(self, line):
        os.write(self.master, (line + "\n").encode())
