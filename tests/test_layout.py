"""The package's structure is what README.md's Layout section says: every
module listed once, with its layer, and no import against the layers
(library below, commands on top; a layer imports only itself and those
below it, and a command module imports no other command)."""

import ast
import pathlib
import re

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = REPO_ROOT / "tfchat"
ROW = re.compile(r"^\|\s*(\d+)\s*\|\s*`(tfchat/[^`]+\.py)`\s*\|\s*(.+?)\s*\|\s*$")


def documented_layers(readme=REPO_ROOT / "README.md"):
    """{module path: layer} from the rows `| layer | `tfchat/x.py` | job |`
    of README.md's Layout section, and the layer of the commands (the
    highest)."""
    text = readme.read_text(encoding="utf-8")
    section = text.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    rows = [ROW.match(line) for line in section.splitlines()]
    rows = [m for m in rows if m]
    assert rows, "README.md's Layout section has no `| layer | module | job |` rows"
    paths = [m.group(2) for m in rows]
    duplicates = sorted({p for p in paths if paths.count(p) > 1})
    assert not duplicates, f"listed more than once: {duplicates}"
    for m in rows:
        assert len(m.group(3)) > 10, f"{m.group(2)}: say its job in a line"
    layers = {m.group(2): int(m.group(1)) for m in rows}
    return layers, max(layers.values())


def package_modules(root=PACKAGE):
    """Module paths relative to the repository ("tfchat/run.py"), empty
    `__init__.py` files left out."""
    return sorted(
        str(path.relative_to(root.parent))
        for path in root.rglob("*.py")
        if "__pycache__" not in path.parts and path.read_text(encoding="utf-8").strip()
    )


def _module_file(dotted, root):
    """tfchat.a.b -> "tfchat/a/b.py" or "tfchat/a/b/__init__.py", or None."""
    base = root.parent / dotted.replace(".", "/")
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return str(candidate.relative_to(root.parent))
    return None


def imported_modules(path, root=PACKAGE):
    """The tfchat module files `path` imports, at any depth of the file
    (imports inside functions count too)."""
    tree = ast.parse((root.parent / path).read_text(encoding="utf-8"))
    targets = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from tfchat.x import y`: y is a module of tfchat.x, or a name in it.
            names = [f"{node.module}.{alias.name}" for alias in node.names]
            names = [n if _module_file(n, root) else node.module for n in names]
        for name in names:
            if name == "tfchat" or name.startswith("tfchat."):
                target = _module_file(name, root)
                if target and target != path:
                    targets.add(target)
    return targets


def layer_violations(layers, command_layer, root=PACKAGE):
    """Every import that runs against `layers`, as readable lines."""
    problems = []
    for path in package_modules(root):
        source = layers.get(path)
        if source is None:
            continue
        for target in sorted(imported_modules(path, root)):
            layer = layers.get(target, 0 if target == "tfchat/__init__.py" else None)
            if layer is None:
                continue
            if layer == command_layer and target != path:
                problems.append(f"{path} imports the command module {target}")
            elif layer > source:
                problems.append(f"{path} (layer {source}) imports {target} (layer {layer})")
    return problems


def test_readme_layout_lists_every_module_once():
    layers, _ = documented_layers()
    modules = set(package_modules())
    assert modules - set(layers) == set(), "modules missing from README.md's Layout"
    assert set(layers) - modules == set(), "README.md's Layout lists modules that do not exist"


def test_no_import_runs_against_the_layers():
    layers, command_layer = documented_layers()
    assert layer_violations(layers, command_layer) == []


def test_the_check_catches_an_upward_import(tmp_path):
    """The checker itself: a library module importing a command module and
    one importing a layer above it are both reported."""
    package = tmp_path / "tfchat"
    (package / "train").mkdir(parents=True)
    (package / "__init__.py").write_text('"""tfchat."""\n')
    (package / "config.py").write_text("import os\n")
    (package / "train" / "trainer.py").write_text(
        "def sample():\n    from tfchat.generate import Generator\n    from tfchat import run\n"
    )
    (package / "run.py").write_text("from tfchat import config\n")
    (package / "generate.py").write_text("from tfchat.run import load_run\n")
    layers = {"tfchat/__init__.py": 0, "tfchat/config.py": 0, "tfchat/train/trainer.py": 1,
              "tfchat/run.py": 2, "tfchat/generate.py": 3}
    assert layer_violations(layers, 3, root=package) == [
        "tfchat/train/trainer.py imports the command module tfchat/generate.py",
        "tfchat/train/trainer.py (layer 1) imports tfchat/run.py (layer 2)",
    ]


# "issue 4", "issues 4-16", "#12": numbers of a tracker the repository does
# not hold. An upstream reference (keras-team/keras#20585) names its tracker
# and stays readable.
TRACKER_NUMBER = re.compile(r"\bissues? \d+|(?<![\w/.-])#\d+\b", re.IGNORECASE)


def test_no_module_cites_an_untracked_issue_number():
    """A comment should say what the code does and why, not point to an
    issue no reader of the tree can open."""
    citations = [
        f"{path}:{number}: {line.strip()}"
        for path in package_modules()
        for number, line in enumerate(
            (REPO_ROOT / path).read_text(encoding="utf-8").splitlines(), start=1)
        if TRACKER_NUMBER.search(line)
    ]
    assert citations == []


def _family_words():
    """Every name that is one family's: its name, its Hugging Face
    model_types and architectures, its keras-hub classes and its chat
    formats' names."""
    from tfchat.families import REGISTRY

    words = set()
    for family in REGISTRY.values():
        words |= {family.name, *family.model_types, family.architecture, *family.backbones}
        words |= {name for classes in family.hub_classes.items() for name in (classes[0], *classes[1][:3])}
        words |= {template.name for template in family.chat_templates}
    return {w.lower() for w in words}


def family_name_uses(root=PACKAGE, words=None):
    """Code outside tfchat/families/ that names a family: a string constant
    that is one of `_family_words` or holds one of its class names, or an
    identifier with a family name among its `_`-separated parts. Prose in
    docstrings and help texts may cite families as examples; code may not
    branch on them."""
    words = _family_words() if words is None else words
    names = {w for w in words if re.fullmatch(r"[a-z0-9]+", w)}
    classes = {w for w in words if w not in names}
    uses = []
    for path in package_modules(root):
        if path.startswith("tfchat/families/"):
            continue
        tree = ast.parse((root.parent / path).read_text(encoding="utf-8"))
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef))
                      and node.body and isinstance(node.body[0], ast.Expr)}
        for node in ast.walk(tree):
            found = None
            if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and id(node) not in docstrings and len(node.value) < 60:
                text = node.value.lower()
                if text in words or any(c in text for c in classes):
                    found = node.value
            identifier = (node.id if isinstance(node, ast.Name) else node.attr
                          if isinstance(node, ast.Attribute) else node.arg
                          if isinstance(node, ast.arg) else node.name
                          if isinstance(node, (ast.FunctionDef, ast.ClassDef)) else None)
            if identifier and set(identifier.lower().split("_")) & names:
                found = identifier
            if found:
                uses.append(f"{path}:{node.lineno}: {found}")
    return uses


def test_no_family_is_named_outside_its_module():
    """Everything about a family lives in tfchat/families/<name>.py and the
    registry: no other module tests for one by name."""
    assert family_name_uses() == []


def test_the_family_check_catches_a_branch_on_a_family(tmp_path):
    package = tmp_path / "tfchat"
    (package / "families").mkdir(parents=True)
    (package / "families" / "llama.py").write_text('NAME = "llama"\n')
    (package / "export.py").write_text(
        '"""Llama runs export (prose may say so)."""\n'
        'def write(family, backbone):\n'
        '    if family.name == "qwen2":\n'
        '        return "QwenBackbone"\n'
        '    return llama_hub_args(backbone)\n'
    )
    assert family_name_uses(package, {"llama", "qwen2", "qwenbackbone"}) == [
        "tfchat/export.py:3: qwen2", "tfchat/export.py:4: QwenBackbone",
        "tfchat/export.py:5: llama_hub_args",
    ]


# --- an objective is one module: no branch on its name elsewhere ---

OBJECTIVES = PACKAGE / "objectives"
# Comparisons with an objective's name allowed outside tfchat/objectives/,
# {module path: reason}. None is needed today: what differs between
# objectives is an attribute of `Objective` that its module sets.
NAME_COMPARISONS_ALLOWED = {}


def objective_names(root=PACKAGE):
    """The `name=` of every `Objective(...)` its objective modules define."""
    names = set()
    for path in sorted((root / "objectives").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Objective":
                names.update(k.value.value for k in node.keywords
                             if k.arg == "name" and isinstance(k.value, ast.Constant))
    return names


def _string_literals(node):
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return set().union(*(_string_literals(e) for e in node.elts)) if node.elts else set()
    return set()


def objective_name_comparisons(root=PACKAGE, names=None):
    """Every `==`, `!=`, `in` or `not in` with an objective's name as a
    string literal (alone or in a tuple, list or set) in a module outside
    tfchat/objectives/, as "path:line: expression"."""
    names = objective_names(root) if names is None else names
    found = []
    for path in package_modules(root):
        if path.startswith("tfchat/objectives/") or path in NAME_COMPARISONS_ALLOWED:
            continue
        tree = ast.parse((root.parent / path).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Compare):
                continue
            if not any(isinstance(op, (ast.Eq, ast.NotEq, ast.In, ast.NotIn)) for op in node.ops):
                continue
            if any(_string_literals(e) & names for e in (node.left, *node.comparators)):
                found.append(f"{path}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_objective_names_are_read_from_their_modules():
    assert {"causal", "chat", "mlm", "classify", "dpo", "distill"} <= objective_names()


def test_no_module_outside_the_objectives_branches_on_an_objective_name():
    """What differs between objectives is asked of the objective
    (`tfchat.objectives.base.Objective`), so adding one is one module."""
    assert objective_name_comparisons() == []


def test_the_check_catches_a_branch_on_an_objective_name(tmp_path):
    package = tmp_path / "tfchat"
    (package / "objectives").mkdir(parents=True)
    (package / "objectives" / "mlm.py").write_text(
        'OBJECTIVE = Objective(name="mlm")\nok = config.objective == "mlm"\n')
    (package / "objectives" / "dpo.py").write_text('OBJECTIVE = Objective(name="dpo")\n')
    (package / "job.py").write_text(
        'def f(config, o):\n'
        '    if o.name not in ("causal", "mlm"):\n        pass\n'
        '    hint = "a" if config.objective != "dpo" else "b"\n'
        '    return f"{config.objective == \'mlm\'}", o.kind == "plain", {"mlm": 1}\n')
    assert objective_names(package) == {"mlm", "dpo"}
    assert objective_name_comparisons(package) == [
        "tfchat/job.py:2: o.name not in ('causal', 'mlm')",
        "tfchat/job.py:4: config.objective != 'dpo'",
        "tfchat/job.py:5: config.objective == 'mlm'",
    ]


# --- the run folder is a leaf: it imports no objective ---

RUN_FOLDER = "tfchat/run_folder.py"


def transitive_imports(path, root=PACKAGE):
    """Every tfchat module file importing `path` runs, at any remove: what
    it imports, their packages' `__init__.py`, and what those import."""
    seen, todo = set(), [path]
    while todo:
        for target in imported_modules(todo.pop(), root):
            parts = pathlib.PurePosixPath(target).parts
            packages = [str(pathlib.PurePosixPath(*parts[:i], "__init__.py"))
                        for i in range(1, len(parts))]
            for module in [target, *packages]:
                if module not in seen and module != path and (root.parent / module).is_file():
                    seen.add(module)
                    todo.append(module)
    return seen


def objectives_imported(path, root=PACKAGE):
    return sorted(m for m in transitive_imports(path, root) if m.startswith("tfchat/objectives/"))


def test_the_run_folder_imports_no_objective():
    """`RunFolder` (paths, file names, checkpoint steps) stays light: loading
    it loads no objective, hence no generator, keras-hub or exporter."""
    assert (REPO_ROOT / RUN_FOLDER).is_file()
    assert objectives_imported(RUN_FOLDER) == []


def test_the_check_catches_an_objective_imported_at_a_remove(tmp_path):
    package = tmp_path / "tfchat"
    (package / "objectives").mkdir(parents=True)
    (package / "data").mkdir()
    (package / "__init__.py").write_text("")
    (package / "objectives" / "__init__.py").write_text("from tfchat.objectives import mlm\n")
    (package / "objectives" / "mlm.py").write_text("import os\n")
    (package / "data" / "__init__.py").write_text("from tfchat import objectives\n")
    (package / "data" / "files.py").write_text("import json\n")
    (package / "run_folder.py").write_text("from tfchat.data.files import write_json_atomic\n")
    assert objectives_imported(RUN_FOLDER, root=package) == [
        "tfchat/objectives/__init__.py", "tfchat/objectives/mlm.py"]
