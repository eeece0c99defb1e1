"""What `pip install .` delivers: the bundled configs inside the package, the
dependency pins, and clear errors where an optional part or a Keras hook is
missing."""

import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

import pytest

from tfchat import config as config_lib
from tfchat.errors import TfchatError

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """A wheel built from a copy of the project's sources (not in place, so
    the checkout gets no build folder), without build isolation: no network."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    source.mkdir()
    for name in ("setup.py", "README.md"):
        shutil.copy(REPO_ROOT / name, source / name)
    shutil.copytree(REPO_ROOT / "tfchat", source / "tfchat",
                    ignore=shutil.ignore_patterns("__pycache__"))
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--quiet", "-w", str(work / "dist"), str(source)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (path,) = (work / "dist").glob("tfchat-*.whl")
    return path


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
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", str(site),
         str(wheel)], capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
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
