"""Starting `python -m tfchat.serve` for a test, as a user starts it: a
real process on a free loopback port, waited for until /health answers."""

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(run_path, *args, timeout=240):
    """Yields the server's base URL (http://127.0.0.1:PORT) while
    `python -m tfchat.serve --run run_path *args` runs; its output is in
    the exception if it dies or never answers."""
    port = free_port()
    log = open(os.path.join(os.path.dirname(os.path.abspath(run_path)),
                            f"serve-{port}.log"), "w+")
    process = subprocess.Popen(
        [sys.executable, "-m", "tfchat.serve", "--run", run_path, "--port", str(port), *args],
        stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"tfchat.serve exited with {process.returncode}:\n{log.read()}")
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as response:
                    if json.load(response)["status"] == "ok":
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                log.seek(0)
                raise RuntimeError(f"tfchat.serve did not answer in {timeout} s:\n{log.read()}")
            time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
