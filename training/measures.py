"""Bytes and words per token: what turns a model's loss into bits per byte and PG19's word-level perplexity, figures
that compare across tokenizers and vocabularies."""

from __future__ import annotations

import numpy as np


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet: the printable character standing for each byte, inverted."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


def token_bytes(tokenizer) -> list[bytes]:
    """The UTF-8 bytes of the text each token id stands for (b"" for special tokens).

    Our tokenizer is byte-level BPE: each character of a token's string stands for one byte of the original text.
    """
    vocab = tokenizer.get_vocab()
    out = [b""] * (max(vocab.values()) + 1)
    special = set(tokenizer.all_special_ids)
    byte_level = type(tokenizer.backend_tokenizer.pre_tokenizer).__name__ == "ByteLevel"
    decoder = _byte_decoder()
    for token, index in vocab.items():
        if index in special:
            continue
        if byte_level and all(c in decoder for c in token):
            out[index] = bytes(decoder[c] for c in token)
        else:
            out[index] = tokenizer.convert_tokens_to_string([token]).encode()
    return out


def token_byte_lengths(tokenizer) -> np.ndarray:
    """UTF-8 bytes each token id stands for (0 for special tokens), for the tokenizer-independent bits per byte."""
    return np.array([len(b) for b in token_bytes(tokenizer)], dtype=np.int64)


WHITESPACE = frozenset(b" \t\n\r\x0b\x0c")  # what `bytes.split()` splits on


def token_word_tables(tokenizer) -> np.ndarray:
    """Per token id, for counting the words of the text a run of tokens stands for (PG19's word-level perplexity).

    A word is a maximal run of non-whitespace bytes (whitespace: space, tab, newline, CR, VT, FF; `bytes.split()`,
    which for PG19's text gives the same count as `str.split()`). Row 0: words starting inside the token (after its
    first byte); row 1: 1 if its first byte is not whitespace (it starts a word when the previous token ends in
    whitespace); row 2: 1 if its last byte is whitespace. Special tokens (EOS between books) count as whitespace.
    """
    rows = []
    for b in token_bytes(tokenizer):
        if not b:
            rows.append((0, 0, 1))
            continue
        inner = sum(1 for i in range(1, len(b)) if b[i] not in WHITESPACE and b[i - 1] in WHITESPACE)
        rows.append((inner, int(b[0] not in WHITESPACE), int(b[-1] in WHITESPACE)))
    return np.array(rows, dtype=np.int64).T


def count_words(blocks: np.ndarray, tables: np.ndarray) -> int:
    """Words of the original text that start in the predicted tokens (targets `blocks[:, 1:]`) of `blocks`."""
    blocks = np.clip(np.asarray(blocks), 0, tables.shape[1] - 1)
    targets, previous = blocks[:, 1:], blocks[:, :-1]
    return int(tables[0][targets].sum() + (tables[1][targets] & tables[2][previous]).sum())
