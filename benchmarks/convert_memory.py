"""Peak memory of `python -m tfchat.convert` (issue 15): how many copies of
the weights converting holds at once.

    python benchmarks/convert_memory.py                 # SmolLM2-360M-shaped
    python benchmarks/convert_memory.py --quick         # a 20M-parameter smoke run

Makes a Llama-family checkpoint with random weights in keras-hub itself
(SmolLM2-360M's shape: 32 layers, width 960, 15 query and 5 key/value heads,
MLP 2560, vocabulary 49,152, tied head), saves it as a keras-hub preset and
in Hugging Face form, then converts each in a fresh process and reads that
process's peak RSS. Two references, each in its own fresh process: the
imports alone (TensorFlow, keras-hub, tfchat), and keras-hub's own
`Backbone.from_preset` of the same checkpoint (one copy of the weights plus
whatever reading costs). Copies = (peak - imports) / weight bytes.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap

SHAPES = {
    "smollm2-360m": dict(vocabulary_size=49152, num_layers=32, num_query_heads=15,
                         num_key_value_heads=5, hidden_dim=960, intermediate_dim=2560),
    "quick": dict(vocabulary_size=8192, num_layers=4, num_query_heads=8,
                  num_key_value_heads=2, hidden_dim=512, intermediate_dim=1536),
}

MAKE = textwrap.dedent("""
    import json, os, sys
    import keras, keras_hub
    from keras_hub.src.tokenizers.byte_pair_tokenizer import bytes_to_unicode
    shape, root = json.loads(sys.argv[1]), sys.argv[2]
    keras.utils.set_random_seed(0)
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                "<|end_header_id|>", "<|eot_id|>"]
    merges = ["Ġ t", "h e", "Ġt he"]
    tokens = list(bytes_to_unicode()[1]) + ["Ġt", "he", "Ġthe"] + specials
    vocab = {t: i for i, t in enumerate(tokens)}
    tokenizer = keras_hub.models.Llama3Tokenizer(vocabulary=vocab, merges=merges)
    backbone = keras_hub.models.Llama3Backbone(**shape, rope_max_wavelength=100000,
                                               layer_norm_epsilon=1e-5, tie_word_embeddings=True)
    preprocessor = keras_hub.models.Llama3CausalLMPreprocessor(tokenizer, sequence_length=64)
    model = keras_hub.models.Llama3CausalLM(backbone, preprocessor)
    model.save_to_preset(os.path.join(root, "preset"))
    model.export_to_transformers(os.path.join(root, "hf"))
    path = os.path.join(root, "hf", "config.json")
    config = json.load(open(path)); config["architectures"] = ["LlamaForCausalLM"]
    json.dump(config, open(path, "w"))
    print(backbone.count_params())
""")

IMPORTS = "import tensorflow, keras_hub, tfchat.pretrained, tfchat.objectives.base"
# tie_word_embeddings given: keras-hub 0.32 leaves it out of a Llama preset's
# config.json and could not reload its own tied preset otherwise.
KERAS_HUB_LOAD = IMPORTS + (
    "; keras_hub.models.Backbone.from_preset(__import__('sys').argv[1], tie_word_embeddings=True)"
)


def peak_rss_of(command):
    """Runs `command` in a fresh child of a fresh process; returns (peak RSS
    in bytes, stdout). The middle process reads only its own children."""
    launcher = ("import resource, subprocess, sys; p = subprocess.run(sys.argv[1:], "
                "capture_output=True, text=True); sys.stderr.write(p.stderr[-2000:]); "
                "print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
                "print(p.stdout)")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run([sys.executable, "-c", launcher, *command], capture_output=True,
                         text=True, env=env, check=True)
    first, _, rest = out.stdout.partition("\n")
    code, kib = map(int, first.split())
    if code != 0:
        raise SystemExit(f"{command} failed:\n{out.stderr}")
    return kib * 1024, rest


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="A small shape, for a smoke run.")
    parser.add_argument("--keep", default=None, help="Make the checkpoint here and keep it.")
    args = parser.parse_args(argv)
    shape = SHAPES["quick" if args.quick else "smollm2-360m"]
    root = args.keep or tempfile.mkdtemp(prefix="convert_memory_")
    try:
        if not os.path.isdir(os.path.join(root, "hf")):
            subprocess.run([sys.executable, "-c", MAKE, json.dumps(shape), root], check=True,
                           env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        # Parameters, from the Hugging Face weights' size (float32).
        weights = os.path.getsize(os.path.join(root, "hf", "model.safetensors"))
        imports, _ = peak_rss_of([sys.executable, "-c", IMPORTS])
        rows = []
        for label, source in (("keras-hub preset", "preset"), ("Hugging Face directory", "hf")):
            path = os.path.join(root, source)
            reference, _ = peak_rss_of([sys.executable, "-c", KERAS_HUB_LOAD, path])
            rows.append((f"keras-hub `Backbone.from_preset` alone, {label}", reference))
            for dtype in ("float32", "bfloat16"):
                runs = os.path.join(root, "runs")
                peak, _ = peak_rss_of([sys.executable, "-m", "tfchat.convert", path, "--name",
                                       f"{source}_{dtype}", "--runs_dir", runs, "--dtype", dtype,
                                       "--overwrite"])
                rows.append((f"`tfchat.convert --dtype {dtype}`, {label}", peak))
        print(f"weights: {weights / 2**30:.2f} GiB float32; imports alone: "
              f"{imports / 2**30:.2f} GiB peak RSS\n")
        print("| process | peak RSS (GiB) | above the imports (GiB) | float32 weight copies |")
        print("| --- | --- | --- | --- |")
        for label, peak in rows:
            above = peak - imports
            print(f"| {label} | {peak / 2**30:.2f} | {above / 2**30:.2f} | {above / weights:.2f} |")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
