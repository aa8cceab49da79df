"""The frozen-layer cache: run the frozen prefix (embeddings + layers 0..K-1, eval mode) once per example.

Frozen layers in eval mode are a fixed function of the tokens, so their output can be computed once and
reused in every epoch (and by later runs with the same fingerprint). Each example's hidden states are stored
unpadded, one flat [tokens, H] tensor per split, and padded per batch again when read: with the model's own
attention mask, real positions do not depend on how much padding a batch has, so the cached path gives the
full model's logits (tests/test_cache.py).

Where it lives (`mode`): `memory` (a tensor in RAM), `disk` (a memory-mapped file under `cache_dir`), `auto`
(memory when it fits a RAM budget, else disk; either way it is also written to disk when there is room, so a
later run reuses it), `off`. Files are content-addressed: the key covers the prefix weights, K, the exact
token ids of the split, the storage dtype, the model config's numerics (hidden_act, layer_norm_eps, ...), the
torch and transformers versions, the format version and the caller's `fingerprint_parts`. They are written
under a temporary name then renamed, so a crash never leaves a half cache that is reused, and carry a SHA-256
that is checked before every reuse (cache_files.py, which also cleans temporaries of killed writers and
backs `sentune cache list|prune`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import shutil
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from sentune import draws as draws_lib
from sentune import model as model_lib
from sentune.data.batches import BatchPlan, Feed, padded_length
from sentune.data.padding import pad_rows
from sentune.errors import WriteError
from sentune.training import cache_files

FORMAT_VERSION = 2  # 2: metadata holds the data's sha256; keys cover config numerics and library versions
RAM_FRACTION = 0.25  # auto keeps the cache in RAM when it needs at most this share of the available memory
BUILD_BATCH = 32  # examples per prefix batch while building (forward only, length-sorted)
# numpy has no bf16: files hold the raw bits as same-width integers
_BITS = {torch.bfloat16: torch.int16, torch.float16: torch.int16, torch.float32: torch.int32}
_NUMPY = {torch.bfloat16: np.int16, torch.float16: np.int16, torch.float32: np.int32}


@dataclass
class SplitCache:
    """One split's cached prefix output: example i is rows offsets[i]:offsets[i] + lengths[i] of `flat`."""

    flat: torch.Tensor  # [tokens, H]
    offsets: np.ndarray
    lengths: np.ndarray
    status: str  # built | reused | derived:J (from depth J's cache)
    path: Path | None  # the file on disk, if any


@dataclass
class CacheStore:
    """Caches kept in this process across runs (a sweep's trials), by file name, and what each run did.

    With a store, a run first looks here, then on disk; a deeper-frozen run whose depth is missing derives it
    from the deepest shallower depth found (here or on disk) by running only the extra layers.
    """

    caches: dict[str, SplitCache] = field(default_factory=dict)
    events: list[dict] = field(default_factory=list)  # {split, k, status, seconds}: built | reused | derived:J


def cache_feeds(model, k: int, feeds: dict[str, Feed], *, mode: str, cache_dir: str | None,
                fingerprint_parts: dict, device, dtype: torch.dtype = torch.bfloat16,
                log: Callable[[str], None] = print, store: CacheStore | None = None,
                draws: tuple[int, int] | None = None) -> dict[str, Feed]:
    """Feeds that yield the same batches as `feeds` but with `hidden` (cached layer-K input) for `input_ids`.

    Call on the unwrapped model, after loading and freezing, before training (the model is moved to `device`
    in place); inside an autocast context the prefix runs in that precision. K = 0 or mode `off` returns the
    feeds unchanged. With `draws` = (seed, epoch) the prefix runs in train mode over that epoch's batches of
    each feed, its dropout drawn as live training with that seed draws it in that epoch (sentune.draws): the
    hidden states a live `--frozen-dropout` run computes in the epoch, keyed by seed, epoch and batch plan.
    """
    if k == 0 or mode == "off":
        return dict(feeds)
    model.to(device)
    start = time.perf_counter()
    root = Path(cache_dir or default_cache_dir())
    hidden_size = model.config.hidden_size
    itemsize = torch.tensor([], dtype=dtype).element_size()
    need = sum(int(f.row_lengths.sum()) for f in feeds.values()) * hidden_size * itemsize
    in_memory = mode == "memory" or (mode == "auto" and need <= RAM_FRACTION * available_ram())
    persist = mode == "disk" or (mode == "auto" and _disk_has_room(root, need))
    if persist:
        cache_files.clean_stale(root)  # what a killed build left: multi-GB temporaries nobody will finish
    if draws is not None:  # a dropout run is another function of the tokens (and of the rates): its own files
        rates = {name: getattr(model.config, name, None) for name in ("attention_probs_dropout_prob",
                                                                        "hidden_dropout_prob")}
        fingerprint_parts = {**fingerprint_parts, "draws": list(draws), **rates}
    keys = _model_keys(model, k, dtype, fingerprint_parts)
    caches = {}
    for split, feed in feeds.items():
        t0 = time.perf_counter()
        tokens = _tokens_digest(feed, draws and draws[1])
        paths = {j: root / f"prefix-{_digest(key, tokens)}.bin" for j, key in keys.items()}
        find = functools.partial(_find, store, paths, feed, hidden_size, dtype, in_memory)
        path = paths[k] if persist else None
        # A dropout run is never derived: layers J.. would redraw from the batch's seed, so their masks would
        # repeat the embeddings' and the file would hold other numbers than a direct build under its key.
        caches[split] = (find(k)
                         or (draws is None and _derive(model, k, feed, find, device, dtype, path, in_memory))
                         or _build(model, k, feed, device, dtype, path, in_memory, draws=draws))
        if store is not None:
            store.caches[paths[k].name] = caches[split]
            store.events.append({"split": split, "k": k, "status": caches[split].status,
                                 "seconds": round(time.perf_counter() - t0, 3)})
    documents = sum(f.num_examples() for f in feeds.values() if f.groups is not None)
    log(_report(caches, k, model_lib.num_layers(model), need, dtype, in_memory, time.perf_counter() - start,
                documents))
    return {split: cached_feed(feeds[split], caches[split]) for split in feeds}


def _find(store: CacheStore | None, paths: dict[int, Path], feed: Feed, hidden_size: int, dtype: torch.dtype,
          in_memory: bool, depth: int) -> SplitCache | None:
    """Depth `depth`'s cache from the store (this process) or from disk (an earlier run), marked reused."""
    path = paths[depth]
    cache = store.caches.get(path.name) if store is not None else None
    if cache is not None:
        return dataclasses.replace(cache, status="reused")
    return _reuse(path, feed, hidden_size, dtype, in_memory)


def _derive(model, k: int, feed: Feed, find: Callable[[int], SplitCache | None], device, dtype: torch.dtype,
            path: Path | None, in_memory: bool) -> SplitCache | None:
    """Layer-K input from the deepest cached shallower depth J: layers J..K-1 run once, never the prefix
    (eval-mode caches only)."""
    for j in range(k - 1, 0, -1):
        base = find(j)
        if base is None:
            continue
        run = functools.partial(_extra_layers, start=j, stop=k, device=device)
        cache = _build(model, k, cached_feed(feed, base), device, dtype, path, in_memory, run=run)
        return dataclasses.replace(cache, status=f"derived:{j}")
    return None


def cached_feed(feed: Feed, cache: SplitCache) -> Feed:
    """A feed with the same batch plan whose batches carry `hidden` [B, T, H] (stored dtype), not ids.

    Window feeds are cached row by row: a window is stored like an example, its document is the feed's business.
    """
    offsets, lengths, dtype = cache.offsets, cache.lengths, cache.flat.dtype
    bits = cache.flat.view(_BITS[dtype]).numpy()  # numpy has no bf16; padding with 0 bits is padding with 0.0

    def collate(idx: np.ndarray, width: int) -> dict:
        rows = [bits[offsets[i]:offsets[i] + lengths[i]] for i in idx]
        hidden, mask = pad_rows(rows, width, dtype=bits.dtype)
        return {"hidden": torch.from_numpy(hidden).view(dtype), "attention_mask": torch.from_numpy(mask)}

    return Feed(feed.plan, feed.labels, collate, padding=feed.padding, max_length=feed.max_length,
                pad_to_multiple_of=feed.pad_to_multiple_of, input_ids=None, groups=feed.groups)


def _extra_layers(model, batch: dict, *, start: int, stop: int, device) -> torch.Tensor:
    return model_lib.forward_layers(model, start, stop, batch["hidden"].to(device), batch["attention_mask"].to(device))


# ---- building and reusing ------------------------------------------------------------------------------
def _build(model, k: int, feed: Feed, device, dtype: torch.dtype, path: Path | None,
           in_memory: bool, run: Callable | None = None, draws: tuple[int, int] | None = None) -> SplitCache:
    lengths = feed.row_lengths
    offsets = _offsets(lengths)
    shape = (int(lengths.sum()), model.config.hidden_size)
    if in_memory or path is None:
        flat = torch.empty(shape, dtype=dtype)
        _run_prefix(model, k, feed, device, flat, offsets, run, draws)
        if path is not None and not _save_copy(flat, dtype, path, _meta(model, k, feed, dtype)):
            path = None  # the copy on disk is only for later runs: this run goes on from memory
        return SplitCache(flat, offsets, lengths, "built", path)

    def fill(tmp: Path) -> None:  # larger than the RAM budget: write straight into the file through a memory map
        array = np.lib.format.open_memmap(tmp, "w+", _NUMPY[dtype], shape)
        _run_prefix(model, k, feed, device, torch.from_numpy(array).view(dtype), offsets, run, draws)
        array.flush()
        del array

    try:
        cache_files.publish(path, fill, _meta(model, k, feed, dtype))
    except WriteError as e:
        raise WriteError(f"frozen-layer cache: {e}; free space, choose another --cache-dir, "
                         "or use --cache memory/off") from None
    return SplitCache(_load(path, dtype, mmap=True), offsets, lengths, "built", path)


def _save_copy(flat: torch.Tensor, dtype: torch.dtype, path: Path, meta: dict) -> bool:
    """Keep an in-memory cache on disk for later runs; a failure there only costs reuse, so warn and go on."""
    try:
        cache_files.publish(path, lambda tmp: _save_array(tmp, flat.view(_BITS[dtype]).numpy()), meta)
        return True
    except WriteError as e:
        warnings.warn(f"could not keep the frozen-layer cache in {path.parent} ({e}); "
                      "this run goes on from memory, later runs rebuild it", stacklevel=2)
        return False


def _save_array(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:  # a file, not a name: np.save would append .npy to the name
        np.save(f, array)


def _offsets(lengths: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)


def _run_prefix(model, k: int, feed: Feed, device, flat: torch.Tensor, offsets: np.ndarray,
                run: Callable | None = None, draws: tuple[int, int] | None = None) -> None:
    """Fill `flat` with layer-K inputs; `run(model, batch)` replaces the prefix forward (derivation).
    With `draws`: in train mode, each batch drawn from its own seed, the caller's random state left as it was."""
    was_training = model.training
    model.train(draws is not None)  # eval: the frozen layers are a fixed function only without dropout
    try:
        with torch.inference_mode():
            for rows, width, seed in _build_batches(feed, draws):
                batch = feed.collate(rows, width)
                with contextlib.nullcontext() if seed is None else draws_lib.seeded(seed, device):
                    hidden = run(model, batch) if run is not None else model_lib.forward_prefix(
                        model, k, batch["input_ids"].to(device), batch["attention_mask"].to(device))
                hidden = hidden.to(device="cpu", dtype=flat.dtype)
                for row, i in enumerate(rows):
                    flat[offsets[i]:offsets[i] + feed.row_lengths[i]] = hidden[row, :feed.row_lengths[i]]
    finally:
        model.train(was_training)


def _build_batches(feed: Feed, draws: tuple[int, int] | None) -> Iterator[tuple[np.ndarray, int, int | None]]:
    """(rows, padded width, dropout seed): length-sorted batches of BUILD_BATCH rows in eval mode; with
    `draws` = (seed, epoch), the epoch's own training batches, padded as training pads them, so every mask
    has the shape and the seed the live run gives it."""
    if draws is None:
        for idx in BatchPlan(feed.row_lengths, BUILD_BATCH, train=False, seed=0).batches(0):
            yield idx, padded_length(int(feed.row_lengths[idx].max()), "dynamic", feed.max_length, 8), None
        return
    seed, epoch = draws
    for b, (rows, width) in enumerate(feed.plan_rows(epoch)):
        yield rows, width, draws_lib.draw_seed(seed, epoch, b)


def _meta(model, k: int, feed: Feed, dtype: torch.dtype) -> dict:
    """What a cache file's metadata says besides its hash (cache_files.publish adds that and the time)."""
    return {"format": FORMAT_VERSION, "examples": int(len(feed.row_lengths)), "tokens": int(feed.row_lengths.sum()),
            "model": getattr(model.config, "_name_or_path", "") or model.config.model_type, "depth": k,
            "dtype": str(dtype).removeprefix("torch.")}


def _reuse(path: Path, feed: Feed, hidden_size: int, dtype: torch.dtype,
           in_memory: bool) -> SplitCache | None:
    meta = cache_files.read_checked(path)  # None: missing, or not what was written (then rebuilt)
    if meta is None:
        return None
    try:
        flat = _load(path, dtype, mmap=not in_memory)
    except (OSError, ValueError):
        return None  # unreadable: rebuild (and overwrite) it
    tokens = int(feed.row_lengths.sum())
    if meta.get("format") != FORMAT_VERSION or tuple(flat.shape) != (tokens, hidden_size):
        return None
    return SplitCache(flat, _offsets(feed.row_lengths), feed.row_lengths, "reused", path)


def _load(path: Path, dtype: torch.dtype, mmap: bool) -> torch.Tensor:
    array = np.load(path, mmap_mode="c" if mmap else None)  # "c": copy-on-write, the file is never modified
    return torch.from_numpy(array).view(dtype)


# ---- keys, budgets, report -----------------------------------------------------------------------------
def default_cache_dir() -> str:
    import platformdirs

    return str(Path(platformdirs.user_cache_dir("sentune")) / "prefix")


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


def _model_keys(model, k: int, dtype: torch.dtype, parts: dict) -> dict[int, str]:
    """Identity of the prefix at every depth 1..K as a function (exact weights, depth, attention kernel,
    dtypes, the autocast it runs under, caller's parts), in one pass over the weights: depth j's hash is the
    running hash after layer j-1."""
    modules = model_lib.prefix_modules(model, k)
    numerics = config_numerics(model.config)
    device = next(model.parameters()).device.type
    autocast = str(torch.get_autocast_dtype(device)) if torch.is_autocast_enabled(device) else None
    h, keys = hashlib.sha256(), {}
    for depth, module in enumerate(modules):
        for name, tensor in module.state_dict().items():
            h.update(name.encode())
            h.update(tensor.detach().reshape(-1).cpu().contiguous().view(torch.uint8).numpy().tobytes())
        if depth >= 1:  # modules[0] is the embeddings: depth 1 = embeddings + layer 0
            extra = [FORMAT_VERSION, depth, str(dtype), str(next(model.parameters()).dtype), autocast,
                     getattr(model.config, "_attn_implementation", None), parts, numerics]
            keys[depth] = _digest(h.hexdigest(), json.dumps(extra, sort_keys=True, default=str))
    return keys


# Config entries that do not change what the frozen prefix computes in eval mode (labels, bookkeeping, dropout:
# a dropout run keys its rates itself; the layer count: the prefix is keyed by its depth and its own weights, so a
# distilled student that keeps its teacher's bottom layers shares their files); everything else (hidden_act,
# layer_norm_eps, position embeddings, ...) does.
NOT_NUMERICS = {"id2label", "label2id", "problem_type", "sentune", "_name_or_path", "transformers_version",
                "architectures", "finetuning_task", "classifier_dropout", "hidden_dropout_prob",
                "attention_probs_dropout_prob", "attention_dropout", "dropout", "torch_dtype", "dtype",
                "num_hidden_layers"}


def config_numerics(config) -> dict:
    """The model config's entries that change the numbers, plus the library versions that compute them."""
    import transformers

    numbers = {k: v for k, v in config.to_dict().items() if k not in NOT_NUMERICS}
    return {"config": numbers, "torch": torch.__version__, "transformers": transformers.__version__}


def _tokens_digest(feed: Feed, epoch: int | None = None) -> str:
    """The split's exact token ids; for a dropout run (`epoch`) also that epoch's batches and their widths,
    which decide every mask's shape and seed."""
    h = hashlib.sha256(str(feed.max_length).encode())
    h.update(feed.row_lengths.astype(np.int64).tobytes())
    for ids in feed.input_ids or []:  # token feeds only: a cached feed has no ids (and is never keyed)
        h.update(np.asarray(ids, dtype=np.int64).tobytes())
    for rows, width in feed.plan_rows(epoch) if epoch is not None else ():
        h.update(np.concatenate([[len(rows), width], rows]).astype(np.int64).tobytes())
    return h.hexdigest()


def available_ram() -> int:
    """MemAvailable from /proc/meminfo (Linux), else free pages from sysconf."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def _disk_has_room(root: Path, need: int) -> bool:
    probe = root
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free > need * 1.1 + (256 << 20)


def _report(caches: dict[str, SplitCache], k: int, depth: int, nbytes: int, dtype: torch.dtype,
            in_memory: bool, seconds: float, documents: int = 0) -> str:
    examples = sum(len(c.lengths) for c in caches.values())
    rows = f"{documents:,} texts in {examples:,} windows" if documents else f"{examples:,} examples"
    tokens = sum(int(c.lengths.sum()) for c in caches.values())
    built = [s for s, c in caches.items() if c.status == "built"]
    reused = [s for s, c in caches.items() if c.status == "reused"]
    derived = [f"{s} from layer {c.status.split(':')[1]}" for s, c in caches.items() if c.status.startswith("derived")]
    action = ", ".join(x for x in (built and f"built {'+'.join(built)}", reused and f"reused {'+'.join(reused)}",
                                   derived and f"derived {', '.join(derived)}") if x)
    folders = {str(c.path.parent) for c in caches.values() if c.path is not None}
    where = "memory" if in_memory else "disk (memory-mapped)"
    disk = f", files in {', '.join(sorted(folders))}" if folders else ""
    return (f"frozen-layer cache: layers 0-{k - 1} of {depth}, {rows}, {tokens:,} tokens, "
            f"{nbytes / 1e6:,.1f} MB {str(dtype).removeprefix('torch.')}, {where}, {action} "
            f"in {seconds:.1f} s{disk}")
