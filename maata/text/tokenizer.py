"""A small trainable subword tokenizer for Telugu (with English, in Latin or Telugu script).

Pure Python, no native dependencies. The design, in order of application:

1. **NFC.** Text is NFC-normalised (lossless for NFC input). Spelling normalisation
   (numbers, abbreviations, nukta variants, ...) is the text normaliser's job and runs before.
2. **Grapheme clusters.** Text is split into extended grapheme clusters with Telugu's
   conjunct rule (Unicode 15.1 GB9c): a consonant, virama (optionally with ZWJ/ZWNJ) and the
   next consonant stay together, as do vowel signs, anusvara/visarga/candrabindu, nukta and
   other combining marks. An akshara like ``స్త్రీ`` or ``న్‌`` is one cluster.
3. **Pre-splitting into chunks.** Runs of letters of one script (Telugu, Latin, other) form
   a word; digits and punctuation stand alone; a space becomes ``▁`` at the start of the
   following chunk (SentencePiece style), so decoding restores every space exactly.
4. **BPE over clusters.** Clusters are atomic: the vocabulary holds characters, frequent
   multi-character clusters, and merges that only ever concatenate whole clusters. Training
   is greedy by frequency over both kinds of entry (adding a cluster, merging a pair), so the
   budget goes wherever it saves the most tokens.
5. **Fallback.** A cluster outside the vocabulary is spelled with character tokens, and a
   character outside it with its UTF-8 **bytes** (``<0x..>`` tokens), so any string encodes
   and decodes back exactly. (With ``byte_fallback=False`` unknown characters become UNK.)

Ids: 0..4 are the specials (PAD, BOS, EOS, EPAD = "no text this frame" for the speech LM's
text stream, UNK), 5..260 the 256 bytes, then the learned pieces. Special tokens are never
parsed out of text: ``"<epad>"`` in a string is just text; add specials by id.
"""

from __future__ import annotations

import heapq
import json
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

PAD, BOS, EOS, EPAD, UNK = "<pad>", "<bos>", "<eos>", "<epad>", "<unk>"
SPECIALS: tuple[str, ...] = (PAD, BOS, EOS, EPAD, UNK)
PAD_ID, BOS_ID, EOS_ID, EPAD_ID, UNK_ID = range(len(SPECIALS))
BYTE_OFFSET = len(SPECIALS)  # ids BYTE_OFFSET + b for byte b
N_BASE = BYTE_OFFSET + 256  # first learned id
SPACE = "\u2581"  # ▁ marks a space before a chunk
ZWJ, ZWNJ = "\u200d", "\u200c"
VIRAMA = "\u0c4d"
FORMAT = "maata-bpe"
VERSION = 1


class TokenizerError(ValueError):
    """A tokenizer file, training setting or id that cannot be used."""


# -- grapheme clusters ------------------------------------------------------------------------------
def is_telugu_consonant(ch: str) -> bool:
    o = ord(ch)
    return 0x0C15 <= o <= 0x0C39 or 0x0C58 <= o <= 0x0C5A or o == 0x0C5D


def _extends(ch: str) -> bool:
    """Characters that never start a cluster of their own after a base (GB9/GB9a: marks, ZWJ, ZWNJ)."""
    return ch in (ZWJ, ZWNJ) or unicodedata.category(ch) in ("Mn", "Mc", "Me")


def graphemes(text: str) -> list[str]:
    """Split text into grapheme clusters, keeping Telugu aksharas (conjuncts included) whole."""
    out: list[str] = []
    cur = ""
    for ch in text:
        if cur:
            if _extends(ch) or (cur[-1] == "\r" and ch == "\n"):
                cur += ch
                continue
            if is_telugu_consonant(ch):
                tail = cur.rstrip(ZWJ + ZWNJ)
                if tail.endswith(VIRAMA) and len(tail) >= 2 and is_telugu_consonant(tail[-2]):
                    cur += ch  # conjunct: C + virama [+ ZWJ/ZWNJ] + C
                    continue
            if cur[-1] == ZWJ and unicodedata.category(ch) == "So" and len(cur) >= 2 \
                    and unicodedata.category(cur[0]) == "So":
                cur += ch  # emoji ZWJ sequence (GB11, simplified)
                continue
            out.append(cur)
        cur = ch
    if cur:
        out.append(cur)
    return out


def _script(cluster: str) -> str:
    c = cluster[0]
    if c == " ":
        return "space"
    if c == SPACE:
        return "raw"  # a literal ▁ is always spelled in bytes, so ▁ in pieces always means " "
    if c.isspace():
        return "ws"
    cat = unicodedata.category(c)
    if cat == "Nd":
        return "digit"
    if cat[0] in "LM":
        if "\u0c00" <= c <= "\u0c7f":
            return "te"
        if c < "\u0250":
            return "latin"
        return "letter"
    return "punct"


Chunk = tuple[bool, tuple[str, ...]]  # (a space precedes it, its clusters)


def pre_split(text: str) -> list[Chunk]:
    """NFC text -> chunks ``(space_before, clusters)``; a lone space is ``(True, ())``."""
    chunks: list[Chunk] = []
    cur: list[str] = []
    cur_space = False
    cur_script: str | None = None
    space = False
    for cl in graphemes(text):
        s = _script(cl)
        if s == "space":
            if cur:
                chunks.append((cur_space, tuple(cur)))
                cur, cur_script = [], None
            if space:
                chunks.append((True, ()))
            space = True
            continue
        if s in ("te", "latin", "letter") and s == cur_script and not space:
            cur.append(cl)
            continue
        if cur:
            chunks.append((cur_space, tuple(cur)))
        cur, cur_space = [cl], space
        cur_script = s if s in ("te", "latin", "letter") else None
        space = False
    if cur:
        chunks.append((cur_space, tuple(cur)))
    if space:
        chunks.append((True, ()))
    return chunks


def _default_alphabet() -> list[str]:
    """Characters always in the vocabulary: assigned Telugu code points, printable ASCII, a few more."""
    chars = [chr(o) for o in range(0x0C00, 0x0C80) if unicodedata.category(chr(o)) != "Cn"]
    chars += [chr(o) for o in range(0x21, 0x7F)]
    chars += ["\n", "\t", ZWJ, ZWNJ, "\u0964", "\u0965", "\u2013", "\u2014", "\u2018", "\u2019", "\u201c",
              "\u201d", "\u2026", "\u20b9"]
    return chars


# -- the tokenizer --------------------------------------------------------------------------------------
class Tokenizer:
    """Byte-fallback BPE over grapheme clusters. Build with ``train`` or ``load``."""

    def __init__(self, pieces: Sequence[str], merges: Sequence[tuple[str, str]], byte_fallback: bool = True):
        """pieces: the learned vocabulary (ids from N_BASE on); merges: pairs in rank order."""
        self.pieces = list(pieces)
        self.merges = [tuple(m) for m in merges]
        self.byte_fallback = byte_fallback
        self.piece_id: dict[str, int] = {}
        for i, p in enumerate(self.pieces):
            if not isinstance(p, str) or not p:
                raise TokenizerError(f"piece {i} must be a non-empty string, got {p!r}")
            self.piece_id.setdefault(p, N_BASE + i)
        if SPACE not in self.piece_id:
            raise TokenizerError(f"the vocabulary must contain the space marker {SPACE!r}")
        self.ranks: dict[tuple[str, str], int] = {}
        for r, (a, b) in enumerate(self.merges):
            if a + b not in self.piece_id:
                raise TokenizerError(f"merge {r} ({a!r}, {b!r}) makes {a + b!r}, which is not in the vocabulary")
            self.ranks.setdefault((a, b), r)
        self._cache: dict[Chunk, list[int]] = {}

    # -- training ---------------------------------------------------------------------------------------
    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 2000, min_frequency: int = 2,
              byte_fallback: bool = True) -> Tokenizer:
        """Learn a vocabulary of ``vocab_size`` ids (specials and bytes included) from ``texts``.

        Characters seen at least ``min_frequency`` times (and a default alphabet of Telugu,
        ASCII and common punctuation) are always in; the rest of the budget goes, greedily by
        count, to multi-character clusters and to merges of adjacent pieces. Deterministic.
        """
        if not isinstance(vocab_size, int) or vocab_size < N_BASE + 1:
            raise TokenizerError(f"vocab_size must be an integer > {N_BASE} (specials + bytes), got {vocab_size!r}")
        if min_frequency < 1:
            raise TokenizerError(f"min_frequency must be ≥ 1, got {min_frequency}")
        chunk_counts: Counter[Chunk] = Counter()
        for t in texts:
            if not isinstance(t, str):
                raise TokenizerError(f"training texts must be strings, got {type(t).__name__}")
            chunk_counts.update(pre_split(unicodedata.normalize("NFC", t)))

        char_counts: Counter[str] = Counter()
        for (_, clusters), n in chunk_counts.items():
            for cl in clusters:
                for ch in cl:
                    char_counts[ch] += n
        alphabet = [SPACE] + _default_alphabet()
        known = set(alphabet)
        extra = sorted((c for c, n in char_counts.items() if n >= min_frequency and c not in known and c != SPACE),
                       key=lambda c: (-char_counts[c], c))
        alphabet += extra
        budget = vocab_size - N_BASE
        if len(alphabet) > budget:
            raise TokenizerError(f"vocab_size {vocab_size} leaves {budget} learned ids, fewer than the "
                                 f"{len(alphabet)} characters of the alphabet; use ≥ {N_BASE + len(alphabet)}")
        pieces = list(alphabet)
        vocab = set(pieces)

        # words: unit pieces (str) or barriers (clusters not yet in the vocabulary, as 1-tuples)
        words: list[list] = []
        counts: list[int] = []
        for (space, clusters), n in chunk_counts.items():
            words.append([SPACE] * space + [cl if _is_unit(cl, vocab) else (cl,) for cl in clusters])
            counts.append(n)
        ranks: dict[tuple[str, str], int] = {}

        pair_count: Counter[tuple[str, str]] = Counter()
        pair_where: dict[tuple[str, str], set[int]] = {}
        cluster_count: Counter[str] = Counter()
        cluster_where: dict[str, set[int]] = {}

        def add_pairs(w: int, sign: int) -> list[tuple[str, str]]:
            word, n = words[w], counts[w]
            touched = []
            for a, b in zip(word, word[1:]):
                if isinstance(a, str) and isinstance(b, str):
                    pair_count[(a, b)] += sign * n
                    if sign > 0:
                        pair_where.setdefault((a, b), set()).add(w)
                    touched.append((a, b))
            return touched

        for w, word in enumerate(words):
            add_pairs(w, 1)
            for s in word:
                if isinstance(s, tuple) and SPACE not in s[0] and all(ch in vocab for ch in s[0]):  # promotable
                    cluster_count[s[0]] += counts[w]
                    cluster_where.setdefault(s[0], set()).add(w)

        # heap entries: (-count, kind, a, b); kind 0 = add cluster a, 1 = merge (a, b)
        heap = [(-n, 1, a, b) for (a, b), n in pair_count.items()]
        heap += [(-n, 0, c, "") for c, n in cluster_count.items()]
        heapq.heapify(heap)
        merges: list[tuple[str, str]] = []
        while len(pieces) < budget and heap:
            neg, kind, a, b = heapq.heappop(heap)
            current = cluster_count.get(a, 0) if kind == 0 else pair_count.get((a, b), 0)
            if current != -neg:
                if current > 0:
                    heapq.heappush(heap, (-current, kind, a, b))
                continue
            if current < min_frequency:
                break
            if kind == 0:
                pieces.append(a)
                vocab.add(a)
                cluster_count[a] = 0
                for w in cluster_where.pop(a):
                    add_pairs(w, -1)
                    # the new unit may sit next to pairs merged earlier: apply those merges (as encode does)
                    words[w] = _apply_merges([a if s == (a,) else s for s in words[w]], ranks)
                    for p in add_pairs(w, 1):
                        heapq.heappush(heap, (-pair_count[p], 1, *p))
                continue
            new = a + b
            ranks[(a, b)] = len(merges)
            merges.append((a, b))
            if new not in vocab:
                pieces.append(new)
                vocab.add(new)
            for w in sorted(pair_where.pop((a, b), ())):
                word = words[w]
                if not any(x == a and y == b for x, y in zip(word, word[1:])):
                    continue
                add_pairs(w, -1)
                words[w] = _merge_pair(word, a, b, new)
                for p in add_pairs(w, 1):
                    heapq.heappush(heap, (-pair_count[p], 1, *p))
            pair_count[(a, b)] = 0
        return cls(pieces, merges, byte_fallback)

    # -- encoding -------------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return N_BASE + len(self.pieces)

    def __len__(self) -> int:
        return self.vocab_size

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        if not isinstance(text, str):
            raise TokenizerError(f"encode takes a string, got {type(text).__name__}")
        ids = [BOS_ID] if add_bos else []
        for chunk in pre_split(unicodedata.normalize("NFC", text)):
            got = self._cache.get(chunk)
            if got is None:
                got = self._encode_chunk(chunk)
                if len(self._cache) < 100_000:
                    self._cache[chunk] = got
            ids.extend(got)
        if add_eos:
            ids.append(EOS_ID)
        return ids

    def encode_batch(self, texts: Sequence[str], add_bos: bool = False, add_eos: bool = False) -> list[list[int]]:
        return [self.encode(t, add_bos, add_eos) for t in texts]

    def _spell(self, cluster: str) -> list[int]:
        """A cluster outside the vocabulary: character tokens, else bytes (or UNK)."""
        out: list[int] = []
        for ch in cluster:
            i = self.piece_id.get(ch) if ch != SPACE else None  # a literal ▁ always goes in bytes
            if i is not None:
                out.append(i)
            elif self.byte_fallback:
                out.extend(BYTE_OFFSET + b for b in ch.encode("utf-8"))
            else:
                out.append(UNK_ID)
        return out

    def _encode_chunk(self, chunk: Chunk) -> list[int]:
        space, clusters = chunk
        units = [SPACE] * space + [cl if _is_unit(cl, self.piece_id) else (cl,) for cl in clusters]
        out: list[int] = []
        for u in _apply_merges(units, self.ranks):
            out.extend(self._spell(u[0]) if isinstance(u, tuple) else [self.piece_id[u]])
        return out

    # -- decoding -------------------------------------------------------------------------------------
    def id_to_piece(self, i: int) -> str:
        if not 0 <= i < self.vocab_size:
            raise TokenizerError(f"token id {i} is outside the vocabulary of {self.vocab_size}")
        if i < BYTE_OFFSET:
            return SPECIALS[i]
        if i < N_BASE:
            return f"<0x{i - BYTE_OFFSET:02X}>"
        return self.pieces[i - N_BASE]

    def piece_to_id(self, piece: str) -> int:
        if piece in SPECIALS:
            return SPECIALS.index(piece)
        if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            return BYTE_OFFSET + int(piece[3:5], 16)
        return self.piece_id.get(piece, UNK_ID)

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        """Ids -> text. Byte tokens are joined and UTF-8-decoded (invalid sequences become U+FFFD)."""
        parts: list[str] = []
        buf = bytearray()
        for i in ids:
            i = int(i)
            if not 0 <= i < self.vocab_size:
                raise TokenizerError(f"token id {i} is outside the vocabulary of {self.vocab_size}")
            if BYTE_OFFSET <= i < N_BASE:
                buf.append(i - BYTE_OFFSET)
                continue
            if buf:
                parts.append(buf.decode("utf-8", errors="replace"))
                buf.clear()
            if i < BYTE_OFFSET:
                if not skip_special:
                    parts.append(SPECIALS[i])
                continue
            parts.append(self.pieces[i - N_BASE].replace(SPACE, " "))
        if buf:
            parts.append(buf.decode("utf-8", errors="replace"))
        return "".join(parts)

    # -- files ------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "byte_fallback": self.byte_fallback,
                "specials": list(SPECIALS), "pieces": self.pieces, "merges": [list(m) for m in self.merges]}

    @classmethod
    def from_dict(cls, data: dict) -> Tokenizer:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            got = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise TokenizerError(f"not a {FORMAT} tokenizer (format={got!r})")
        if data.get("version") != VERSION:
            raise TokenizerError(f"unsupported tokenizer version {data.get('version')!r} (this code reads {VERSION})")
        if list(data.get("specials", [])) != list(SPECIALS):
            raise TokenizerError(f"special tokens {data.get('specials')!r} differ from {list(SPECIALS)}")
        try:
            merges = [(a, b) for a, b in data["merges"]]
            return cls(list(data["pieces"]), merges, bool(data.get("byte_fallback", True)))
        except (KeyError, TypeError, ValueError) as e:
            if isinstance(e, TokenizerError):
                raise
            raise TokenizerError(f"malformed tokenizer data: {e}") from e

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), ensure_ascii=False, indent=0), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise TokenizerError(f"{path}: not JSON ({e})") from e
        return cls.from_dict(data)


# -- streaming detokenisation --------------------------------------------------------------------------
class TextStream:
    """Turns a stream of token ids (the speech LM's inner monologue, one per frame) into text
    as it comes: :meth:`push` returns the new text for one id. Specials (EPAD, PAD, ...) give
    nothing; byte tokens are held until they complete a UTF-8 character (a lone or broken
    sequence comes out as U+FFFD once a non-byte token or :meth:`flush` ends it). Every other
    id gives ``tokenizer.decode([id])``. The generation service keeps one per call and sends
    these very pieces to a browser, so what ``maata talk`` prints is what the page shows.
    Joined, the pieces equal ``tokenizer.decode(ids)`` wherever the byte runs are well-formed
    UTF-8."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self._bytes = bytearray()

    def push(self, token: int) -> str:
        token = int(token)
        if not 0 <= token < self.tokenizer.vocab_size:
            raise TokenizerError(f"token id {token} is outside the vocabulary of {self.tokenizer.vocab_size}")
        if BYTE_OFFSET <= token < N_BASE:
            self._bytes.append(token - BYTE_OFFSET)
            try:
                text = self._bytes.decode("utf-8")
            except UnicodeDecodeError as e:
                if e.reason == "unexpected end of data" and len(self._bytes) < 4:
                    return ""  # wait for the rest of the character
                text = self._bytes.decode("utf-8", errors="replace")
            self._bytes.clear()
            return text
        return self.flush() + (self.tokenizer.decode([token]) if token >= N_BASE else "")

    def flush(self) -> str:
        """Whatever bytes are held, decoded (U+FFFD for an incomplete character)."""
        text = self._bytes.decode("utf-8", errors="replace") if self._bytes else ""
        self._bytes.clear()
        return text


def _is_unit(cluster: str, vocab) -> bool:
    """A cluster that is a BPE unit: in the vocabulary (a literal ▁ never is: it goes in bytes)."""
    return cluster in vocab and SPACE not in cluster


def _apply_merges(units: list, ranks: dict[tuple[str, str], int]) -> list:
    """BPE: merge the adjacent pair of lowest rank until none is left. Barriers (tuples) never merge."""
    while len(units) > 1:
        best, at = None, -1
        for i, (a, b) in enumerate(zip(units, units[1:])):
            if isinstance(a, str) and isinstance(b, str):
                r = ranks.get((a, b))
                if r is not None and (best is None or r < best):
                    best, at = r, i
        if best is None:
            break
        a, b = units[at], units[at + 1]
        units = _merge_pair(units, a, b, a + b)
    return units


def _merge_pair(seq: list, a: str, b: str, new: str) -> list:
    """Replace every non-overlapping (a, b) in seq, left to right, with ``new``."""
    out = []
    i, n = 0, len(seq)
    while i < n:
        if i + 1 < n and seq[i] == a and seq[i + 1] == b:
            out.append(new)
            i += 2
        else:
            out.append(seq[i])
            i += 1
    return out
