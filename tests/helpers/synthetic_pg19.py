"""A small PG19-format corpus made on the spot, so that the tests need no data beside the repository.

`write_pg19_folder(path)` writes `train.jsonl`, `validation.jsonl` and `test.jsonl` with PG19's record format
(`short_book_title`, `publication_date`, `url`, `text`, in that order). The books are assembled deterministically
from a hand-written word bank and sentence templates: narration, dialogue, chapter headings, curly or straight
quotes, em dashes, italics in underscores and a few accented words. It is not English, but its letters, words and
punctuation are distributed enough like a Victorian novel's for a 512-token byte-level BPE to learn English-like
merges and for a tiny model to lower its loss within a few steps. Same arguments, same bytes.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

# Word bank, roughly most frequent first within each list (weights fall off as 1/rank).
FUNCTION_OPENERS = ["But", "And", "Then", "Yet", "So", "Now", "When at last", "For a moment", "Presently",
                    "In the morning", "That evening", "After a while", "At length", "Once more", "Still"]
DETERMINERS = ["the", "the", "a", "his", "her", "their", "that", "this", "my", "our", "every", "some", "no", "one"]
PRONOUNS = ["he", "she", "it", "they", "I", "we", "you"]
OBJECT_PRONOUNS = {"he": "him", "she": "her", "it": "it", "they": "them", "I": "me", "we": "us", "you": "you"}
NOUNS = [
    "man", "house", "door", "room", "hand", "face", "lady", "time", "day", "night", "way", "window", "letter",
    "gentleman", "eyes", "heart", "voice", "mother", "father", "street", "fire", "table", "child", "word", "head",
    "world", "town", "garden", "river", "road", "morning", "evening", "family", "friend", "master", "servant",
    "church", "carriage", "horse", "money", "fortune", "truth", "matter", "question", "answer", "mind", "life",
    "death", "name", "book", "paper", "candle", "lamp", "stair", "corner", "chair", "hat", "coat", "glove", "ring",
    "clock", "bell", "gate", "wall", "field", "hill", "wood", "sea", "ship", "rain", "wind", "fog", "snow", "sun",
    "moon", "silence", "possession", "reason", "purpose", "promise", "marriage", "husband", "wife", "daughter",
    "son", "brother", "sister", "uncle", "aunt", "cousin", "doctor", "lawyer", "clergyman", "captain", "stranger",
    "parlour", "kitchen", "library", "study", "village", "parish", "estate", "inheritance", "secret", "journey",
    "coach", "inn", "landlord", "fortnight", "twelvemonth", "shilling", "guinea", "sovereign", "acquaintance",
    "conversation", "circumstance", "opportunity", "situation", "character", "society", "neighbourhood",
]
ADJECTIVES = [
    "old", "young", "little", "great", "good", "dark", "long", "small", "poor", "dear", "strange", "quiet", "cold",
    "grey", "white", "black", "bright", "heavy", "narrow", "gentle", "proud", "silent", "single", "honest", "kind",
    "wretched", "handsome", "agreeable", "respectable", "melancholy", "extraordinary", "tolerable", "amiable",
    "ancient", "solemn", "peculiar", "anxious", "cheerful", "careful", "foolish", "wicked", "distant", "empty",
    "lonely", "ragged", "polite", "sensible", "modest", "sudden", "whole", "certain", "particular", "universal",
]
ADVERBS = ["very", "quite", "almost", "rather", "slowly", "quietly", "suddenly", "at once", "no doubt", "perhaps",
           "indeed", "presently", "gravely", "softly", "hastily", "certainly", "scarcely", "universally", "never"]
# (past tense, takes an object)
VERBS = [
    ("saw", True), ("took", True), ("found", True), ("heard", True), ("knew", True), ("left", True),
    ("opened", True), ("closed", True), ("watched", True), ("followed", True), ("remembered", True),
    ("answered", True), ("touched", True), ("carried", True), ("acknowledged", True), ("observed", True),
    ("received", True), ("considered", True), ("admired", True), ("wrote", True), ("read", True),
    ("went", False), ("came", False), ("stood", False), ("sat", False), ("laughed", False), ("smiled", False),
    ("waited", False), ("turned", False), ("looked", False), ("listened", False), ("paused", False),
    ("returned", False), ("trembled", False), ("sighed", False), ("hesitated", False), ("walked", False),
]
PREPOSITIONS = ["in", "of", "to", "at", "on", "by", "with", "from", "upon", "into", "towards", "beside", "beneath",
                "across", "through", "before", "after", "behind", "without", "among"]
CONJUNCTIONS = ["and", "but", "for", "though", "while", "as", "until", "because", "since", "so that"]
SPEECH_VERBS = ["said", "cried", "answered", "replied", "returned", "whispered", "observed", "asked",
                "exclaimed", "remarked", "added", "continued"]
TITLES = ["Mr.", "Mrs.", "Miss", "Lady", "Sir", "Captain", "Dr.", "Mr.", "Mrs."]
SURNAMES = ["Ashford", "Thornton", "Bramwell", "Fairleigh", "Cobbold", "Penhallow", "Marchbank", "Wetherby",
            "Hollins", "Treadwell", "Grimshaw", "Lovelace", "Pemberton", "Whitcombe", "Dunstable", "Oakley"]
FIRST_NAMES = ["John", "Mary", "Elizabeth", "Thomas", "Margaret", "William", "Anne", "Charles", "Jane", "Henry",
               "Catherine", "Edward", "Harriet", "George", "Emily", "Arthur", "Agnes", "Walter", "Lucy", "Philip"]
PLACES = ["London", "Bath", "Yorkshire", "the Strand", "Cheapside", "Devonshire", "the Continent", "Manchester",
          "Kensington", "the village", "Oxford", "the north", "Brighton", "Cornwall"]
EXCLAMATIONS = ["Upon my word", "Good heavens", "Bless me", "Indeed", "Nonsense", "Pray", "My dear",
                "Depend upon it", "Heaven knows", "Well"]
ACCENTED = ["café", "naïve", "fiancée", "rôle", "début", "protégé", "éclat", "tête-à-tête"]
TITLE_NOUNS = ["House", "Inheritance", "Letter", "Secret", "Parish", "Fortune", "Daughter", "Stranger", "Journey",
               "Marriage", "Lamp", "Estate"]

ROMAN = [(10, "X"), (9, "IX"), (5, "V"), (4, "IV"), (1, "I")]

# Books per split and characters per book (each book stops at the first paragraph end past its length).
DEFAULT_BOOKS = {"train": (3, 100_000), "validation": (1, 30_000), "test": (1, 30_000)}


def _roman(n: int) -> str:
    out = ""
    for value, letters in ROMAN:
        while n >= value:
            out, n = out + letters, n - value
    return out


class _Writer:
    """One book's sentence generator: Zipf-weighted word choice from the bank above, one seeded RNG."""

    def __init__(self, rng: random.Random, curly: bool):
        self.rng = rng
        self.open_q, self.close_q = ("\u201c", "\u201d") if curly else ('"', '"')
        self.apostrophe = "\u2019" if curly else "'"
        self.cast = [f"{rng.choice(TITLES)} {rng.choice(SURNAMES)}" for _ in range(5)] + rng.sample(FIRST_NAMES, 4)
        self._weights: dict[int, list[float]] = {}

    def pick(self, words: list):
        weights = self._weights.setdefault(len(words), [1.0 / (rank + 1) for rank in range(len(words))])
        return self.rng.choices(words, weights)[0]

    def noun_phrase(self) -> str:
        r = self.rng.random()
        if r < 0.18:
            return self.pick(self.cast)
        det, noun = self.pick(DETERMINERS), self.pick(NOUNS)
        if r < 0.55:
            adjective = self.pick(ADJECTIVES)
            if det in ("a", "one") and adjective[0] in "aeiou":
                det = "an" if det == "a" else det
            return f"{det} {adjective} {noun}"
        if det == "a" and noun[0] in "aeiou":
            det = "an"
        if r < 0.62:
            return f"{det} {noun} of {self.pick(self.cast)}" if self.rng.random() < 0.5 else \
                f"{self.pick(self.cast)}{self.apostrophe}s {noun}"
        return f"{det} {noun}"

    def subject(self) -> str:
        return self.pick(PRONOUNS) if self.rng.random() < 0.35 else self.noun_phrase()

    def clause(self) -> str:
        subject = self.subject()
        verb, transitive = self.pick(VERBS)
        r = self.rng.random()
        if r < 0.15:
            predicate = f"was {self.pick(ADVERBS)} {self.pick(ADJECTIVES)}" if subject not in ("they", "we", "you") \
                else f"were {self.pick(ADJECTIVES)}"
        elif r < 0.25:
            predicate = f"had {self.pick(['never', 'already', 'long', 'once'])} {verb} " + (
                self.noun_phrase() if transitive else self.pick(PREPOSITIONS) + " " + self.noun_phrase())
        elif transitive:
            predicate = f"{verb} {self.noun_phrase()}"
        else:
            predicate = verb if self.rng.random() < 0.3 else f"{verb} {self.pick(ADVERBS)}"
        if self.rng.random() < 0.6:
            predicate += f" {self.pick(PREPOSITIONS)} {self.noun_phrase() if self.rng.random() < 0.8 else self.pick(PLACES)}"
        return f"{subject} {predicate}"

    def sentence(self) -> str:
        r = self.rng.random()
        text = self.clause()
        if r < 0.35:
            text += f", {self.pick(CONJUNCTIONS)} {self.clause()}"
        elif r < 0.45:
            text += f"\u2014{self.clause()}"
        if self.rng.random() < 0.15:
            text = f"{self.pick(FUNCTION_OPENERS)} {text}"
        if self.rng.random() < 0.04:
            words = text.split(" ")
            i = self.rng.randrange(len(words))
            words[i] = f"_{words[i]}_" if self.rng.random() < 0.6 else self.pick(ACCENTED)
            text = " ".join(words)
        return text[0].upper() + text[1:] + self.rng.choice(".....!")

    def speech(self) -> str:
        speaker, verb = self.pick(self.cast), self.pick(SPEECH_VERBS)
        first = self.clause()
        if self.rng.random() < 0.3:
            first = f"{self.pick(EXCLAMATIONS)}, {first}"
        first = first[0].upper() + first[1:]
        mark = "?" if verb == "asked" else self.rng.choice([",", ",", "!"])
        line = f"{self.open_q}{first}{mark}{self.close_q} {verb} {speaker}"
        if self.rng.random() < 0.5:
            rest = self.clause()
            line += f"; {self.open_q}{rest[0].upper() + rest[1:]}.{self.close_q}"
        else:
            line += "."
        return line

    def paragraph(self) -> str:
        if self.rng.random() < 0.3:
            return self.speech()
        return " ".join(self.sentence() for _ in range(self.rng.randint(2, 7)))


def make_book(seed: str, length: int) -> str:
    """About `length` characters of text for one book (whole paragraphs, PG-style blank lines between them)."""
    rng = random.Random(seed)
    writer = _Writer(rng, curly=rng.random() < 0.5)
    parts, size, chapter = [], 0, 0
    while size < length:
        if chapter == 0 or rng.random() < 0.02:
            chapter += 1
            heading = f"CHAPTER {_roman(chapter)}.\n\n{writer.pick(ADJECTIVES).upper()} {writer.pick(NOUNS).upper()}"
            parts.append(("\n\n" if parts else "") + heading)
        paragraph = writer.paragraph()
        parts.append(paragraph)
        size += len(paragraph) + 2
    return "\n\n".join(parts) + "\n"


def make_records(split: str, books: int, length: int) -> list[dict]:
    records = []
    for i in range(books):
        rng = random.Random(f"title-{split}-{i}")
        title = f"The {rng.choice(ADJECTIVES).title()} {rng.choice(TITLE_NOUNS)}"
        records.append({
            "short_book_title": title,
            "publication_date": 1837 + rng.randrange(65),
            "url": f"https://example.org/synthetic-pg19/{split}/{i}",
            "text": make_book(f"{split}-{i}", length),
        })
    return records


def write_pg19_folder(folder: Path, books: dict[str, tuple[int, int]] | None = None, suffix: str = ".jsonl") -> Path:
    """Write `<split>.jsonl` files of generated books into `folder`. `books`: split -> (number, characters)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for split, (count, length) in (books or DEFAULT_BOOKS).items():
        lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in make_records(split, count, length))
        if suffix.endswith(".gz"):
            import gzip

            with gzip.GzipFile(folder / f"{split}{suffix}", "wb", mtime=0) as f:
                f.write(lines.encode("utf-8"))
        else:
            (folder / f"{split}{suffix}").write_text(lines, encoding="utf-8")
    return folder


GUTENBERG_HEADER = """\ufeffThe Project Gutenberg EBook of {title}, by A. Synthetic Author\r
\r
This eBook is for the use of anyone anywhere at no cost and with\r
almost no restrictions whatsoever.\r
\r
Title: {title}\r
\r
Author: A. Synthetic Author\r
\r
*** START OF THIS PROJECT GUTENBERG EBOOK {upper} ***\r
\r
"""
GUTENBERG_FOOTER = """\r
\r
End of the Project Gutenberg EBook of {title}, by A. Synthetic Author\r
\r
*** END OF THIS PROJECT GUTENBERG EBOOK {upper} ***\r
\r
***** This file should be named 12345-0.txt or 12345-0.zip *****\r
*** START: FULL LICENSE ***\r
THE FULL PROJECT GUTENBERG LICENSE\r
"""


def gutenberg_txt(title: str, body: str) -> str:
    """`body` wrapped as a Project Gutenberg `.txt` file is: byte-order mark, CRLF lines, licence header with a
    `Title:` line and `*** START OF ... ***`, then `*** END OF ... ***` and the licence."""
    return (GUTENBERG_HEADER.format(title=title, upper=title.upper()) + body.replace("\n", "\r\n")
            + GUTENBERG_FOOTER.format(title=title, upper=title.upper()))


def write_txt_books(folder: Path, books: int = 5, length: int = 30_000, gutenberg: bool = True,
                    layout: dict[str, int] | None = None) -> Path:
    """`books` generated novels as `.txt` files named after their titles (`The_Grey_Letter.txt`), each wrapped in a
    Gutenberg header and footer when `gutenberg`. `layout` (split -> number of books) writes `train/`, `validation/`
    and `test/` subfolders instead of a flat folder. Returns `folder`."""
    folder = Path(folder)
    plan = [(split, i) for split, n in (layout or {"": books}).items() for i in range(n)]
    for k, (split, i) in enumerate(plan):
        rng = random.Random(f"txt-title-{k}")
        title = f"The {rng.choice(ADJECTIVES).title()} {rng.choice(TITLE_NOUNS)} {_roman(k + 1)}"
        body = make_book(f"txt-{k}", length)
        target = folder / split if split else folder
        target.mkdir(parents=True, exist_ok=True)
        text = gutenberg_txt(title, body) if gutenberg else body
        (target / (title.replace(" ", "_") + ".txt")).write_bytes(text.encode("utf-8"))
    return folder
