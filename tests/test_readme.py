"""README.md is a contract: every command it shows runs, as a user runs it.

Every fenced shell block (bash, sh, shell, console) is read from README.md
and run, command by command, in a fresh folder outside the checkout,
against tfchat installed from a wheel built from the checkout (not the
editable install: the checkout is off `sys.path`), with `../shared` beside
that folder as it is beside a clone of this repository (the bundled
configs' tiny-shakespeare path is relative to it).

* A README section is a story (prepare -> fit -> chat -> export): a run a
  command names (`runs/NAME`) that an earlier block made (the last one
  before it to make that name) is copied into the block's folder first;
  files a user brings (`chats.jsonl`, `prefs.jsonl`, `./SmolLM2-135M`, ...;
  `USER_FILES`) and runs a user has (`USER_RUNS`) are made here, small, and
  linked in when a command names them. Blocks run two at a time, each once
  the blocks it takes runs from are done; the same fit in the same state
  (`python -m tfchat.fit` opens three sections) runs once.
* The interactive chat runs on a pseudo-terminal (a message, its reply,
  /exit); `tensorboard --logdir runs` must come up and say where it serves.
* Sizes too slow for the tests get the documented tiny overrides appended by
  one helper, `tiny` (argparse: the last value of a flag wins), never by
  editing the README's text; generation lengths likewise (`quick`).
* Each command must exit 0, print no traceback (nor TensorFlow's start-up
  notices, which every command hides), and, where the README shows output
  (a comment naming a path the command writes, a prompt echoed, the metrics
  it lists), produce output of that shape (`EXPECTED`).
* A block that cannot run here carries `# not run in tests: <reason>` in the
  README (on its own line at the top: the whole block; after a command: that
  command); `test_not_run_blocks_are_few_and_say_why` lists them.
* `pip install` lines are the set-up (the wheel is the install here): the
  extras they name must be the package's.
* Every flag the README writes for a `python -m tfchat.<command>` (in blocks
  and inline code) must be in that command's `--help`.
* The runner itself is tested: a misspelt flag, a removed command and a
  wheel missing a module each make a real README block fail.
"""

import collections
import concurrent.futures
import dataclasses
import json
import os
import pathlib
import pty
import re
import select
import shlex
import shutil
import subprocess
import sys
import threading
import time
import zipfile

import pytest

from conftest import REPO_ROOT, SHAKESPEARE

README = REPO_ROOT / "README.md"
SHARED = REPO_ROOT.parent / "shared"
SHELL_LANGUAGES = ("bash", "sh", "shell", "console")
MARKER = "not run in tests:"
# Blocks and commands the README marks as not run; kept small.
MAX_NOT_RUN = 7  # the 7th: tfchat.serve, a server that runs until stopped
# What TensorFlow prints at start-up and every tfchat command hides.
NOTICES = ("oneDNN custom operations are on", "All log messages before absl::InitializeLog",
           "Could not find cuda drivers")
TIMEOUT = 600
# Blocks run at a time (each in its own folder).
WORKERS = 2


# --- reading the README ---

@dataclasses.dataclass
class Command:
    line: int  # README line the command starts on
    text: str  # as written, continuation lines joined, without its comment
    comment: str = ""  # its trailing comment
    skip: str = ""  # why it is not run (a marker), else ""
    output: tuple = ()  # the output a console block shows after it

    def where(self):
        return f"README.md:{self.line}: {self.text}"


@dataclasses.dataclass
class Block:
    line: int  # README line of the opening fence
    section: str
    language: str
    commands: list
    skip: str = ""  # why the whole block is not run, else ""

    @property
    def id(self):
        return f"L{self.line}-" + re.sub(r"\W+", "_", self.section).strip("_")


def split_comment(line):
    """(code, comment) of a shell line: a `#` outside quotes, at the start
    or after a space, starts the comment."""
    quote = None
    escaped = False
    for i, ch in enumerate(line):
        if escaped:
            escaped = False
        elif ch == "\\" and quote != "'":
            escaped = True
        elif quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip(), line[i + 1:].strip()
    return line.rstrip(), ""


def _complete(code):
    try:
        shlex.split(code)
        return True
    except ValueError:  # an open quote: the command goes on on the next line
        return False


def _marker_reason(comment):
    index = comment.find(MARKER)
    if index < 0:
        return ""
    return comment[index + len(MARKER):].strip() or "?"


def parse_blocks(text):
    """Every fenced shell block of a Markdown text, in order, with its
    commands (backslash continuations and open quotes joined)."""
    blocks, section, lines = [], "", text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        fence = re.match(r"^```\s*(\w*)\s*$", line)
        if not fence:
            if line.startswith("#"):
                section = line.lstrip("#").strip()
            i += 1
            continue
        language, start = fence.group(1).lower(), i + 1
        i += 1
        body = []
        while i < len(lines) and not lines[i].startswith("```"):
            body.append((i + 1, lines[i]))
            i += 1
        i += 1  # the closing fence
        if language in SHELL_LANGUAGES:
            blocks.append(_parse_block(start, section, language, body))
    return blocks


def _parse_block(start, section, language, body):
    block = Block(start, section, language, [])
    skip_rest = ""
    j = 0
    while j < len(body):
        number, raw = body[j]
        j += 1
        if language == "console":
            if not raw.startswith("$ "):
                if raw.strip() and block.commands:  # output the README shows
                    block.commands[-1].output += (raw,)
                continue
            raw = raw[2:]
        acc = raw
        while True:
            code, comment = split_comment(acc)
            if j < len(body) and code.endswith("\\"):  # a continuation line
                acc = code[:-1].rstrip() + " " + body[j][1].strip()
            elif j < len(body) and not _complete(code):  # a quote still open
                acc = acc + "\n" + body[j][1]
            else:
                break
            j += 1
        if not code.strip():
            reason = _marker_reason(comment)
            if reason:
                if block.commands:
                    skip_rest = reason  # the commands from here on
                else:
                    block.skip = reason  # the whole block
            continue
        block.commands.append(Command(number, code.strip(), comment,
                                      _marker_reason(comment) or skip_rest))
    return block


def readme_blocks():
    return parse_blocks(README.read_text(encoding="utf-8"))


def segments(code):
    """A command line as [(argv, operator)], operators `|`, `&&`, `;` or ""."""
    lexer = shlex.shlex(code, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = ""
    parts, argv = [], []
    for token in lexer:
        if token in ("|", "&&", ";", "||"):
            parts.append((argv, token))
            argv = []
        else:
            argv.append(token)
    parts.append((argv, ""))
    return parts


def join_segments(parts):
    return " ".join(shlex.join(argv) + (f" {op}" if op else "") for argv, op in parts if argv)


def tfchat_command(argv):
    """'fit' for ["python", "-m", "tfchat.fit", ...], 'lora merge' for the
    lora subcommand; None for anything else."""
    if len(argv) >= 3 and argv[:2] == ["python", "-m"] and argv[2].startswith("tfchat."):
        name = argv[2][len("tfchat."):]
        if name == "lora" and len(argv) > 3 and not argv[3].startswith("-"):
            return f"lora {argv[3]}"
        return name
    return None


def flag_value(argv, flag):
    value = None
    for i, token in enumerate(argv):
        if token == flag and i + 1 < len(argv):
            value = argv[i + 1]
        elif token.startswith(flag + "="):
            value = token.split("=", 1)[1]
    return value


# --- the tiny overrides: the one place sizes change ---

# Every key is one `python -m tfchat.fit --help` lists (tested below).
TINY_MODEL = {"model.num_layers": 1, "model.num_heads": 2, "model.hidden_dim": 32,
              "model.intermediate_dim": 0, "model.block_size": 64}
TINY_TOKENIZER = {"tokenizer.vocab_size": 500}  # chatterbot needs 368 characters
TINY_TRAIN = {"train.max_steps": 2, "train.warmup_steps": 0, "train.batch_size": 4,
              "train.eval_interval": 2, "train.eval_batches": 1, "train.log_interval": 1,
              "train.sample_tokens": 0, "train.jit_compile": "false", "train.shuffle_buffer": 64}
# Generation lengths of the commands that generate (chat, generate, evaluate).
QUICK = {"chat": ["--max-new-tokens", "8"], "generate": ["--max-new-tokens", "16"],
         "evaluate": ["--limit", "4", "--max-new-tokens", "8"]}


def _flags(settings):
    return [token for key, value in settings.items() for token in (f"--{key}", str(value))]


def tiny(argv):
    """`argv` (a `python -m tfchat.fit` command) with the tiny overrides
    appended; appended flags win. A run from `init_from` keeps its model
    shape and tokenizer, a student its teacher's tokenizer, a resumed run its
    settings (two more steps)."""
    if "--help" in argv or "-h" in argv:
        return argv
    if "--resume" in argv:
        return argv + ["--train.max_steps", "4"]
    if flag_value(argv, "--init_from"):
        return argv + _flags(TINY_TRAIN)
    if flag_value(argv, "--objective") == "distill":
        return argv + _flags({**TINY_MODEL, **TINY_TRAIN})
    return argv + _flags({**TINY_MODEL, **TINY_TOKENIZER, **TINY_TRAIN})


def quick(argv):
    """Any tfchat command as the tests run it: fit made tiny, generation short."""
    command = tfchat_command(argv)
    if command == "fit":
        return tiny(argv)
    if command in QUICK and "--help" not in argv:
        return argv + QUICK[command]
    return argv


def is_interactive_chat(argv, piped):
    """`python -m tfchat.chat --run RUN` with no message and nothing piped in
    starts the interactive chat (a terminal)."""
    if tfchat_command(argv) != "chat" or piped or "--help" in argv:
        return False
    rest, i = argv[3:], 0
    while i < len(rest):
        if rest[i] == "--verbose":
            i += 1
        elif rest[i].startswith("--"):
            i += 1 if "=" in rest[i] else 2
        else:
            return False  # a message: one reply
    return True


# --- what the README shows each command does ---

def _stdout_has(*words):
    def check(result, cwd):
        return [f"no {w!r} in its output" for w in words if w.lower() not in result.stdout.lower()]
    return check


def _stdout_nonempty(result, cwd):
    return [] if result.stdout.strip() else ["it printed nothing"]


def _stdout_starts(prefix):
    def check(result, cwd):
        return [] if result.stdout.startswith(prefix) else [f"its output does not start with {prefix!r}"]
    return check


def _files(*paths):
    def check(result, cwd):
        return [f"it wrote no {p}" for p in paths if not (cwd / p).exists()]
    return check


def _fit(result, cwd):
    """fit: the run it names is written, and it says how to go on."""
    if "--help" in result.argv:
        return _fit_help(result, cwd)
    trained = re.search(r"Training (runs/[\w.-]+)", result.stdout)
    if not trained:
        return ["no 'Training runs/<name>' line in its output"]
    run = cwd / trained.group(1)
    problems = [f"{trained.group(1)} has no {f}" for f in ("config.json", "checkpoints", "metrics.jsonl")
                if not (run / f).exists()]
    return problems + ([] if "\nDone." in result.stdout else ["no 'Done.' in its output"])


def _fit_help(result, cwd):
    # "every config key, with its default"
    from tfchat import config as config_lib

    missing = [k for k, *_ in config_lib.flat_keys() if f"--{k}" not in result.stdout]
    return ([f"--help lacks {missing}"] if missing else []) + (
        [] if result.stdout.count("(default:") >= len(list(config_lib.flat_keys()))
        else ["--help does not give every key's default"])


def _convert(result, cwd):
    name = flag_value(result.argv, "--name")
    return _files(f"runs/{name}/config.json", f"runs/{name}/tokenizer")(result, cwd)


def _export(result, cwd):
    argv = result.argv
    out = flag_value(argv, "--out")
    if out:
        shape = {"hf": ("config.json", "model.safetensors"),
                 "keras-hub": ("metadata.json", "config.json", "model.weights.h5")}
        return _files(*(f"{out}/{f}" for f in shape[flag_value(argv, "--format")]))(result, cwd)
    name = flag_value(argv, "--name") or flag_value(argv, "--run").rstrip("/").split("/")[-1]
    version = flag_value(argv, "--version")
    found = sorted((cwd / "saved_models" / name).glob(f"{version or '*'}/saved_model.pb"))
    problems = [] if found else [f"no saved_models/{name}/{version or '<version>'}/saved_model.pb"]
    if found and flag_value(argv, "--quantize"):
        meta = json.loads((found[-1].parent / "assets.extra" / "tfchat.json").read_text())
        if "int8" not in json.dumps(meta.get("quantization")):
            problems.append("tfchat.json records no int8 quantization")
    return problems


def _evaluate(result, cwd):
    run = flag_value(result.argv, "--run")
    return _files(f"{run}/evaluation.json")(result, cwd)


# (pattern on the command as the README writes it, check). Every matching
# check applies; paths a command's comment names are checked besides.
EXPECTED = [
    (r"tfchat\.fit\b", _fit),
    (r"tfchat\.convert\b", _convert),
    (r"tfchat\.export\b", _export),
    (r"tfchat\.evaluate\b", _evaluate),
    (r"tfchat\.evaluate --run runs/mychat_dpo", _stdout_has("reward")),
    (r"tfchat\.evaluate --run runs/my_classifier", _stdout_has("accuracy", "macro", "confusion")),
    (r"tfchat\.evaluate --run runs/default$", _stdout_has("bleu", "rouge", "chrf")),
    (r"tfchat\.generate .*--prompt \"ROMEO:\"", _stdout_starts("ROMEO:")),
    (r"tfchat\.generate .*--prompt \"Once upon a time\"", _stdout_starts("Once upon a time")),
    (r"tfchat\.fit .*--resume", _stdout_has("step 4:")),  # "continue a stopped run": 2 more steps
    (r"tfchat\.chat .*(\"How are you\?\"|--temperature 0)", _stdout_nonempty),  # one reply
    (r"tfchat\.fill_mask", _stdout_has("[MASK]", "->")),
    (r"tfchat\.lora merge", _stdout_has("Merged the adapters")),
    (r"tensorboard --logdir", _stdout_has("TensorBoard", "http://")),
]
_COMMENT_PATH = re.compile(r"(?:runs|saved_models|exports)/[\w./-]*\w/?")


def expected_problems(command, result, cwd):
    problems = []
    for pattern, check in EXPECTED:
        if re.search(pattern, command.text):
            problems += check(result, cwd)
    # A path its comment names, e.g. "# saved_models/default/1/, then 2/, ...".
    problems += _files(*_COMMENT_PATH.findall(command.comment))(result, cwd)
    problems += [f"no line of the shape {line!r} in its output" for line in command.output
                 if not _shape_found(line, result.stdout)]
    return problems


def _shape_found(line, stdout):
    """A console block's output line, numbers and run-dependent values free."""
    pattern = re.sub(r"\\?\d[\d.,e+-]*", r"[\\d.,e+-]+", re.escape(line.strip()))
    return re.search(pattern, stdout) is not None


# --- running the blocks ---

@dataclasses.dataclass
class Result:
    command: Command
    argv: list  # the tfchat command's arguments as run (the last tfchat segment)
    shell: str  # what ran
    returncode: int = 0
    stdout: str = ""
    stderr: str = ""
    seconds: float = 0.0
    problems: list = dataclasses.field(default_factory=list)
    reused: str = ""

    @property
    def ok(self):
        return not self.problems

    def report(self):
        text = (f"{self.command.where()}\n  ran: {self.shell}\n  exit {self.returncode}, "
                f"{self.seconds:.0f} s{self.reused}\n  " + "\n  ".join(self.problems))
        return text + f"\n  stdout: ...{self.stdout[-1500:]}\n  stderr: ...{self.stderr[-3000:]}"


def _config_name(argv):
    """The run name `python -m tfchat.fit` gives: --name, else the last
    --config's `name`, else the default's."""
    from tfchat import config as config_lib
    from tfchat.errors import TfchatError

    name = flag_value(argv, "--name")
    configs = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--config"]
    if not name and configs:
        try:
            name = config_lib.load_file(configs[-1]).get("name")
        except TfchatError:  # a user's file that is not there: the command will say
            name = None
    return name or config_lib.Config.name


def runs_made(argv):
    """The runs (names under runs/) a command writes, read from its arguments."""
    command = tfchat_command(argv)
    if command == "fit" and "--help" not in argv and "--resume" not in argv:
        return {_config_name(argv)}
    if command == "convert" and "--help" not in argv:
        return {flag_value(argv, "--name")} - {None}
    if command == "lora merge" and flag_value(argv, "--run"):
        out = flag_value(argv, "--out") or flag_value(argv, "--run").rstrip("/") + "_merged"
        return {out.split("runs/", 1)[-1]} if out.startswith("runs/") else set()
    return set()


def runs_named(text):
    names = set(re.findall(r"runs/([\w.-]+)", text))
    resumed = re.search(r"--name\s+([\w.-]+)", text)
    if resumed and "--resume" in text:
        names.add(resumed.group(1))
    return names


def block_needs(block):
    """{name: None} for every run a block uses that it does not make first."""
    made, needed = set(), set()
    for command in block.commands:
        if command.skip or block.skip:
            continue
        needed |= runs_named(command.text) - made
        for argv, _ in segments(command.text):
            made |= runs_made(argv)
    return needed, made


def producers(blocks):
    """{block line: {run name: line of the earlier block that makes it}}:
    a section is a story, and a run comes from the last block before that
    made one of that name."""
    made_by, result = {}, {}
    for block in blocks:
        needed, made = block_needs(block)
        result[block.line] = {name: made_by[name] for name in needed if name in made_by}
        for name in made:
            made_by[name] = block.line
    return result


class World:
    """The user's machine: tfchat installed at `site`, a folder per block
    beside `../shared`, the files a user brings (`user`), and runs: those a
    user already has (`runs`, {name: folder}) and those earlier blocks made."""

    def __init__(self, root, site, user=None, runs=None):
        self.root = pathlib.Path(root)
        self.site = pathlib.Path(site)
        self.user = pathlib.Path(user) if user else None
        self.runs = dict(runs or {})
        self.memo = {}
        self.lock = threading.Lock()
        self.root.mkdir(parents=True, exist_ok=True)
        shared = self.root / "shared"
        if SHARED.is_dir() and not shared.exists():
            shared.symlink_to(SHARED)
        bin_dir = self.root / ".bin"
        bin_dir.mkdir(exist_ok=True)
        if not (bin_dir / "python").exists():
            (bin_dir / "python").symlink_to(sys.executable)
        # A new user's shell: no TF_CPP_MIN_LOG_LEVEL (the tests' own setting).
        env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "PYTHONPATH")}
        self.env = {**env, "PYTHONPATH": str(self.site), "PYTHONUNBUFFERED": "1",
                    "PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"}

    def folder(self, block):
        return self.root / (f"L{block.line}" if block.line else re.sub(r"\W+", "_", block.section))

    def run_block(self, block, sources=None):
        """Runs the block's commands in order in a fresh folder; stops at the
        first failure. `sources`: {run name: folder} of runs made before
        (default: the user's). Returns the results."""
        cwd = self.folder(block)
        cwd.mkdir(parents=True, exist_ok=True)
        sources = {**self.runs, **(sources or {})}
        results = []
        for command in block.commands:
            if command.skip or block.skip:
                continue
            result = self.run_command(command, cwd, sources)
            results.append(result)
            if not result.ok:
                break
        return results

    def run_blocks(self, blocks, workers=2):
        """Runs `blocks` (README order), `workers` at a time, each once the
        blocks whose runs it uses are done. Returns {line: results}; a block
        whose producer failed is not run (its results say so)."""
        needs = producers(blocks)
        done, running, results = {}, {}, {}
        # Blocks that others wait for first, then in README order.
        waiting = collections.Counter(line for wanted in needs.values() for line in wanted.values())
        pending = sorted(blocks, key=lambda b: (-waiting[b.line], b.line))
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            while pending or running:
                for block in list(pending):
                    wanted = needs[block.line]
                    if len(running) >= workers or any(line not in done for line in wanted.values()):
                        continue
                    pending.remove(block)
                    failed = [line for line in wanted.values() if not done[line]]
                    if failed:
                        results[block.line] = f"not run: the block at README.md:{failed[0]} failed"
                        done[block.line] = False
                        continue
                    sources = {name: self.folder(b) / "runs" / name
                               for b in blocks for name, line in wanted.items() if b.line == line}
                    running[pool.submit(self.run_block, block, sources)] = block
                if not running:
                    continue
                finished, _ = concurrent.futures.wait(running, return_when="FIRST_COMPLETED")
                for future in finished:
                    block = running.pop(future)
                    try:
                        results[block.line] = future.result()
                        done[block.line] = all(r.ok for r in results[block.line])
                    except Exception as e:  # the runner's own failure: report it
                        results[block.line] = f"the runner failed: {e!r}"
                        done[block.line] = False
        return results

    def _bring(self, text, cwd, sources):
        """Copies in the runs `text` names that are not here yet and links
        the user's files it names; returns {name: where it came from}."""
        brought = {}
        for name in sorted(runs_named(text)):
            target = cwd / "runs" / name
            if not target.exists() and name in sources and pathlib.Path(sources[name]).is_dir():
                shutil.copytree(sources[name], target, symlinks=True)
            if target.exists():
                brought[name] = str(sources.get(name, target))
        for name in USER_FILES:
            if self.user and re.search(rf"(^|[\s=])(\./)?{re.escape(name)}(/|\s|$)", text):
                if not (cwd / name).exists() and (self.user / name).exists():
                    (cwd / name).symlink_to(self.user / name)
        return brought

    def run_command(self, command, cwd, sources=None):
        parts = segments(command.text)
        run_parts, argv = [], []
        for part, op in parts:
            if part[:2] == ["pip", "install"]:
                continue  # the set-up: here the wheel is the install
            if tfchat_command(part):
                part = quick(part)
                argv = part
            run_parts.append((part, op))
        if run_parts:  # an operator after the last command kept would dangle
            run_parts[-1] = (run_parts[-1][0], "")
        shell = join_segments(run_parts)
        result = Result(command, argv, shell)
        if not shell:
            return result
        brought = self._bring(command.text, cwd, sources or {})
        if tfchat_command(argv) != "fit":
            self._execute(command, run_parts, cwd, result)
            return result
        # The same fit in the same state gives the same run: made once.
        key = (shell, tuple(sorted(brought.items())), tuple(sorted(p.name for p in cwd.iterdir())))
        with self.lock:
            entry = self.memo.get(key)
            first = entry is None
            if first:
                entry = self.memo[key] = {"done": threading.Event()}
        if first:
            before = {p.name for p in (cwd / "runs").glob("*")}
            self._execute(command, run_parts, cwd, result)
            entry["result"] = result
            entry["made"] = {p.name: p for p in (cwd / "runs").glob("*") if p.name not in before}
            entry["done"].set()
            return result
        entry["done"].wait()
        for name, path in entry["made"].items():
            if not (cwd / "runs" / name).exists():
                shutil.copytree(path, cwd / "runs" / name, symlinks=True)
        earlier = entry["result"]
        return dataclasses.replace(earlier, command=command, problems=list(earlier.problems), seconds=0.0,
                                   reused=f" (the same command as README.md:{earlier.command.line})")

    def _execute(self, command, run_parts, cwd, result):
        start = time.monotonic()
        piped = any(op == "|" for _, op in run_parts[:-1])
        if is_interactive_chat(run_parts[-1][0], piped):
            self._terminal(result.shell, cwd, result)
        elif run_parts[-1][0][:1] == ["tensorboard"]:
            self._server(result.shell, cwd, result)
        else:
            self._run(result.shell, cwd, result)
        result.seconds = time.monotonic() - start
        self._check(command, result, cwd)

    def _run(self, shell, cwd, result):
        try:
            proc = subprocess.run(["bash", "-o", "pipefail", "-c", shell], cwd=cwd, env=self.env,
                                  stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  timeout=TIMEOUT)
        except subprocess.TimeoutExpired as e:
            result.returncode, result.stdout = -1, (e.stdout or b"").decode("utf-8", "replace")
            result.problems.append(f"it ran past {TIMEOUT} s")
            return
        result.returncode, result.stdout, result.stderr = proc.returncode, proc.stdout, proc.stderr

    def _terminal(self, shell, cwd, result):
        """The interactive chat on a pseudo-terminal: one message, its reply, /exit."""
        master, slave = pty.openpty()
        proc = subprocess.Popen(["bash", "-c", shell], cwd=cwd, env=self.env, stdin=slave,
                                stdout=slave, stderr=subprocess.PIPE, close_fds=True)
        os.close(slave)
        output = ""

        def read_until(marker, after=0):
            nonlocal output
            deadline = time.monotonic() + TIMEOUT
            while output.count(marker) <= after and time.monotonic() < deadline:
                if select.select([master], [], [], 0.2)[0]:
                    try:
                        output += os.read(master, 4096).decode("utf-8", "replace")
                    except OSError:  # the child closed the terminal
                        return False
                elif proc.poll() is not None:
                    return False
            return output.count(marker) > after

        try:
            if read_until("you> "):
                os.write(master, b"How are you?\n")
                if read_until("you> ", after=1):
                    os.write(master, b"/exit\n")
            result.returncode = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            result.returncode = proc.wait()
            result.problems.append("the interactive chat did not exit after /exit")
        finally:
            os.close(master)
        result.stdout, result.stderr = output.replace("\r\n", "\n"), proc.stderr.read().decode()
        proc.stderr.close()
        if "bot> " not in result.stdout or result.stdout.count("you> ") < 2:
            result.problems.append("the interactive chat did not answer a message with 'bot> ...'")

    def _server(self, shell, cwd, result, ready=re.compile(r"TensorBoard \S+ at http://\S+")):
        """A server the README starts: it must come up (then it is stopped)."""
        proc = subprocess.Popen(["bash", "-c", f"exec {shell}"], cwd=cwd, env=self.env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
        fd, output, deadline = proc.stdout.fileno(), b"", time.monotonic() + 180
        while not ready.search(output.decode("utf-8", "replace")) and time.monotonic() < deadline:
            if select.select([fd], [], [], 0.5)[0]:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break  # it exited
                output += chunk
        up = ready.search(output.decode("utf-8", "replace")) is not None
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        result.stdout = output.decode("utf-8", "replace")
        result.returncode = 0 if up else (proc.returncode or 1)
        if not up:
            result.problems.append("the server did not say where it serves")

    def _check(self, command, result, cwd):
        if result.returncode != 0:
            result.problems.append(f"exit status {result.returncode}")
        if "Traceback (most recent call last)" in result.stdout + result.stderr:
            result.problems.append("it printed a traceback")
        if result.argv:
            notices = [n for n in NOTICES if n in result.stderr]
            if notices:
                result.problems.append(f"TensorFlow's start-up notices were not hidden: {notices}")
        if result.returncode == 0:
            result.problems += expected_problems(command, result, cwd)


# --- the files a user brings (the README names them; they are the user's) ---

def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


def _chatterbot():
    from tfchat.data.files import chatterbot_conversations

    return [(category, turns) for category, turns in chatterbot_conversations("english")
            if len(turns) >= 2]


def _my_texts(path):
    text = SHAKESPEARE.read_text(encoding="utf-8")
    path.mkdir()
    (path / "part1.txt").write_text(text[:60_000], encoding="utf-8")
    (path / "part2.txt").write_text(text[60_000:120_000], encoding="utf-8")


def _notes(path):
    path.write_text(SHAKESPEARE.read_text(encoding="utf-8")[120_000:160_000], encoding="utf-8")


def _chats(path):
    records = []
    for _, turns in _chatterbot():
        roles = ["user", "assistant"] * len(turns)
        records.append({"messages": [{"role": r, "content": t} for r, t in zip(roles, turns)]})
    _write_jsonl(path, records)


def _prefs(path):
    """Pairs in the forms README's Preference tuning shows: an explicit
    prompt, messages, whole conversations, labelled replies."""
    exchanges = [(turns[0], turns[1]) for _, turns in _chatterbot()][:60]
    records = []
    for i, (prompt, reply) in enumerate(exchanges):
        other = exchanges[(i + 7) % len(exchanges)][1]
        if other == reply:
            continue
        form = i % 4
        if form == 0:
            records.append({"prompt": prompt, "chosen": reply, "rejected": other})
        elif form == 1:
            records.append({"prompt": [{"role": "system", "content": "Be kind."},
                                       {"role": "user", "content": prompt}],
                            "chosen": [{"role": "assistant", "content": reply}],
                            "rejected": [{"role": "assistant", "content": other}]})
        elif form == 2:
            user = {"role": "user", "content": prompt}
            records.append({"chosen": [user, {"role": "assistant", "content": reply}],
                            "rejected": [user, {"role": "assistant", "content": other}]})
        else:
            records += [{"prompt": prompt, "completion": reply, "label": True},
                        {"prompt": prompt, "completion": other, "label": False}]
    _write_jsonl(path, records)


def _labelled(path):
    import csv

    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        for category, turns in _chatterbot():
            if category in ("greetings", "food", "sports", "computers"):
                writer.writerows([turn, category] for turn in turns)


SMOLLM_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content']"
    " + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def _smollm2(path):
    """A tiny random checkpoint in SmolLM2-Instruct's Hugging Face layout
    (keras-hub writes it; tests/pretrained_checkpoints.py)."""
    from pretrained_checkpoints import CHATML_LLAMA, make_causal_lm

    make_causal_lm(CHATML_LLAMA).export_to_transformers(str(path))
    config = json.loads((path / "config.json").read_text())
    config.update({"architectures": ["LlamaForCausalLM"], "max_position_embeddings": 256})
    (path / "config.json").write_text(json.dumps(config))
    tokenizer_config = path / "tokenizer_config.json"
    settings = json.loads(tokenizer_config.read_text()) if tokenizer_config.exists() else {}
    settings["chat_template"] = SMOLLM_CHAT_TEMPLATE
    tokenizer_config.write_text(json.dumps(settings))


def _gpt2_preset(path):
    """A tiny random GPT-2 as a keras-hub preset directory."""
    from pretrained_checkpoints import make_causal_lm

    make_causal_lm("gpt2").save_to_preset(str(path))


USER_FILES = {
    "my_texts": _my_texts,
    "notes.txt": _notes,
    "chats.jsonl": _chats,
    "prefs.jsonl": _prefs,
    "labelled.csv": _labelled,
    "SmolLM2-135M": _smollm2,
    "gpt2_base_en": _gpt2_preset,
}
# Runs the README takes a user to have already (the name it uses, the
# command that makes one).
USER_RUNS = {"pretrained": "python -m tfchat.convert ./SmolLM2-135M --name pretrained"}


# --- fixtures ---

def install(wheel, target):
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", str(target),
         str(wheel)], capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return target


@pytest.fixture(scope="module")
def site(wheel, tmp_path_factory):
    """tfchat installed from the wheel, alone in a folder (the dependencies
    come from the system's site-packages)."""
    return install(wheel, tmp_path_factory.mktemp("readme_site") / "site")


@pytest.fixture(scope="module")
def story(site, tmp_path_factory, request):
    """The selected README blocks (and those whose runs they use) run on the
    user's machine, with their files and runs, two at a time: {line: results}."""
    if not SHAKESPEARE.is_file():
        pytest.skip(f"../shared is missing ({SHAKESPEARE})")
    root = tmp_path_factory.mktemp("readme")
    user = root / "user"
    user.mkdir()
    for name, make in USER_FILES.items():
        make(user / name)
    world = World(root / "work", site, user)
    for name, text in USER_RUNS.items():
        (result,) = world.run_block(Block(0, f"user's {name}", "bash", [Command(0, text)]))
        assert result.ok, result.report()
        world.runs[name] = world.folder(Block(0, f"user's {name}", "bash", [])) / "runs" / name
    selected = {item.callspec.params["block"].line for item in request.session.items
                if item.originalname == "test_readme_block_runs_as_shown"}
    needs = producers(BLOCKS)
    for block in reversed(BLOCKS):  # and the blocks whose runs they use
        if block.line in selected:
            selected |= set(needs[block.line].values())
    start = time.monotonic()
    results = world.run_blocks([b for b in BLOCKS if b.line in selected and not b.skip], workers=WORKERS)
    seconds = [(r.seconds, r.command.where()) for rs in results.values() if not isinstance(rs, str) for r in rs]
    summary = [f"README blocks: {time.monotonic() - start:.0f} s ({WORKERS} at a time), "
               f"{len(seconds)} commands, {sum(s for s, _ in seconds):.0f} s in all; the longest:"]
    summary += [f"  {s:6.1f} s  {where[:110]}" for s, where in sorted(seconds, reverse=True)[:12]]
    (root / "timings.txt").write_text("\n".join(summary + [f"  {s:6.1f} s  {w}" for s, w in seconds]) + "\n")
    with request.config.pluginmanager.getplugin("capturemanager").global_and_fixture_disabled():
        print("\n" + "\n".join(summary))
    return results


BLOCKS = readme_blocks()
# The `python -m tfchat.<command>` modules of the checkout.
COMMANDS = sorted(p.stem for p in (REPO_ROOT / "tfchat").glob("*.py")
                  if re.search(r"^def main\(", p.read_text(encoding="utf-8"), re.M))


# --- the tests ---

def test_the_readme_has_shell_blocks_and_every_one_is_read():
    fences = [line for line in README.read_text(encoding="utf-8").splitlines()
              if re.match(r"^```\s*(bash|sh|shell|console)\s*$", line)]
    assert len(BLOCKS) == len(fences) >= 15
    assert all(block.commands for block in BLOCKS)
    for block in BLOCKS:
        for command in block.commands:
            assert "\\\n" not in command.text and not command.text.endswith("\\"), command.where()
            segments(command.text)  # every command splits into argv lists


def test_not_run_blocks_are_few_and_say_why():
    not_run = [(f"README.md:{b.line} ({b.section})", "block", b.skip) for b in BLOCKS if b.skip]
    not_run += [(c.where(), "command", c.skip) for b in BLOCKS if not b.skip for c in b.commands if c.skip]
    print(f"\n{len(not_run)} README blocks or commands are not run in tests:")
    for where, kind, reason in not_run:
        print(f"  {kind:7} {where}: {reason}")
    assert all(reason and reason != "?" for *_, reason in not_run), not_run
    assert len(not_run) <= MAX_NOT_RUN, not_run
    # What cannot run here is marked: the test suite itself, servers it does
    # not have, other machines.
    for block in BLOCKS:
        for command in block.commands:
            if block.skip or command.skip:
                continue
            for argv, _ in segments(command.text):
                assert argv[:3] != ["python", "-m", "pytest"], f"{command.where()}: runs the tests themselves"
                assert argv[:1] not in (["docker"], ["curl"]), f"{command.where()}: needs a marker"


def _pip_installs():
    """Every `pip install ...` the README writes, in blocks or inline code."""
    text = README.read_text(encoding="utf-8")
    found = [argv for b in BLOCKS for c in b.commands for argv, _ in segments(c.text)
             if argv[:2] == ["pip", "install"]]
    for span in re.findall(r"`(pip install [^`]+)`", text):
        found += [argv for argv, _ in segments(span) if argv[:2] == ["pip", "install"]]
    return found


def test_pip_install_lines_name_the_package_and_its_extras(wheel):
    with zipfile.ZipFile(wheel) as z:
        (metadata,) = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        extras = {line.split(":", 1)[1].strip() for line in z.read(metadata).decode().splitlines()
                  if line.startswith("Provides-Extra:")}
    installs = _pip_installs()
    assert len(installs) >= 4
    named = set()
    for argv in installs:
        targets = [a for a in argv[2:] if not a.startswith("-")]
        assert targets, argv
        for target in targets:
            match = re.fullmatch(r"(\.|tfchat)(?:\[([\w,-]+)\])?", target)
            assert match, f"pip install {target}: not this package"
            named |= set(filter(None, (match.group(2) or "").split(",")))
    assert named and named <= extras, f"extras the package lacks: {named - extras}"


def _readme_tfchat_commands():
    """(command, flags, where) for every `python -m tfchat.<command>` in the
    README's blocks and inline code (`tfchat.convert --chat_template`
    included)."""
    found = []
    for block in BLOCKS:
        for command in block.commands:
            for argv, _ in segments(command.text):
                name = tfchat_command(argv)
                if name:
                    found.append((name, [a.split("=")[0] for a in argv if a.startswith("--")],
                                  command.where()))
    text = README.read_text(encoding="utf-8")
    for span in re.findall(r"`([^`]*tfchat\.\w+[^`]*)`", text):
        span = " ".join(span.split())
        for match in re.finditer(r"(?:python -m )?tfchat\.(\w+)((?: (?!tfchat\.)\S+)*)", span):
            name = match.group(1)
            if name not in COMMANDS and not match.group(0).startswith("python -m "):
                continue  # a module or file, not a command
            words = match.group(2).split()
            if name == "lora" and words[:1] == ["merge"]:
                name = "lora merge"
            found.append((name, [w for w in words if w.startswith("--")], f"README.md: `{span}`"))
    return found


def _help(site, command, cwd):
    env = {**os.environ, "PYTHONPATH": str(site)}
    proc = subprocess.run([sys.executable, "-m", f"tfchat.{command.split()[0]}", *command.split()[1:],
                           "--help"], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, (command, proc.stderr[-2000:])
    return proc.stdout


def test_every_flag_the_readme_writes_is_in_its_commands_help(site, tmp_path):
    commands = _readme_tfchat_commands()
    names = sorted({name for name, *_ in commands})
    assert {"fit", "chat", "generate", "evaluate", "export", "prepare", "convert", "lora merge",
            "fill_mask", "serve_client"} <= set(names), names
    helps = {name: _help(site, name, tmp_path) for name in names}
    missing = [(where, name, flag) for name, flags, where in commands for flag in flags
               if not re.search(rf"(^|[\s,\[]){re.escape(flag)}([\s,=\]]|$)", helps[name], re.M)]
    assert not missing, "flags the README writes that the commands lack:\n" + "\n".join(map(str, missing))
    # Config keys written alone (`--train.profile_steps 20,30`) are fit's.
    text = README.read_text(encoding="utf-8")
    keys = set(re.findall(r"`(--[a-z_]+\.[a-z_0-9]+)[ `]", text))
    assert keys and not [k for k in keys if k not in helps["fit"]], keys
    # The tiny overrides are documented keys too.
    for key in {**TINY_MODEL, **TINY_TOKENIZER, **TINY_TRAIN}:
        assert f"--{key} " in helps["fit"], key


@pytest.mark.slow
@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_readme_block_runs_as_shown(block, story):
    if block.skip:
        pytest.skip(f"README.md:{block.line}: {MARKER} {block.skip}")
    results = story[block.line]
    assert not isinstance(results, str), f"README.md:{block.line}: {results}"
    failed = [r for r in results if not r.ok]
    assert not failed, failed[0].report()
    assert len(results) == sum(1 for c in block.commands if not c.skip)


# --- the runner fails where the README is wrong ---

def _block_with(old, new):
    """The first README block with a command containing `old`, cut to that
    command, `old` replaced by `new` (the runner, not the README, is tested)."""
    block = next(b for b in BLOCKS if not b.skip and any(old in c.text for c in b.commands))
    command = next(c for c in block.commands if old in c.text)
    return dataclasses.replace(block, commands=[dataclasses.replace(command, text=command.text.replace(old, new))])


def test_runner_fails_on_a_misspelt_flag(site, tmp_path):
    block = _block_with("--train.max_steps", "--train.max_stepz")
    (result,) = World(tmp_path, site).run_block(block)
    assert not result.ok and result.returncode == 1
    assert "Unknown option '--train.max_stepz'" in result.stderr, result.report()


def test_runner_fails_on_a_removed_command(site, tmp_path):
    block = _block_with("python -m tfchat.evaluate --run runs/default",
                        "python -m tfchat.nonexistent --run runs/default")
    (result,) = World(tmp_path, site).run_block(block)
    assert not result.ok and result.returncode != 0
    assert "No module named tfchat.nonexistent" in result.stderr, result.report()


def test_runner_fails_on_a_wheel_missing_a_module(site, tmp_path):
    broken = tmp_path / "site"
    shutil.copytree(site, broken)
    (broken / "tfchat" / "inference" / "generator.py").unlink()
    block = _block_with('--prompt "ROMEO:"', '--prompt "ROMEO:"')
    (result,) = World(tmp_path / "work", broken).run_block(block)
    assert not result.ok
    assert "it printed a traceback" in result.problems, result.report()
    assert "No module named 'tfchat.inference.generator'" in result.stderr, result.report()


def test_tiny_appends_documented_overrides_that_win():
    from tfchat import config as config_lib
    from tfchat.fit import build_parser

    argv = ["python", "-m", "tfchat.fit", "--model.num_layers", "6", "--train.max_steps", "5000"]
    args = build_parser().parse_args(tiny(argv)[3:])
    overrides = config_lib.overrides_from_args(args)
    assert overrides["model"]["num_layers"] == "1" and overrides["train"]["max_steps"] == "2"
    resumed = tiny(["python", "-m", "tfchat.fit", "--name", "mine", "--resume"])
    assert resumed[-2:] == ["--train.max_steps", "4"] and "--model.num_layers" not in resumed
    assert "--model.num_layers" not in tiny(["python", "-m", "tfchat.fit", "--init_from", "runs/x"])


def test_parsing_joins_continuations_and_reads_markers():
    text = "\n".join([
        "## A section", "```bash", "# not run in tests: needs two machines", "python -m tfchat.fit", "```",
        "```sh", "python -m tfchat.fit --a 1 \\", "    --b 2   # a comment", "export X='{",
        "  1}'", "python -m tfchat.chat --run r   # one; not run in tests: needs a GPU", "```",
        "```console", "$ python -m tfchat.generate --run r", "ROMEO: 12 tokens", "```",
        "```python", "print(1)", "```",
    ])
    first, second, third = parse_blocks(text)
    assert (first.line, first.section, first.skip) == (2, "A section", "needs two machines")
    fit, export, chat = second.commands
    assert (fit.line, fit.text, fit.comment) == (7, "python -m tfchat.fit --a 1 --b 2", "a comment")
    assert export.text == "export X='{\n  1}'" and not export.skip
    assert chat.skip == "needs a GPU" and not second.skip
    assert third.commands[0].output == ("ROMEO: 12 tokens",)
    assert _shape_found("ROMEO: 12 tokens", "x\nROMEO: 7 tokens\n")
    assert segments('echo "a | b" | python -m tfchat.chat --run r') == [
        (["echo", "a | b"], "|"), (["python", "-m", "tfchat.chat", "--run", "r"], "")]
    assert is_interactive_chat(["python", "-m", "tfchat.chat", "--run", "r"], piped=False)
    assert not is_interactive_chat(["python", "-m", "tfchat.chat", "--run", "r", "Hi"], piped=False)
