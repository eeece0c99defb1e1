from setuptools import find_packages, setup

setup(
    name="tfchat",
    version="0.1.0",
    description="Train your own ChatGPT-style model end to end with TensorFlow and Keras.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["tfchat", "tfchat.*"]),
    package_data={"tfchat": ["configs/*.yaml", "serving/web/*.html"]},
    python_requires=">=3.10",
    install_requires=[
        "tensorflow>=2.21,<2.22",
        "tensorflow-text>=2.21,<2.22",
        "tensorboard>=2.21,<2.22",
        # tfchat overrides a private Keras optimizer hook (see
        # tfchat/train/optim.py), tested on this minor version only.
        "keras>=3.15,<3.16",
        "keras-hub>=0.32,<0.33",
        "sentencepiece>=0.2,<0.3",
        "chatterbot-corpus>=1.2,<2",
        "pyyaml>=6",
        "numpy>=1.26",
        "sacrebleu>=2.4,<3",
        "rouge-score>=0.1.2,<0.2",
        # METEOR (tfchat/evaluation/text_metrics.py); its WordNet data is never downloaded.
        "nltk>=3.8,<4",
        # keras-hub reads and writes Hugging Face checkpoints with it (tfchat.convert).
        "safetensors>=0.4",
        # The data-hygiene stage (tfchat/data/hygiene.py, pii.py): Unicode
        # repair, near-duplicate MinHash LSH, phone numbers in many regions,
        # a language detector whose model ships in its wheel.
        "ftfy>=6.1,<7",
        "datasketch>=1.5,<3",
        "phonenumbers>=8.13,<10",
        "py3langid>=0.2.2,<1",
        # Fairness across groups in evaluation (tfchat/evaluation/fairness.py).
        "fairlearn>=0.10,<1",
        # The pictures of `evaluate --plots/--report` (tfchat/evaluation/plots.py).
        "matplotlib>=3.7",
    ],
    extras_require={
        # Only `python -m tfchat.serve_client --grpc` needs it (it pins
        # protobuf and grpcio); REST needs nothing more.
        "serving": ["tensorflow-serving-api>=2.21,<2.22"],
        # `python -m tfchat.serve`: the OpenAI-compatible HTTP server.
        "serve": ["fastapi>=0.115,<1", "uvicorn>=0.30,<1"],
        "test": [
            "tensorflow-serving-api>=2.21,<2.22",
            "fastapi>=0.115,<1",
            "uvicorn>=0.30,<1",
            # tests/test_serve*.py talk to the server as its users' tools do:
            # the official client, lm-evaluation-harness (its API extra only:
            # no torch) and a real browser (Debian's chromium, .ci/run).
            "openai>=1.40",
            "lm-eval[api]>=0.4.8,<0.5",
            "selenium>=4.20",
            "pytest>=8",
            # tests/test_lint.py: the rules in pyproject.toml.
            "ruff>=0.17,<0.18",
            "hypothesis>=6",
            # tests/test_chat_templates.py renders checkpoints' chat templates
            # as transformers does.
            "jinja2>=3",
            # The test suite executes the notebooks.
            "nbclient>=0.10",
            "nbformat>=5.9",
            "ipykernel>=6",
            "matplotlib>=3.8",
        ],
        "notebooks": ["jupyterlab>=4", "matplotlib>=3.8"],
    },
    entry_points={
        "console_scripts": [
            "tfchat-fit=tfchat.fit:main",
            "tfchat-generate=tfchat.generate:main",
            "tfchat-export=tfchat.export:main",
            "tfchat-serve-client=tfchat.serve_client:main",
            "tfchat-chat=tfchat.chat:main",
            "tfchat-serve=tfchat.serve:main",
            "tfchat-evaluate=tfchat.evaluate:main",
            "tfchat-lora=tfchat.lora:main",
            "tfchat-fill-mask=tfchat.fill_mask:main",
        ]
    },
)
