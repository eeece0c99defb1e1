"""What `pip install .` delivers: the bundled configs inside the package, the
dependency pins, and clear errors where an optional part or a Keras hook is
missing."""

import os
import pathlib
import subprocess
import sys
import zipfile

import pytest

from conftest import REPETITIVE_TEXT, TINY, as_cli_args
from tfchat import config as config_lib
from tfchat.errors import TfchatError

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


def tracked_modules():
    """The repository's tfchat/**/*.py files: git's list where this is a
    clone (a stray untracked file is not the package's), else the tree's."""
    proc = subprocess.run(["git", "ls-files", "tfchat"], cwd=REPO_ROOT, capture_output=True,
                          text=True)
    if proc.returncode == 0 and proc.stdout.strip():
        return sorted(p for p in proc.stdout.split() if p.endswith(".py"))
    return sorted(str(p.relative_to(REPO_ROOT)) for p in (REPO_ROOT / "tfchat").rglob("*.py")
                  if "__pycache__" not in p.parts)


def install(wheel, target):
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", str(target),
         str(wheel)], capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_wheel_holds_every_tracked_module(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = tracked_modules()
    assert "tfchat/inference/generator.py" in modules and "tfchat/serving/export.py" in modules
    missing = [m for m in modules if m not in names]
    assert not missing, f"tracked modules the wheel leaves out: {missing}"


def test_every_package_folder_is_a_regular_package():
    # find_packages() skips a folder without __init__.py, and the editable
    # install still serves it from the checkout, so only a real install
    # would notice.
    folders = {pathlib.PurePath(m).parent for m in tracked_modules()}
    lacking = sorted(str(f) for f in folders if not (REPO_ROOT / f / "__init__.py").is_file())
    assert not lacking, f"folders without __init__.py: {lacking}"


_IMPORT_EVERY_MODULE = """
import importlib, pathlib, sys
site = pathlib.Path(sys.argv[1]).resolve()
repo = pathlib.Path(sys.argv[2]).resolve()
assert all(pathlib.Path(p or '.').resolve() != repo for p in sys.path), sys.path
names = sorted(
    '.'.join(p.relative_to(site).with_suffix('').parts).removesuffix('.__init__')
    for p in (site / 'tfchat').rglob('*.py')
)
for name in names:
    module = importlib.import_module(name)
    assert pathlib.Path(module.__file__).resolve().is_relative_to(site), (name, module.__file__)
print(len(names))
"""


@pytest.mark.slow
def test_installed_wheel_imports_every_module_and_runs_the_commands(wheel, tmp_path):
    """The wheel alone, outside the checkout (which is off sys.path, so the
    editable install's finder cannot fill a gap): every module imports from
    it, and a tiny fit, a one-shot chat, generate and export run."""
    site = tmp_path / "site"
    install(wheel, site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**ENV, "PYTHONPATH": str(site)}

    def run(*args):
        proc = subprocess.run([sys.executable, *args], cwd=elsewhere, env=env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"{args}: {proc.stderr[-3000:]}"
        assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
        return proc.stdout

    count = int(run("-c", _IMPORT_EVERY_MODULE, str(site), str(REPO_ROOT)).split()[-1])
    assert count >= len(tracked_modules())

    (elsewhere / "corpus.txt").write_text(REPETITIVE_TEXT, encoding="utf-8")
    run("-m", "tfchat.fit", *as_cli_args({**TINY, "train.max_steps": 4}),
        "--data.path", "corpus.txt", "--name", "tiny")
    assert (elsewhere / "runs" / "tiny" / "config.json").is_file()
    assert run("-m", "tfchat.chat", "--run", "runs/tiny", "--temperature", "0",
               "--max-new-tokens", "4", "the fox").strip()
    assert run("-m", "tfchat.generate", "--run", "runs/tiny", "--prompt", "the",
               "--max-new-tokens", "4", "--temperature", "0").startswith("the")
    run("-m", "tfchat.export", "--run", "runs/tiny", "--saved-models-dir", "served")
    assert list((elsewhere / "served" / "tiny").glob("*/saved_model.pb"))


def test_wheel_contains_every_bundled_config(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = sorted(p.name for p in (REPO_ROOT / "tfchat" / "configs").glob("*.yaml"))
    assert shipped, "no bundled configs in tfchat/configs"
    for name in shipped:
        assert f"tfchat/configs/{name}" in names


def test_wheel_metadata_pins_keras_and_makes_serving_api_an_extra(wheel):
    with zipfile.ZipFile(wheel) as z:
        (metadata,) = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        requires = [line.split(":", 1)[1].strip() for line in z.read(metadata).decode().splitlines()
                    if line.startswith("Requires-Dist:")]
    keras = [r for r in requires if r.startswith("keras") and not r.startswith("keras-hub")]
    assert keras == ["keras<3.16,>=3.15"]
    serving = [r for r in requires if r.startswith("tensorflow-serving-api")]
    # Only under extras: the serving client's and the tests'.
    assert serving and all("extra ==" in r for r in serving)
    assert any('extra == "serving"' in r for r in serving)
    assert any('extra == "test"' in r for r in serving)


def test_installed_wheel_finds_a_bundled_config_by_name_outside_the_checkout(wheel, tmp_path):
    site = tmp_path / "site"
    install(wheel, site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**ENV, "PYTHONPATH": str(site)}

    help_run = subprocess.run(
        [sys.executable, "-m", "tfchat.fit", "--config", "shakespeare_char", "--help"],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300,
    )
    assert help_run.returncode == 0, help_run.stderr[-2000:]
    help_text = " ".join(help_run.stdout.split())
    for name in ("shakespeare_char", "shakespeare_char_large", "shakespeare_bpe",
                 "shakespeare_mlm"):
        assert name in help_text

    # The name resolves to the installed package's file, and the config builds.
    check = subprocess.run(
        [sys.executable, "-c",
         "import tfchat; from tfchat import config as c; "
         "print(tfchat.__file__); print(c.find_config_file('shakespeare_char')); "
         "print(c.build_config(['shakespeare_char']).model.num_layers)"],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300,
    )
    assert check.returncode == 0, check.stderr[-2000:]
    package_file, config_file, layers = check.stdout.split()
    assert package_file.startswith(str(site))
    assert config_file == str(site / "tfchat" / "configs" / "shakespeare_char.yaml")
    assert int(layers) == 4


def test_every_bundled_config_builds():
    names = config_lib.bundled_configs()
    assert {"shakespeare_char", "shakespeare_mlm"} <= set(names)
    for name in names:
        config_lib.build_config([name])


def test_unknown_config_name_lists_the_bundled_ones(tmp_path):
    with pytest.raises(TfchatError, match="not a file, nor a bundled config: .*shakespeare_char"):
        config_lib.build_config([str(tmp_path / "absent")])


def test_grpc_without_the_serving_extra_says_how_to_install_it():
    # `None` in sys.modules makes the import fail as an absent package does.
    script = (
        "import sys; sys.modules['tensorflow_serving'] = None; "
        "from tfchat.serve_client import main; "
        "sys.exit(main(['--grpc', 'localhost:1', '--model', 'm', 'hi']))"
    )
    proc = subprocess.run([sys.executable, "-c", script], env=ENV, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 1
    assert "error: --grpc needs tensorflow-serving-api" in proc.stderr
    assert 'pip install "tfchat[serving]"' in proc.stderr


def test_a_keras_without_the_all_reduce_hook_is_refused(monkeypatch):
    import keras

    from tfchat.train import optim

    optim._check_all_reduce_hook()  # the installed Keras has it

    def update_without_hook(self, grads, trainable_variables, learning_rate):
        return None

    monkeypatch.setattr(keras.optimizers.AdamW, "_backend_update_step", update_without_hook)
    with pytest.raises(ImportError, match=f"Keras {keras.__version__} does not call"):
        optim._check_all_reduce_hook()
