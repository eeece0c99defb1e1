"""Quiet start-up for the tfchat commands.

Every `python -m tfchat.<command>` (and its `tfchat-<command>` script) calls
`command_startup(__name__)` first, before anything imports TensorFlow. Unless
the user asks to see them (`--verbose`, or `TF_CPP_MIN_LOG_LEVEL=0`), that
hides the notices TensorFlow prints on every start, which read as failures
(TensorFlow 2.21, tensorflow-text 2.21, on a machine without a GPU):

* `WARNING: All log messages before absl::InitializeLog() is called are
  written to STDERR`, `I... port.cc] oneDNN custom operations are on...`,
  `I... cudart_stub.cc] Could not find cuda drivers on your machine...` (each
  twice) and `I... cpu_feature_guard.cc] This TensorFlow binary is
  optimized...`: absl logging while TensorFlow's shared libraries load, before
  TensorFlow reads TF_CPP_MIN_LOG_LEVEL; the first three print even at
  level 3. Hidden by filtering stderr while `tensorflow` is imported.
* `E... cuda_platform.cc] failed call to cuInit: ... (303)`: when the CUDA
  platform is first initialized, on a machine without a CUDA driver. Logged at
  error level, so only level 3 would hide it, and level 3 hides real errors
  too. Instead the platform is initialized inside the same filtered import
  (`tf.config.list_physical_devices()`, which creates no device), and the line
  is dropped only where the machine has no NVIDIA device: a GPU owner whose
  TensorFlow cannot use it keeps both CUDA lines. No GPU is ever hidden.
* `normalizer.cc(51) LOG(INFO) precompiled_charsmap is empty...`, twice per
  BPE tokenizer: SentencePiece's own logging inside tensorflow-text's op when
  the model resource is created. tensorflow-text links its own SentencePiece,
  which no variable or function reaches (the `sentencepiece` package's
  `minloglevel` only quiets its trainer, which tfchat already passes), so
  `SentencePieceTokenizer` creates it inside `muted_notices()`.
* every other INFO and WARNING line of TensorFlow's C++: TF_CPP_MIN_LOG_LEVEL=2
  (errors still print).

Only these exact lines are dropped; everything else written to stderr in a
filtered stretch (Python warnings, tracebacks, C++ errors, a fatal check's
message before an abort) passes through unchanged and in order. The filter is
a small child process, so what the command wrote before a crash still shows.

A TF_CPP_MIN_LOG_LEVEL the user set is used as it is: 0 shows everything, and
at 1 or more the INFO notices above that TensorFlow prints regardless of the
level are dropped too (at 3 TensorFlow hides the cuInit line itself).

Importing tfchat as a library (a notebook, a script) changes nothing of this:
`command_startup` acts only when its module is the command being run, and
`muted_notices()` only after it did. Those users keep TensorFlow's own
behaviour and set TF_CPP_MIN_LOG_LEVEL themselves; filtering their process's
stderr, or changing their environment, behind their back would be worse.
"""

import atexit
import contextlib
import gc
import glob
import importlib.abc
import importlib.util
import os
import re
import subprocess
import sys

VERBOSE_FLAG = "--verbose"
VERBOSE_HELP = (
    "Show TensorFlow's start-up notices (oneDNN, CUDA, absl, SentencePiece), "
    "hidden by default. A TF_CPP_MIN_LOG_LEVEL you set is used as is "
    "(0 shows everything)."
)

_ABSL_BANNER = rb"WARNING: All log messages before absl::InitializeLog\(\) is called"
# absl's line prefix: severity letter, MMDD, time, thread id, file:line.
_PREFIX = rb"[IWE]\d{4} [\d:.]+ +\d+ "
_INFO_NOTICES = (
    _ABSL_BANNER,
    _PREFIX + rb"port\.cc:\d+\] oneDNN custom operations are on",
    _PREFIX + rb"cpu_feature_guard\.cc:\d+\] This TensorFlow binary is optimized",
    rb"To enable the following instructions: .*rebuild TensorFlow with the appropriate",
    rb"normalizer\.cc\(\d+\) LOG\(INFO\) precompiled_charsmap is empty",
    # Logged at error level, but only says an int64 op (keras-hub's
    # tokenizer lookups) runs on Eigen instead of oneDNN.
    _PREFIX + rb"util\.cc:\d+\] oneDNN supports DT_INT64 only on platforms with AVX-512",
)
_NO_DRIVER_NOTICE = _PREFIX + rb"cudart_stub\.cc:\d+\] Could not find cuda drivers"
_CUINIT_ERROR = _PREFIX + rb"cuda_platform\.cc:\d+\] failed call to cuInit"

# The filter process: copies stdin to stdout, less the lines matching argv[1].
# It ignores Ctrl-C (the terminal sends it to the whole process group) so that
# it outlives the command and still forwards its last lines.
_FILTER_SOURCE = r"""
import re, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
hidden = re.compile(sys.argv[1].encode("latin-1"))
out = sys.stdout.buffer
for line in sys.stdin.buffer:
    if not hidden.match(line):
        out.write(line)
        out.flush()
"""

_hidden = None  # the compiled pattern of the lines to drop, once a command asked


def is_command(module_name):
    """Whether `module_name` (a command module's `__name__`) is the command
    this process runs: `python -m tfchat.chat` or the `tfchat-chat` script."""
    if module_name == "__main__":
        return True
    script = os.path.basename(sys.argv[0]) if sys.argv else ""
    return script == "tfchat-" + module_name.rsplit(".", 1)[-1].replace("_", "-")


def wants_verbose(argv):
    """`--verbose` among the options (not after `--`)."""
    for arg in argv:
        if arg == "--":
            return False
        if arg == VERBOSE_FLAG:
            return True
    return False


def add_verbose_flag(parser):
    """Adds `--verbose` (read by `command_startup`, from sys.argv) to a command's parser."""
    parser.add_argument(VERBOSE_FLAG, action="store_true", help=VERBOSE_HELP)
    return parser


def command_startup(module_name, fast_exit=False):
    """Call first in a command module, before anything imports TensorFlow:
    `quiet.command_startup(__name__)`. Does nothing unless that module is the
    command being run (see `is_command`).

    `fast_exit=True` (commands that write nothing at exit: chat, generate)
    skips the garbage collection Python runs at interpreter shutdown, about a
    second with TensorFlow loaded: `gc.freeze()` runs as the last exit handler,
    after every other one."""
    global _hidden
    if not is_command(module_name):
        return
    if fast_exit:
        atexit.register(gc.freeze)
    if _hidden is not None or wants_verbose(sys.argv[1:]):
        return
    user_level = os.environ.get("TF_CPP_MIN_LOG_LEVEL")
    if user_level is None:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
        hidden = list(_INFO_NOTICES)
        if not _has_nvidia_device():
            hidden += [_NO_DRIVER_NOTICE, _CUINIT_ERROR]
    else:
        try:
            level = int(user_level)
        except ValueError:
            level = 0  # TensorFlow reads a value it cannot parse as 0
        if level < 1:
            return
        hidden = list(_INFO_NOTICES) + [_NO_DRIVER_NOTICE]
    _hidden = re.compile(b"|".join(b"(?:%s)" % p for p in hidden))
    if "tensorflow" not in sys.modules:
        sys.meta_path.insert(0, _QuietTensorFlowImport())


def _has_nvidia_device():
    # Linux device nodes of NVIDIA GPUs; /dev/dxg is WSL2's GPU.
    return bool(glob.glob("/dev/nvidia[0-9]*")) or os.path.exists("/dev/dxg")


@contextlib.contextmanager
def muted_notices():
    """Drops the start-up notices from what is written to stderr (fd 2, so C++
    output too) inside the block, once a command called `command_startup`;
    otherwise does nothing. Everything else passes through, in order."""
    if _hidden is None:
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield
        return
    try:
        child = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _FILTER_SOURCE,
             _hidden.pattern.decode("latin-1")],
            stdin=subprocess.PIPE, stdout=saved, close_fds=True,
        )
        os.dup2(child.stdin.fileno(), 2)
    except (OSError, ValueError):
        os.close(saved)
        yield
        return
    try:
        yield
    finally:
        try:
            sys.stderr.flush()
        except (OSError, ValueError, AttributeError):
            pass
        os.dup2(saved, 2)
        os.close(saved)
        child.stdin.close()
        try:
            # Until it forwarded everything (a process started inside the
            # block may hold the pipe open; then it keeps forwarding alone).
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
    """Runs the first `import tensorflow` (whoever asks for it, whenever) inside
    `muted_notices()`, and lists the physical devices there, which initializes
    the CUDA platform (where cuInit logs its failure)."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def quiet_exec_module(module):
            with muted_notices():
                exec_module(module)
                try:
                    module.config.list_physical_devices()
                except Exception:  # noqa: BLE001  (only ever a side effect)
                    pass

        spec.loader.exec_module = quiet_exec_module
        return spec
