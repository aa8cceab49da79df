"""Tiny random BERT / RoBERTa models and tokenizers built in code, so the suite is fast and offline."""

from __future__ import annotations

import gzip
import json
import os
import random
from pathlib import Path

import pytest
from hypothesis import settings

# CI runs the same examples every time (a red CI then means a changed program, not a new draw); locally
# hypothesis keeps exploring and remembers failures in .hypothesis/.
settings.register_profile("ci", derandomize=True, deadline=None)
if os.environ.get("CI"):
    settings.load_profile("ci")

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny models: thread start-up and hand-offs cost more than the maths; one thread is several times faster.
# Subprocesses started by the tests inherit this too.
os.environ.setdefault("OMP_NUM_THREADS", "1")

WORDS = (
    "good great excellent wonderful love loved best amazing fun brilliant superb "
    "bad awful terrible boring hate hated worst poor dull waste horrible "
    "movie film plot actor acting story scene the a and was is it this of to "
    "really very not quite just some much ok fine neutral average meh"
).split()
POSITIVE = WORDS[:11]
NEGATIVE = WORDS[11:22]


def corpus(n: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 40))) for _ in range(n)]


def build_tokenizer(arch: str, model_max_length: int = 128):
    """A real fast tokenizer trained on a tiny word list: WordPiece for BERT, byte-level BPE for RoBERTa."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if arch == "bert":
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.train_from_iterator(corpus(), trainers.WordPieceTrainer(vocab_size=200, special_tokens=specials))
        cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
        )
        tok.decoder = decoders.WordPiece()
        kw = dict(unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    else:
        specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.train_from_iterator(
            corpus(),
            trainers.BpeTrainer(vocab_size=600, special_tokens=specials,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()),
        )
        tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
        tok.decoder = decoders.ByteLevel()
        kw = dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
                  cls_token="<s>", sep_token="</s>", mask_token="<mask>")
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=model_max_length, **kw)


def build_model(arch: str, num_layers: int = 3, num_labels: int = 2, seed: int = 0, vocab_size: int = 600):
    """A tiny random *ForSequenceClassification model (hidden 32, 2 heads)."""
    import torch
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        RobertaConfig,
        RobertaForSequenceClassification,
    )

    torch.manual_seed(seed)
    common = dict(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=num_layers, num_attention_heads=2,
                  intermediate_size=64, max_position_embeddings=140, num_labels=num_labels)
    if arch == "bert":
        return BertForSequenceClassification(BertConfig(**common, pad_token_id=0))
    config = RobertaConfig(**common, pad_token_id=1, bos_token_id=0, eos_token_id=2, type_vocab_size=1)
    return RobertaForSequenceClassification(config)


def save_tiny(path: Path, arch: str, num_layers: int = 3, num_labels: int = 2) -> Path:
    tokenizer = build_tokenizer(arch)
    model = build_model(arch, num_layers, num_labels, vocab_size=len(tokenizer))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def train_steps(model, feed, k: int, steps: int = 4, dropout: float = 0.0, seed: int = 123) -> dict:
    """The training loop's core: train mode with the frozen prefix in eval, AdamW over the two groups.

    The same seed gives the same dropout masks in the trainable layers on the cached and uncached paths.
    Returns every parameter after `steps` batches (frozen ones included, so a comparison covers them too).
    """
    import torch

    from sentune import model as M

    M.freeze_layers(model, k)
    optimizer = M.make_optimizer(M.param_groups(model, 1e-3, 1e-2, 0.01), "cpu")
    model.train()
    M.set_frozen_eval(model, k)
    torch.manual_seed(seed)
    for batch in [b for epoch in range(2) for b in feed.batches(epoch)][:steps]:
        loss = torch.nn.functional.cross_entropy(M.forward_logits(model, batch, k, dropout), batch["labels"])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def skip_or_fail_in_ci(reason: str) -> None:
    """Skip locally; fail under CI (CI=true), where a missing prerequisite must not turn a test green."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: this test must run in CI, so it fails instead of skipping)", pytrace=False)
    pytest.skip(reason)


# The capabilities that let root ignore file permissions; setpriv drops them from what it runs.
PERMISSION_OVERRIDES = "-dac_override,-dac_read_search,-fowner,-linux_immutable"


def without_root_overrides(command: list[str]) -> list[str]:
    """`command` as a process for which permissions count: as is for a normal user; as root, under setpriv
    with the permission-override capabilities dropped (still uid 0, so it reads the clone wherever CI put it)."""
    if os.geteuid() != 0:
        return command
    import shutil

    setpriv = shutil.which("setpriv")
    if setpriv is None:
        skip_or_fail_in_ci("running as root and setpriv (util-linux) is missing: cannot drop root's overrides")
    return [setpriv, f"--bounding-set={PERMISSION_OVERRIDES}", "--", *command]


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A save_pretrained folder: tiny random BERT (3 layers, 2 labels) + WordPiece tokenizer."""
    return save_tiny(tmp_path_factory.mktemp("tiny-bert"), "bert")


@pytest.fixture(scope="session")
def tiny_roberta_dir(tmp_path_factory) -> Path:
    """A save_pretrained folder: tiny random RoBERTa (3 layers, 2 labels) + byte-level BPE tokenizer."""
    return save_tiny(tmp_path_factory.mktemp("tiny-roberta"), "roberta")


@pytest.fixture(params=["bert", "roberta"])
def tiny_model_dir(request, tiny_bert_dir, tiny_roberta_dir) -> Path:
    return tiny_bert_dir if request.param == "bert" else tiny_roberta_dir


def sentiment_rows(n: int, seed: int = 0, labels=("neg", "pos")) -> list[dict]:
    """Learnable toy sentiment data: positive words -> 'pos', negative words -> 'neg'."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = labels[i % len(labels)]
        vocab = POSITIVE if label == labels[-1] else NEGATIVE
        words = [rng.choice(vocab) for _ in range(rng.randint(2, 12))] + [rng.choice(WORDS[22:]) for _ in range(3)]
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": label})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


def make_toy_files(root: Path) -> dict[str, Path]:
    """train/validation/test JSONL files of learnable toy sentiment data under `root`."""
    return {
        "train": write_jsonl(root / "train.jsonl", sentiment_rows(64, seed=1)),
        "validation": write_jsonl(root / "validation.jsonl", sentiment_rows(24, seed=2)),
        "test": write_jsonl(root / "test.jsonl", sentiment_rows(24, seed=3)),
    }


@pytest.fixture
def toy_files(tmp_path) -> dict[str, Path]:
    return make_toy_files(tmp_path)


@pytest.fixture(scope="module")
def module_toy_files(tmp_path_factory) -> dict[str, Path]:
    """The same files, shared by a module's tests (subprocess-heavy modules)."""
    return make_toy_files(tmp_path_factory.mktemp("toy-data"))
