"""The llama.cpp model and context (with `sampling.py`, the only importer of the binding).

`LlamaBackend` owns one model, one context with `n_seq_max = slots` and one reusable
`llama_batch`. It exposes exactly what the engine loop needs: tokenize/detokenize,
decode a batch of (token, pos, seq, wants_logits) rows, per-sequence KV operations and
sequence state save/restore; sampler chains are `sampling.py`'s. It is not thread-safe
except for the tokenizer calls, which only read the vocabulary (llama-server tokenizes
on HTTP threads the same way).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llama_cpp

from warmloop.engine import cpu

log = logging.getLogger("warmloop.llama")

# ggml_log_level: 1 DEBUG, 2 INFO, 3 WARN, 4 ERROR, 5 CONT
_GGML_WARN = 3
_GGML_ERROR = 4


def _log_to_python(level: int, text: bytes, _user: Any) -> None:
    # llama.cpp is chatty at load time; only warnings and errors reach our logs.
    if level in (_GGML_WARN, _GGML_ERROR) and text:
        log.log(
            logging.ERROR if level == _GGML_ERROR else logging.WARNING,
            text.decode("utf-8", "replace").rstrip(),
        )


# Kept at module level: llama.cpp holds the pointer for the life of the process.
_forward_log = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)(
    _log_to_python
)
# The CPU backend variant this process loaded (once: llama.cpp keeps it for good).
_cpu_choice: cpu.Choice | None = None


def load_cpu_backend(wanted: str = cpu.AUTO) -> cpu.Choice:
    """Load llama.cpp's CPU backend, the variant `cpu.choose` picks for this CPU and OS
    (or `wanted`), and initialise llama.cpp; once per process. Later calls get what the
    process runs ("auto" included); one that names another variant is refused: a
    process cannot swap its kernels."""
    global _cpu_choice
    if _cpu_choice is not None:
        if wanted not in (cpu.AUTO, _cpu_choice.name):
            raise cpu.CpuVariantError(
                f"this process already runs the {_cpu_choice.name} CPU variant; "
                f"--cpu-variant {wanted} needs a process of its own"
            )
        return _cpu_choice
    choice = cpu.choose_here(wanted)
    llama_cpp.llama_log_set(_forward_log, ctypes.c_void_p())
    if choice.variant is not None:
        # Through libllama's own handle: dlsym searches its dependencies, so this is the
        # libggml (and backend registry) llama.cpp uses. The wheel holds libggml.so and
        # libggml.so.0 as two files; opening the other one would load a second registry.
        load = llama_cpp.llama_cpp._lib.ggml_backend_load
        load.argtypes = [ctypes.c_char_p]
        load.restype = ctypes.c_void_p
        lib = cpu.library_dir()
        assert lib is not None  # the manifest that named the variant was read there
        path = lib / choice.variant.file
        if not load(str(path).encode()):
            raise BackendError(f"llama.cpp could not load its CPU backend {path}")
    # With a backend registered, llama_backend_init does not scan for others.
    llama_cpp.llama_backend_init()
    _map_large_buffers()
    _cpu_choice = choice
    log.info("llama.cpp CPU backend: %s (%s)", choice.name, choice.reason)
    return choice


def system_info() -> dict[str, str]:
    """What the loaded llama.cpp reports it runs with (`llama_print_system_info`)."""
    load_cpu_backend()
    info = llama_cpp.llama_print_system_info().decode("utf-8", "replace")
    return dict(re.findall(r"([A-Z0-9_]+) = (\w+)", info))


def _map_large_buffers() -> None:
    """Keep every buffer over 1 MiB in its own mapping, returned to the OS when freed.

    KV snapshots are 10-100 MB buffers that come and go. glibc raises its mmap
    threshold to the size of each mapped block freed (up to 32 MiB), after which such
    buffers come from the heap, fragment it, and the process's RSS creeps up under a
    steady load. A fixed threshold turns that adaptation off.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_mmap_threshold = -3
        libc.mallopt(m_mmap_threshold, 1 << 20)
    except (OSError, AttributeError):  # not glibc: its allocator decides
        pass


class BackendError(RuntimeError):
    """llama.cpp refused an operation (load, decode, state restore)."""


@dataclass(frozen=True)
class BatchRow:
    token: int
    pos: int
    seq: int
    logits: bool


class LlamaBackend:
    def __init__(
        self,
        model_path: Path,
        *,
        ctx_per_seq: int,
        n_seq: int,
        n_threads: int,
        n_batch: int,
        swa_full: bool = True,
        cpu_variant: str = cpu.AUTO,
    ) -> None:
        self.cpu = load_cpu_backend(cpu_variant)
        if not model_path.is_file():
            raise BackendError(f"model file not found: {model_path}")
        mparams = llama_cpp.llama_model_default_params()
        self.model = llama_cpp.llama_model_load_from_file(str(model_path).encode(), mparams)
        if not self.model:
            raise BackendError(f"llama.cpp could not load {model_path}")
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.n_ctx_train = int(llama_cpp.llama_model_n_ctx_train(self.model))

        cparams = llama_cpp.llama_context_default_params()
        # Non-unified KV: each sequence owns n_ctx / n_seq_max cells, so one long chain
        # can never starve the others.
        cparams.n_ctx = ctx_per_seq * n_seq
        cparams.n_batch = n_batch
        cparams.n_ubatch = n_batch
        cparams.n_seq_max = n_seq
        cparams.n_threads = n_threads
        cparams.n_threads_batch = n_threads
        cparams.kv_unified = False
        # Sliding-window models (Gemma 3, gpt-oss) keep every position of their window
        # layers too, so a chain can be cut back, snapshotted and shared anywhere; the
        # windowed cache keeps only the last window (benchmarks/swa.py: the cost).
        cparams.swa_full = swa_full
        cparams.no_perf = True
        self.ctx = llama_cpp.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            llama_cpp.llama_model_free(self.model)
            raise BackendError("llama.cpp could not create a context")
        self.n_seq = n_seq
        self.n_batch = n_batch
        self.ctx_per_seq = ctx_per_seq
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self._batch = llama_cpp.llama_batch_init(n_batch, 0, n_seq)
        self._piece_buf = ctypes.create_string_buffer(256)

    def close(self) -> None:
        if self.ctx:
            llama_cpp.llama_batch_free(self._batch)
            llama_cpp.llama_free(self.ctx)
            llama_cpp.llama_model_free(self.model)
            self.ctx = None
            self.model = None

    # ----- model facts -------------------------------------------------------------
    def chat_template(self) -> str | None:
        raw = llama_cpp.llama_model_chat_template(self.model, None)
        return raw.decode("utf-8") if raw else None

    def architecture(self) -> str:
        """`general.architecture` of the GGUF ("llama", "gemma3", …; "" if absent)."""
        buf = ctypes.create_string_buffer(128)
        n = llama_cpp.llama_model_meta_val_str(self.model, b"general.architecture", buf, len(buf))
        return buf.value.decode("utf-8", "replace") if n > 0 else ""

    def is_eog(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self.vocab, token))

    def special_text(self, which: str) -> str:
        """Text of the BOS or EOS token ("" if the model has none), for chat templates."""
        token = (llama_cpp.llama_vocab_bos if which == "bos" else llama_cpp.llama_vocab_eos)(
            self.vocab
        )
        if token < 0:
            return ""
        buf = ctypes.create_string_buffer(256)
        n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, True)
        return buf.raw[: max(n, 0)].decode("utf-8", "replace")

    def n_vocab(self) -> int:
        return int(llama_cpp.llama_vocab_n_tokens(self.vocab))

    # ----- text ----------------------------------------------------------------------
    def tokenize(self, text: str, *, parse_special: bool = True) -> list[int]:
        data = text.encode("utf-8")
        cap = len(data) + 8
        buf = (llama_cpp.llama_token * cap)()
        n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, cap, False, parse_special)
        if n < 0:  # buffer too small: -n is the size needed
            cap = -n
            buf = (llama_cpp.llama_token * cap)()
            n = llama_cpp.llama_tokenize(
                self.vocab, data, len(data), buf, cap, False, parse_special
            )
        return list(buf[:n])

    def token_bytes(self, token: int, *, special: bool = False) -> bytes:
        """The token's bytes (engine thread: one shared buffer); `special` spells out
        special tokens."""
        buf = self._piece_buf
        n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        if n < 0:
            big = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self.vocab, token, big, len(big), 0, special)
            return big.raw[:n]
        return buf.raw[:n]

    def token_piece(self, token: int) -> bytes:
        """The token's text with special tokens spelled out, as in a rendered prompt
        (any thread: its own buffer, and it only reads the vocabulary)."""
        buf = ctypes.create_string_buffer(64)
        n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, True)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, True)
        return buf.raw[:n]

    # ----- compute -------------------------------------------------------------------
    def decode(self, rows: Sequence[BatchRow]) -> None:
        """Run one llama_decode over `rows` (at most n_batch). Row i's logits are at index i."""
        b = self._batch
        for i, r in enumerate(rows):
            b.token[i] = r.token
            b.pos[i] = r.pos
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = r.seq
            b.logits[i] = 1 if r.logits else 0
        b.n_tokens = len(rows)
        rc = llama_cpp.llama_decode(self.ctx, b)
        if rc != 0:
            raise BackendError(f"llama_decode failed with code {rc}")

    def logits(self, batch_index: int) -> Any:
        return llama_cpp.llama_get_logits_ith(self.ctx, batch_index)

    # ----- KV memory per sequence ------------------------------------------------------
    def seq_truncate(self, seq: int, keep: int) -> None:
        """Drop every cell of `seq` at position >= keep."""
        if not llama_cpp.llama_memory_seq_rm(self.memory, seq, keep, -1):
            raise BackendError(f"could not truncate sequence {seq} at {keep}")

    def seq_cut(self, seq: int, start: int, end: int) -> None:
        """Remove positions [start, end) of `seq` and move every later cell down by
        end - start (llama.cpp re-rotates their keys at the next decode)."""
        if not llama_cpp.llama_memory_seq_rm(self.memory, seq, start, end):
            raise BackendError(f"could not cut [{start}, {end}) from sequence {seq}")
        llama_cpp.llama_memory_seq_add(self.memory, seq, end, -1, start - end)

    @property
    def can_cut(self) -> bool:
        """Whether this model's memory can shift positions (RoPE models can)."""
        return bool(llama_cpp.llama_memory_can_shift(self.memory))

    def seq_len(self, seq: int) -> int:
        """Tokens the sequence holds (positions 0..n-1; 0 when empty)."""
        return max(int(llama_cpp.llama_memory_seq_pos_max(self.memory, seq)) + 1, 0)

    def seq_copy(self, src: int, dst: int) -> None:
        """Copy all of `src`'s KV into `dst` (truncate afterwards to keep a prefix).

        Through the sequence state, not `llama_memory_seq_cp`: with per-sequence KV
        streams that call only queues the copy (the tensors move at the next decode), so
        a state save or restore of either sequence in the same admission round would see
        or be overwritten by stale data, and `dst`'s KV would differ from its tokens. A
        state round trip is immediate and moves only the cells in use, where the queued
        copy moves the whole stream.
        """
        self.seq_state_set(dst, self.seq_state_get(src))

    def seq_state_get(self, seq: int) -> bytearray:
        """The sequence's KV state, written by llama.cpp straight into the returned buffer
        (no intermediate copies: a 4k-token chain is ~94 MB)."""
        size = llama_cpp.llama_state_seq_get_size(self.ctx, seq)
        out = bytearray(size)
        view = (ctypes.c_uint8 * size).from_buffer(out)
        written = llama_cpp.llama_state_seq_get_data(self.ctx, view, size, seq)
        del view  # release the buffer export before resizing
        if written < size:
            del out[written:]
        return out

    def seq_state_set(self, seq: int, data: bytes | bytearray) -> None:
        src: Any
        if isinstance(data, bytearray):
            src = (ctypes.c_uint8 * len(data)).from_buffer(data)  # no copy
        else:
            src = ctypes.cast(ctypes.c_char_p(data), ctypes.POINTER(ctypes.c_uint8))
        if llama_cpp.llama_state_seq_set_data(self.ctx, src, len(data), seq) == 0:
            raise BackendError(f"could not restore state into sequence {seq}")
