"""One typed configuration for a run, loaded from YAML/JSON and the command line.

A config is four dataclasses (`data`, `tokenizer`, `model`, `train`) plus a
run name. Config files (a path, or the name of one bundled in `tfchat/configs/`)
give some fields; `--section.field value` on
the command line overrides any of them. Unknown keys are errors that name the
key and list the valid ones, so a typo never trains with a silent default.
"""

import argparse
import dataclasses
import json
import os
import string
import typing
from dataclasses import dataclass, field

import yaml

from tfchat.errors import TfchatError


# Where and in what precision training runs (tfchat.train.distribute).
STRATEGIES = ("auto", "default", "mirrored", "multi_worker")
# bfloat16: weights and math in bfloat16 (half the memory of a converted
# pretrained model; `tfchat.convert --dtype bfloat16`).
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16", "bfloat16")
# char, bpe and wordpiece are trained on the corpus; pretrained comes with a
# converted checkpoint (tfchat.data.tokenizer).
TOKENIZER_KINDS = ("char", "bpe", "wordpiece", "pretrained")
# The Dense layers of a block that LoRA can adapt.
# mlp_gate exists only with model.mlp swiglu, so it is not a default target.
LORA_TARGETS = ("qkv", "proj", "mlp_in", "mlp_out", "mlp_gate")
DEFAULT_LORA_TARGETS = ("qkv", "proj", "mlp_in", "mlp_out")
# The decoder options (tfchat.model.layers).
# rmsnorm_plus_one scales by (1 + weight), its weight starting at zero.
NORMS = ("layernorm", "rmsnorm", "rmsnorm_plus_one")
POSITIONS = ("learned", "rope")
# geglu: swiglu's gate with GELU (tanh approximation) in place of SiLU.
MLPS = ("gelu", "swiglu", "geglu")
# The MLP layouts with a gate (mlp_gate) beside the up projection.
GATED_MLPS = ("swiglu", "geglu")


def _field(default, help):
    return field(default=default, metadata={"help": help})


@dataclass
class DataConfig:
    path: str = _field(
        "chatterbot:english",
        "Corpus: a text file, a directory, a glob, a .jsonl file, or "
        "chatterbot:<language> for the chatterbot-corpus package.",
    )
    format: str = _field(
        "auto",
        "auto | text | jsonl | csv (auto decides from the file suffix; csv "
        "is for labelled data).",
    )
    text_field: str = _field("text", "JSONL field that holds the text.")
    label_field: str = _field(
        "label",
        "JSONL field or CSV column that holds the class label (objective "
        "classify; the text is in text_field).",
    )
    encoding_errors: str = _field(
        "strict",
        "Bytes that are not UTF-8: strict (stop, naming the file and byte "
        "offset) or replace (with U+FFFD).",
    )
    packing: bool = _field(
        True,
        "Pack several conversations (chat) or documents (causal LM on JSONL or "
        "chatterbot transcripts) into each block, best-fit decreasing, each "
        "seeing only itself (block-diagonal attention, positions from 0), "
        "instead of one conversation per padded row or documents running into "
        "each other. Plain text files are always one contiguous stream.",
    )
    val_fraction: float = _field(
        0.1,
        "Share held out for validation: the last part of each text file; of "
        "a JSONL or dialogue corpus, documents spread evenly through it "
        "(one in ten at 0.1).",
    )
    # Fairness (tfchat/evaluation/fairness.py): evaluation per group.
    group_field: str = _field(
        "",
        "Fairness: a field naming each example's group (a JSONL field or CSV column of "
        "classification data; a top-level or metadata field of a conversation's JSONL "
        "record); evaluate then reports every metric per group and the largest gap "
        "and ratio between groups; empty = off.",
    )
    # The data-hygiene stage (tfchat/data/hygiene.py, tfchat/data/cleaned.py):
    # any of these on, the corpus is cleaned once into a copy the run reads.
    fix_unicode: bool = _field(
        True,
        "Data hygiene: repair mojibake and bad escapes (ftfy), NFC, and tidy "
        "whitespace (inner runs of spaces, trailing spaces, blank lines) of text "
        "and JSONL corpora; on for new runs (a run from before it existed keeps "
        "reading its data unchanged).",
    )
    dedup: str = _field(
        "none",
        "Data hygiene: none | exact (a hash of the normalised document) | near "
        "(MinHash LSH over word shingles, data.dedup_threshold), over documents, "
        "conversations or pairs, before the train/validation split.",
    )
    dedup_threshold: float = _field(
        0.8, "Data hygiene: the Jaccard similarity from which dedup near removes a document.")
    min_chars: int = _field(0, "Data hygiene: remove documents shorter than this (0 = no limit).")
    max_chars: int = _field(0, "Data hygiene: remove documents longer than this (0 = no limit).")
    languages: str = _field(
        "",
        "Data hygiene: keep only these languages (ISO 639-1 codes, comma-separated, "
        "as py3langid detects them; texts under 20 letters are kept); empty = all.",
    )
    max_repetition: float = _field(
        0.0,
        "Data hygiene: remove documents whose share of repeated lines or 5-grams "
        "(Gopher's rules) is above this; 0 = off (0.3 is a usual limit).",
    )
    scrub_pii: str = _field(
        "",
        "Data hygiene: replace personal data with typed placeholders (<EMAIL>, "
        "<PHONE>, ...): all, or some of email, phone, credit_card, ip, iban, "
        "url_credentials, ssn (comma-separated); empty = off.",
    )
    blocklist: str = _field(
        "",
        "Data hygiene: a file of blocked terms, one a line (re: for a regular "
        "expression, # for comments), matched case- and Unicode-insensitively as "
        "whole words; empty = none.",
    )
    blocklist_action: str = _field(
        "drop", "Data hygiene: drop (the document) | mask (each term, as <BLOCKED>).")
    balance_field: str = _field(
        "",
        "Data hygiene: a JSONL field naming each record's group (a label, a source, a "
        "language); the training split is resampled so every group weighs the same "
        "(data.balance), validation untouched; empty = off.",
    )
    balance: str = _field(
        "down",
        "Data hygiene, with data.balance_field: down (sample every group down to the "
        "smallest) | up (repeat every group up to the largest).",
    )
    # Augmentation (tfchat/data/augment.py): the training split only, drawn
    # afresh each time the pipeline reads a sequence, seeded and resumable.
    augment_mask: float = _field(
        0.0,
        "Augmentation (objectives causal, chat, distill): each token's chance to be "
        "read as a stand-in (<unk>) while still predicted as itself; 0 = off.",
    )
    augment_delete: float = _field(
        0.0, "Augmentation: each token's chance to be removed from the training text; 0 = off.")
    augment_swap: float = _field(
        0.0, "Augmentation: each token's chance to trade places with its neighbour; 0 = off.")
    augment_roles: str = _field(
        "user",
        "Augmentation of conversations: whose turns may change (some of system, user, "
        "assistant, comma-separated); the template's markers never do.",
    )
    # Task formats (tfchat/data/tasks.py, scored by tfchat/evaluation/tasks.py):
    # JSONL records of a task, each read as a one-exchange conversation.
    task: str = _field(
        "auto",
        "Task format of JSONL records for objective chat, each record one exchange (user: "
        "data.prompt_template, assistant: the reply field) scored by the task's metrics: "
        "translation {source, target, source_lang?, target_lang?} (BLEU, chrF, METEOR) | "
        "summarisation {document, summary} (ROUGE-1/2/Lsum) | qa {question, answer, "
        "context?} (SQuAD exact match and F1) | none (conversations) | auto (from the "
        "first record's keys; messages = none).",
    )
    prompt_template: str = _field(
        "",
        "The user message of a task record: a format string over its fields ({source} "
        "{source_lang} {target_lang}; {document}; {question} {context}), an optional field "
        "a record lacks rendering empty. Empty = the task's default: 'Translate from "
        "{source_lang} to {target_lang}: {source}', 'Summarise: {document}', 'Context: "
        "{context} Question: {question}' (the parts about an absent optional field left "
        "out).",
    )


DEDUP_MODES = ("none", "exact", "near")  # tfchat.data.hygiene.DEDUP_MODES
BLOCKLIST_ACTIONS = ("drop", "mask")
BALANCE_MODES = ("down", "up")
TASKS = ("auto", "none", "translation", "summarisation", "qa")  # tfchat.data.tasks.TASKS
TASK_FIELDS = ("source", "source_lang", "target_lang", "document", "question", "context")


@dataclass
class TokenizerConfig:
    # BPE by default: on the default chat job it beat char on validation
    # BLEU and ROUGE-L in a fifth of the wall time (benchmarks/RESULTS.md,
    # "The default chat job"). 2,000 pieces and 192-token blocks
    # (model.block_size) because a conversation longer than a block cannot
    # be learnt whole: with 1,000 and 64, 16% of the single-exchange training
    # conversations were, and the job recalled at most 84% of their replies
    # ("Packing and the default chat job").
    kind: str = _field(
        "bpe", "char | bpe (SentencePiece BPE) | wordpiece (for mlm/classify) | "
        "pretrained (a converted checkpoint's own; set by tfchat.convert)."
    )
    vocab_size: int = _field(
        2000,
        "BPE/WordPiece vocabulary size, special tokens included (WordPiece "
        "may learn fewer).",
    )
    lowercase: bool = _field(
        True,
        "WordPiece only: lowercase and strip accents (BERT uncased) before "
        "splitting into pieces.",
    )
    chat_template: str = _field(
        "auto",
        "How conversations are rendered: tfchat (<|role|>...<|end|>), chatml "
        "(Qwen2.5, SmolLM2-Instruct), plain (base models), a pretrained family's "
        "own (python -m tfchat.convert --help lists them all), or auto: tfchat for "
        "tfchat's tokenizers, the checkpoint's own for a converted one "
        "(tfchat.convert reads its tokenizer_config.json).",
    )
    system_prompt: str = _field(
        "",
        "The system message of a conversation that has none (Qwen2.5's and "
        "SmolLM2's templates add one; tfchat.convert copies it). Empty = none.",
    )


@dataclass
class ModelConfig:
    num_layers: int = _field(4, "Transformer blocks.")
    num_heads: int = _field(4, "Attention heads per block.")
    hidden_dim: int = _field(128, "Width of the residual stream.")
    intermediate_dim: int = _field(
        0, "Width of the MLP; 0 means 4 * hidden_dim."
    )
    block_size: int = _field(192, "Context length in tokens.")
    # 0: the default chat job is to learn its own conversations by heart;
    # 0.1 recalled fewer training prompts' replies (91.4% against 95.6%) and
    # did no better on unseen prompts (benchmarks/RESULTS.md, "Packing and
    # the default chat job").
    dropout: float = _field(0.0, "Dropout rate (0 to learn the data by heart, as the default "
                                 "chat job does; 0.1-0.2 against overfitting on small data).")
    # Decoder options; the defaults are GPT-2's.
    norm: str = _field("layernorm", "layernorm (GPT-2) | rmsnorm (Llama, Qwen2) | "
                       "rmsnorm_plus_one (scale 1 + weight, Gemma).")
    norm_epsilon: float = _field(1e-5, "Epsilon of every norm (Llama/Qwen2 use 1e-6 or 1e-5).")
    position: str = _field(
        "learned", "learned (a position embedding, GPT-2) | rope (rotary on q and k)."
    )
    rope_theta: float = _field(10000.0, "Rotary base wavelength (Llama 3: 500000).")
    rope_scaling_factor: float = _field(
        1.0, "Llama 3 rope scaling factor (1 = off; Llama 3.1: 8)."
    )
    rope_low_freq_factor: float = _field(1.0, "Llama 3 rope scaling: low frequency factor.")
    rope_high_freq_factor: float = _field(4.0, "Llama 3 rope scaling: high frequency factor.")
    rope_original_max_positions: int = _field(
        8192, "Llama 3 rope scaling: the context length pretraining used."
    )
    mlp: str = _field("gelu", "gelu (GPT-2) | swiglu (gate, up, down; SiLU) | geglu "
                      "(the same with GELU, Gemma).")
    head_dim: int = _field(
        0, "Width of each attention head; 0 = hidden_dim / num_heads (Gemma 7B: 256 of 3072/16)."
    )
    sliding_window: int = _field(
        0, "Sliding-window attention: each token sees itself and the sliding_window - 1 "
           "tokens before it (0 = the whole context; Mistral 7B v0.1: 4096)."
    )
    qk_norm: bool = _field(False, "RMSNorm on each head's queries and keys before rope (Qwen3).")
    scale_embeddings: bool = _field(
        False, "Multiply the token embeddings by sqrt(hidden_dim) (Gemma)."
    )
    family: str = _field(
        "none", "The pretrained family the model is one of, set by tfchat.convert and kept "
                "by runs started from it (export writes that family's files); none for "
                "tfchat's own decoders."
    )
    num_kv_heads: int = _field(
        0, "Key/value heads (grouped-query attention); 0 = num_heads."
    )
    tie_embeddings: bool = _field(True, "LM head tied to the token embedding (False: its own).")
    qkv_bias: bool = _field(True, "Bias on the q/k/v projection (GPT-2, Qwen2; not Llama).")
    use_bias: bool = _field(
        True, "Bias on the other Dense layers (GPT-2; not Llama or Qwen2)."
    )
    max_positions: int = _field(
        0,
        "The longest context a converted pretrained checkpoint was trained "
        "for (set by tfchat.convert); block_size may not exceed it. 0 = no limit.",
    )
    lora_rank: int = _field(
        0,
        "LoRA rank: train only low-rank adapters on the lora_targets layers, "
        "base weights frozen (0 = off; fine-tune with init_from).",
    )
    lora_alpha: float = _field(
        0.0, "LoRA scale numerator: adapters are scaled by alpha / rank (0 = rank)."
    )
    lora_targets: str = _field(
        ",".join(DEFAULT_LORA_TARGETS),
        f"Comma-separated Dense layers of each block that get adapters "
        f"({', '.join(LORA_TARGETS)}; mlp_gate with mlp swiglu).",
    )


@dataclass
class TrainConfig:
    batch_size: int = _field(16, "Global batch size (sequences per step).")
    # Objective dpo has its own defaults for these five (tfchat.objectives.dpo).
    max_steps: int = _field(1500, "Optimizer steps to train for (dpo: 200).")
    learning_rate: float = _field(1e-3, "Peak learning rate (dpo: 1e-4).")
    min_learning_rate: float = _field(
        1e-4, "Floor the cosine schedule decays to (dpo: a tenth of train.learning_rate)."
    )
    warmup_steps: int = _field(100, "Linear warmup steps from 0 (dpo: 10).")
    weight_decay: float = _field(
        0.1, "AdamW decay (not applied to norms, biases, embeddings)."
    )
    beta_1: float = _field(0.9, "AdamW beta_1.")
    beta_2: float = _field(0.99, "AdamW beta_2.")
    grad_clip: float = _field(1.0, "Global-norm gradient clipping; 0 = off.")
    seed: int = _field(1337, "Seed for weights, shuffling and dropout.")
    shuffle_buffer: int = _field(10000, "Blocks held in the shuffle buffer.")
    log_interval: int = _field(10, "Steps between progress/TensorBoard logs.")
    eval_interval: int = _field(
        250, "Steps between validation, sample text and checkpoint (dpo: 25)."
    )
    eval_batches: int = _field(
        0, "Validation batches per evaluation; 0 = the whole split."
    )
    keep_checkpoints: int = _field(3, "How many recent checkpoints to keep.")
    jit_compile: bool = _field(
        True,
        "Compile the train step with XLA (on 2 CPU cores, float32: 1.7x faster "
        "for the small shakespeare shape, 1.05x for the large one; better off "
        "with mixed_bfloat16 on a CPU, see precision; benchmarks/RESULTS.md).",
    )
    strategy: str = _field(
        "auto",
        "auto | default | mirrored | multi_worker (TF_CONFIG); auto = "
        "mirrored when more than one GPU is visible.",
    )
    precision: str = _field(
        "float32",
        "float32 | mixed_bfloat16 | mixed_float16 (loss-scaled) | bfloat16 "
        "(weights too: half the memory). On a CPU with "
        "AVX512-BF16, mixed_bfloat16 with jit_compile false trained the large "
        "shakespeare shape 1.36x faster than float32 (TensorFlow's oneDNN "
        "kernels; XLA's CPU matmuls gain nothing from bfloat16).",
    )
    grad_accumulation_steps: int = _field(
        1,
        "Split each replica's batch into this many micro-batches and sum "
        "their gradients before one update (same result, less memory).",
    )
    on_nonfinite: str = _field(
        "stop",
        "When a step's loss is NaN/inf: stop (keep the last good checkpoint) "
        "or skip (drop that update and go on).",
    )
    deterministic: bool = _field(
        False,
        "Enable TensorFlow's deterministic ops, for bit-exact resume "
        "(slower).",
    )
    profile_steps: str = _field(
        "",
        "Profile these steps for TensorBoard's profiler, e.g. '20,30' "
        "(empty = off).",
    )
    sample_prompt: str = _field(
        "\n",
        "Prompt for the text sample logged at each evaluation (chat runs: "
        "the user's message; blank means 'Hello').",
    )
    sample_tokens: int = _field(
        200, "Length of that sample in tokens (0 = no sample)."
    )
    early_stopping_patience: int = _field(
        0,
        "Stop after this many evaluations in a row without a lower "
        "validation loss (dpo: with the chosen replies past "
        "dpo.max_chosen_drop); 0 = never stop early.",
    )


# The objective sections. Their values are checked by their objectives
# (`check_settings` in tfchat/objectives/<name>.py), but the dataclasses stay
# here: this module (layer 0) imports no objective, and `--help`, a run's
# config.json and every command line need these fields without loading one.


@dataclass
class MlmConfig:
    mask_rate: float = _field(
        0.15, "Share of ordinary (non-special) tokens chosen for prediction."
    )
    mask_token_rate: float = _field(
        0.8, "Of the chosen tokens, the share replaced by [MASK]."
    )
    random_token_rate: float = _field(
        0.1,
        "Of the chosen tokens, the share replaced by a random token (the "
        "rest are kept as they are).",
    )
    max_predictions: int = _field(
        0,
        "Cap on chosen tokens per sequence; 0 = ceil(mask_rate * "
        "block_size), which never binds.",
    )
    whole_word: bool = _field(
        False, "Choose whole words: all WordPiece pieces of a word together."
    )


# The preference losses of objective dpo (tfchat.model.preference).
DPO_LOSSES = ("sigmoid", "ipo", "apo_zero")


@dataclass
class DpoConfig:
    # 1, not TRL's 0.1: on the tasks of benchmarks/dpo_defaults.py a lower
    # beta let the replies' wording drift (names of things the pairs never
    # showed came out misspelt) while the margins grew (benchmarks/RESULTS.md).
    beta: float = _field(
        1.0,
        "How far the policy may move from the reference (its starting "
        "weights): the DPO temperature; lower lets it move further.",
    )
    loss: str = _field(
        "sigmoid",
        "sigmoid (DPO: -log sigmoid(beta * reward margin)) | ipo (IPO: the "
        "squared distance of the margin of length-averaged log-probabilities "
        "from 1 / (2 beta)) | apo_zero (APO-zero: the chosen reply's reward "
        "pushed up and the rejected one's down, each on its own).",
    )
    rpo_alpha: float = _field(
        1.0,
        "Weight of the chosen reply's negative log-likelihood per token, "
        "added to the preference loss (RPO; TRL's rpo_alpha). It keeps the "
        "chosen reply likely: without it DPO on little data can make every "
        "reply unlikely while reward accuracy reads 1.0. 0 = plain DPO.",
    )
    max_chosen_drop: float = _field(
        0.5,
        "Nats per token the held-out chosen replies' log-probability may "
        "fall below the reference's (val_chosen_logp_change) before "
        "training warns; a checkpoint past it is chosen as the best only "
        "when no evaluation stayed within it.",
    )
    label_smoothing: float = _field(
        0.0,
        "Sigmoid loss only: the assumed share of pairs labelled the wrong way "
        "round (conservative DPO); 0 = plain DPO, below 0.5.",
    )


@dataclass
class DistillConfig:
    teacher: str = _field(
        "",
        "objective distill: the run the student learns from (a trained causal "
        "or chat run, or a converted pretrained checkpoint's run), with the "
        "tokenizer the student then uses.",
    )
    alpha: float = _field(
        0.5,
        "The share of the loss that is the KL divergence to the teacher's "
        "softened next-token distribution (times temperature squared); the "
        "rest is the usual next-token loss on the data.",
    )
    temperature: float = _field(
        2.0,
        "Softmax temperature of both distributions in the KL term; above 1 "
        "shows the student more of the teacher's ranking of unlikely tokens.",
    )


@dataclass
class Config:
    name: str = _field("default", "Run name: the run lives in <runs_dir>/<name>.")
    runs_dir: str = _field("runs", "Folder holding all runs.")
    objective: str = _field(
        "auto",
        "What to train: causal (next-token language model), chat (supervised "
        "fine-tuning, loss on assistant tokens only), mlm (masked-LM encoder "
        "pretraining), classify (text classification, usually with init_from "
        "an mlm run), dpo (preference tuning of a chat run given as init_from, "
        "on chosen/rejected reply pairs), distill (a smaller model trained to "
        "imitate distill.teacher on the data), or auto (dpo for preference JSONL, "
        "chat for dialogue data: chatterbot:*, YAML, messages JSONL; else causal).",
    )
    init_from: str = _field(
        "",
        "Start from the weights of this run folder (fine-tuning), or of a "
        "pretrained checkpoint (keras-hub preset or Hugging Face directory, "
        "hf:// or kaggle:// handle; converted into <runs_dir>/pretrained/ "
        "first); its tokenizer and model shape are reused.",
    )
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    mlm: MlmConfig = field(default_factory=MlmConfig)
    dpo: DpoConfig = field(default_factory=DpoConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)

    def to_dict(self):
        return dataclasses.asdict(self)

    @property
    def run_dir(self):
        return os.path.join(self.runs_dir, self.name)


def _hints(cls):
    return typing.get_type_hints(cls)


def _is_section(cls, name):
    return dataclasses.is_dataclass(_hints(cls)[name])


def _coerce(value, typ, key):
    """Converts `value` (from YAML/JSON or a command-line string) to `typ`."""
    try:
        if typ is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        # int(True) and str([1]) would succeed; neither is what was meant.
        if isinstance(value, (bool, list, dict)) or value is None:
            raise ValueError(value)
        if typ is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        if typ is str and isinstance(value, str):
            # Command lines cannot type a newline; accept the escape.
            return value.replace("\\n", "\n")
        return typ(value)
    except (TypeError, ValueError):
        raise TfchatError(
            f"Config key '{key}' expects {typ.__name__}. Received: {value!r}"
        ) from None


def from_dict(values, cls=Config, prefix=""):
    """Builds `cls` from a nested dict, rejecting unknown keys by name."""
    if not isinstance(values, dict):
        raise TfchatError(
            f"Config section '{prefix.rstrip('.') or 'top level'}' must be a "
            f"mapping. Received: {values!r}"
        )
    hints = _hints(cls)
    valid = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in valid:
            raise TfchatError(
                f"Unknown config key '{prefix}{key}'. Valid keys"
                f"{' in ' + prefix.rstrip('.') if prefix else ''}: "
                f"{', '.join(valid)}"
            )
        if _is_section(cls, key):
            kwargs[key] = from_dict(value, hints[key], f"{prefix}{key}.")
        else:
            kwargs[key] = _coerce(value, hints[key], prefix + key)
    return cls(**kwargs)


# Configs shipped inside the package (setup.py's package_data), so that
# `--config shakespeare_char` works after a plain `pip install`.
BUNDLED_CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
_CONFIG_SUFFIXES = (".yaml", ".yml", ".json")


def bundled_configs():
    """The names of the bundled configs, e.g. ["shakespeare_char", ...]."""
    if not os.path.isdir(BUNDLED_CONFIG_DIR):
        return []
    return sorted(
        os.path.splitext(name)[0] for name in os.listdir(BUNDLED_CONFIG_DIR)
        if name.endswith(_CONFIG_SUFFIXES)
    )


def find_config_file(name_or_path):
    """A config file's path: `name_or_path` itself if it is a file, else the
    bundled config of that name (with or without its suffix)."""
    if os.path.isfile(name_or_path):
        return name_or_path
    name = os.path.basename(name_or_path)
    stem = os.path.splitext(name)[0] if name.endswith(_CONFIG_SUFFIXES) else name
    # A bare name, or an old `configs/<name>.yaml` path from before the
    # configs moved into the package.
    if os.path.dirname(name_or_path) in ("", "configs") and stem in bundled_configs():
        for suffix in _CONFIG_SUFFIXES:
            path = os.path.join(BUNDLED_CONFIG_DIR, stem + suffix)
            if os.path.isfile(path):
                return path
    raise TfchatError(
        f"Config file not found: {name_or_path} (not a file, nor a bundled config: "
        f"{', '.join(bundled_configs())})"
    )


def load_file(path):
    """Reads a YAML or JSON config file (a path or a bundled config's name)
    into a nested dict."""
    path = find_config_file(path)
    with open(path, encoding="utf-8") as f:
        try:
            if path.endswith(".json"):
                values = json.load(f)
            else:
                values = yaml.safe_load(f)
        except (json.JSONDecodeError, yaml.YAMLError) as e:
            raise TfchatError(f"Config file {path} does not parse: {e}") from None
    return values or {}


def _merge(base, update):
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


def flat_keys(cls=Config, prefix=""):
    """Yields (dotted key, type, default, help) for every leaf field."""
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from flat_keys(hints[f.name], f"{prefix}{f.name}.")
        else:
            default = f.default if f.default is not dataclasses.MISSING else None
            yield prefix + f.name, hints[f.name], default, f.metadata.get("help", "")


def add_config_arguments(parser):
    """Adds `--config FILE` and one `--section.field` option per config field."""
    parser.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="FILE",
        help="YAML or JSON config file, or the name of a bundled config ("
        + ", ".join(bundled_configs())
        + "); repeatable, later files win.",
    )
    group = parser.add_argument_group(
        "config fields (each overrides the config files)"
    )
    for key, typ, default, help in flat_keys():
        group.add_argument(
            f"--{key}",
            dest=f"cfg:{key}",
            default=None,
            metavar=typ.__name__.upper(),
            help=f"{help} (default: {default!r})",
        )


def overrides_from_args(args):
    """The nested dict of fields given on the command line."""
    values = {}
    for name, value in vars(args).items():
        if name.startswith("cfg:") and value is not None:
            section = values
            *parents, leaf = name[4:].split(".")
            for p in parents:
                section = section.setdefault(p, {})
            section[leaf] = value
    return values


def build_config(files=(), overrides=None, base=None):
    """Merges `base` (a dict), config files in order, then `overrides`.

    The config remembers which keys they set (`given_keys`), so that its
    objective's own defaults can fill the others (`with_defaults`); its
    values are checked once those are in (`validate`, which
    `tfchat.objectives.resolve` calls)."""
    values = dict(base or {})
    for path in files:
        _merge(values, load_file(path))
    _merge(values, overrides or {})
    config = from_dict(values)
    config._given = frozenset(_dotted_keys(values))
    return config


def _dotted_keys(values, prefix=""):
    for key, value in values.items():
        if isinstance(value, dict):
            yield from _dotted_keys(value, f"{prefix}{key}.")
        else:
            yield prefix + key


def given_keys(config):
    """The dotted keys ("train.learning_rate") that the config files, the
    command line or the base of `build_config` set; None for a config built
    otherwise (loaded from a run folder, made in code), every value of which
    counts as chosen."""
    return getattr(config, "_given", None)


def replace(config, **changes):
    """`dataclasses.replace` that keeps what `given_keys` reads."""
    result = dataclasses.replace(config, **changes)
    if given_keys(config) is not None:
        result._given = given_keys(config)
    return result


def with_defaults(config, defaults):
    """`config` with the values of `defaults` ({dotted key: value}) for the
    keys it was not given (`given_keys`); `config` itself when none apply."""
    given = given_keys(config)
    missing = {key: value for key, value in defaults.items()
               if given is not None and key not in given}
    if not missing:
        return config
    values = config.to_dict()
    for key, value in missing.items():
        *sections, leaf = key.split(".")
        section = values
        for name in sections:
            section = section[name]
        section[leaf] = value
    result = from_dict(values)
    result._given = given  # still only what was given
    return result


AUGMENT_ROLES = ("system", "user", "assistant")  # tfchat.data.augment.ROLE_CODES


def _roles_valid(spec):
    roles = [r.strip() for r in spec.split(",") if r.strip()]
    return bool(roles) and all(r in AUGMENT_ROLES for r in roles)


def _template_valid(template):
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError:
        return False
    return all(name in TASK_FIELDS for name in names)


def validate(config):
    """Checks values that a type alone cannot, before any work starts. The
    objective sections (mlm, dpo, distill) are checked by their objectives,
    and what an objective needs of the config too: `tfchat.objectives.check`."""
    m, t = config.model, config.train
    checks = [
        (config.tokenizer.kind in TOKENIZER_KINDS, f"tokenizer.kind must be one of {', '.join(TOKENIZER_KINDS)}"),
        (t.strategy in STRATEGIES, f"train.strategy must be one of {', '.join(STRATEGIES)}"),
        (t.precision in PRECISIONS, f"train.precision must be one of {', '.join(PRECISIONS)}"),
        (t.early_stopping_patience >= 0, "train.early_stopping_patience must be 0 or positive"),
        (config.data.format in ("auto", "text", "jsonl", "csv"), "data.format must be auto, text, jsonl or csv"),
        (0 < config.data.val_fraction < 1, "data.val_fraction must be between 0 and 1"),
        (config.data.encoding_errors in ("strict", "replace"), "data.encoding_errors must be strict or replace"),
        (config.data.dedup in DEDUP_MODES, f"data.dedup must be one of {', '.join(DEDUP_MODES)}"),
        (0 < config.data.dedup_threshold <= 1, "data.dedup_threshold must be in (0, 1]"),
        (config.data.min_chars >= 0 and config.data.max_chars >= 0,
         "data.min_chars and data.max_chars must be 0 or more"),
        (not config.data.max_chars or config.data.max_chars >= config.data.min_chars,
         "data.max_chars must be at least data.min_chars (or 0: no limit)"),
        (0 <= config.data.max_repetition <= 1, "data.max_repetition must be between 0 and 1"),
        (config.data.blocklist_action in BLOCKLIST_ACTIONS,
         f"data.blocklist_action must be one of {', '.join(BLOCKLIST_ACTIONS)}"),
        (config.data.balance in BALANCE_MODES,
         f"data.balance must be one of {', '.join(BALANCE_MODES)}"),
        (all(0 <= p < 1 for p in (config.data.augment_mask, config.data.augment_delete,
                                  config.data.augment_swap)),
         "data.augment_mask, data.augment_delete and data.augment_swap must be in [0, 1)"),
        (_roles_valid(config.data.augment_roles),
         f"data.augment_roles must name some of {', '.join(AUGMENT_ROLES)} (comma-separated)"),
        (config.data.task in TASKS, f"data.task must be one of {', '.join(TASKS)}"),
        (_template_valid(config.data.prompt_template),
         "data.prompt_template must be a format string over "
         f"{', '.join('{' + f + '}' for f in TASK_FIELDS)} ({{{{ and }}}} for braces)"),
        (m.num_layers > 0 and m.num_heads > 0, "model.num_layers and model.num_heads must be positive"),
        (m.head_dim > 0 or m.hidden_dim % m.num_heads == 0,
         "model.hidden_dim must be divisible by model.num_heads (or set model.head_dim)"),
        (m.head_dim >= 0 and m.sliding_window >= 0,
         "model.head_dim and model.sliding_window must not be negative"),
        (m.block_size > 0, "model.block_size must be positive"),
        (
            not m.max_positions or m.block_size <= m.max_positions,
            f"model.block_size {m.block_size} exceeds the {m.max_positions} tokens the "
            "pretrained checkpoint was trained for (model.max_positions)",
        ),
        (m.norm in NORMS, f"model.norm must be one of {', '.join(NORMS)}"),
        (m.position in POSITIONS, f"model.position must be one of {', '.join(POSITIONS)}"),
        (m.mlp in MLPS, f"model.mlp must be one of {', '.join(MLPS)}"),
        (m.norm_epsilon > 0, "model.norm_epsilon must be positive"),
        (
            m.num_kv_heads >= 0 and m.num_heads % (m.num_kv_heads or m.num_heads) == 0,
            "model.num_heads must be divisible by model.num_kv_heads",
        ),
        (
            m.position != "rope" or (m.head_dim or m.hidden_dim // m.num_heads) % 2 == 0,
            "model.position rope needs an even head width (head_dim, or hidden_dim / num_heads)",
        ),
        (
            m.rope_theta > 0 and m.rope_scaling_factor > 0
            and m.rope_high_freq_factor > m.rope_low_freq_factor > 0
            and m.rope_original_max_positions > 0,
            "model.rope_theta, rope_scaling_factor, rope_low_freq_factor and "
            "rope_original_max_positions must be positive, and rope_high_freq_factor "
            "above rope_low_freq_factor",
        ),
        (0 <= m.dropout < 1, "model.dropout must be in [0, 1)"),
        (t.batch_size > 0 and t.max_steps > 0, "train.batch_size and train.max_steps must be positive"),
        (t.learning_rate > 0, "train.learning_rate must be positive"),
        (0 <= t.warmup_steps < t.max_steps,
         f"train.warmup_steps ({t.warmup_steps}) must be below train.max_steps ({t.max_steps}); "
         "set --train.warmup_steps too"),
        (t.log_interval > 0 and t.eval_interval > 0, "train.log_interval and train.eval_interval must be positive"),
        (t.keep_checkpoints > 0, "train.keep_checkpoints must be positive"),
        (t.on_nonfinite in ("stop", "skip"), "train.on_nonfinite must be stop or skip"),
        (t.grad_accumulation_steps > 0, "train.grad_accumulation_steps must be positive"),
        (
            t.batch_size % t.grad_accumulation_steps == 0,
            "train.batch_size must be divisible by train.grad_accumulation_steps",
        ),
        # A tokenizer trained here reserves special tokens; a pretrained
        # one's vocabulary is the checkpoint's, whatever its size.
        (config.tokenizer.kind == "pretrained" or config.tokenizer.vocab_size > 16,
         "tokenizer.vocab_size must be above 16"),
        (m.lora_rank >= 0 and m.lora_alpha >= 0, "model.lora_rank and model.lora_alpha must not be negative"),
        (
            all(t in LORA_TARGETS for t in lora_targets(m)) and lora_targets(m),
            f"model.lora_targets must be a comma-separated list of {', '.join(LORA_TARGETS)}",
        ),
        (
            m.mlp in GATED_MLPS or "mlp_gate" not in lora_targets(m),
            f"model.lora_targets mlp_gate needs model.mlp {' or '.join(GATED_MLPS)}",
        ),
    ]
    if t.profile_steps:
        try:
            first, last = (int(v) for v in t.profile_steps.split(","))
            checks.append((0 <= first < last, "train.profile_steps must be 'first,last' with first < last"))
        except ValueError:
            checks.append((False, "train.profile_steps must be two steps like '20,30'"))
    for ok, message in checks:
        if not ok:
            raise TfchatError(message + ".")


def lora_targets(model_config):
    """`model.lora_targets` as a list of layer names."""
    return [t.strip() for t in model_config.lora_targets.split(",") if t.strip()]


def parser_with_config(description, prog=None):
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(parser)
    return parser


def load(path):
    return from_dict(load_file(path))
