"""What a prompt *mentions* (objects, counts, relations), to warn about what a generator cannot honour.

This is a diagnostic scan for warnings and errors only: it never decides what the generator draws (the
network reads the prompt's tokens). It finds shape words (with their synonyms and plurals), the count
words before them, and spatial phrases, so that ``generate`` can say "the count 'three' and the relation
'beside' are beyond this model" instead of silently dropping them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .grammar import RELATION_WORDS, SHAPE_WORDS, plural

NUMBER_WORDS = {
    "a": 1, "an": 1, "one": 1, "single": 1, "two": 2, "pair": 2, "couple": 2, "three": 3, "four": 4, "five": 5,
    "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "dozen": 12,
    "twenty": 20, "hundred": 100, "thousand": 1000,
}
# spatial words outside the grammar: named in a warning rather than ignored
OTHER_RELATIONS = ("inside", "within", "through", "across", "along", "against", "facing", "leaning on",
                   "hanging from", "inside of", "on the side of", "opposite", "among", "outside")


def _shape_lexicon() -> list[tuple[str, str, bool]]:
    """(word, canonical shape, is plural), longest first so 'pine tree' wins over 'tree'."""
    out = []
    for shape, words in SHAPE_WORDS.items():
        for w in words:
            out.append((w, shape, False))
            out.append((plural(w), shape, True))
    out += [("toruses", "torus", True), ("doughnut", "torus", False)]
    return sorted(set(out), key=lambda x: -len(x[0]))


_LEXICON = _shape_lexicon()
_SHAPE_RE = re.compile(r"\b(" + "|".join(re.escape(w) for w, _, _ in _LEXICON) + r")\b")
_RELATION_PHRASES = sorted(
    [(p, r) for r, ps in RELATION_WORDS.items() for p in ps if p not in ("on", "by", "over")], key=lambda x: -len(x[0])
)


@dataclass
class ObjectMention:
    """One phrase naming objects: its shape word, canonical shape, count and whether it refers back."""

    word: str
    shape: str
    count: int
    phrase: str
    reference: bool = False  # "the red cube": a second mention of an object already named


@dataclass
class Mentions:
    """Everything the scan found in a prompt."""

    objects: list[ObjectMention] = field(default_factory=list)
    relations: list[str] = field(default_factory=list)  # canonical relations, in order
    relation_phrases: list[str] = field(default_factory=list)
    unknown_relations: list[str] = field(default_factory=list)

    @property
    def num_objects(self) -> int:
        """Objects named (references to an object already named do not count)."""
        return sum(o.count for o in self.objects if not o.reference)


_LEADS = ("pair", "couple", "stack", "row", "dozen", "set", "group", "circle", "line")


_BOUNDARY = {"and", ",", "with", "to", "between", "on", "over", "by", *{p.split()[-1] for p, _ in _RELATION_PHRASES}} - {"of", *_LEADS}


def _count_before(words: list[str]) -> tuple[int | None, bool, int]:
    """The count word among the (up to six) words before a noun, whether 'the' makes it a reference, and
    how many words before the noun belong to its phrase."""
    count, reference, taken = None, False, 0
    while taken < min(6, len(words)):
        w = words[len(words) - 1 - taken]
        if w == "of":
            prev = words[len(words) - 2 - taken] if len(words) > taken + 1 else ""
            if prev not in _LEADS:
                break
        elif w in _BOUNDARY:
            break
        taken += 1
        if count is None and not reference:
            if w.isdigit():
                count = int(w)
            elif w in NUMBER_WORDS:
                count = NUMBER_WORDS[w]
            elif w in ("the", "that", "this", "those", "these"):
                reference = True
    return count, reference, taken


def scan_prompt(prompt: str) -> Mentions:
    """Objects (with counts), relations and unknown spatial words that ``prompt`` mentions, in text order."""
    text = " ".join(prompt.lower().replace(",", " , ").split())
    m = Mentions()
    for hit in _SHAPE_RE.finditer(text):
        word = hit.group(1)
        entry = next(e for e in _LEXICON if e[0] == word)
        before = text[: hit.start()].split()
        count, reference, taken = _count_before(before)
        if count is None:
            count = 2 if entry[2] else 1  # a bare plural ("cubes") means more than one
        phrase = " ".join([*before[len(before) - taken :], word])
        m.objects.append(ObjectMention(word, entry[1], count, phrase, reference))
    found = []
    masked = f" {text} "
    for phrase, rel in _RELATION_PHRASES:
        for hit in re.finditer(f"(?<= ){re.escape(phrase)}(?= )", masked):
            found.append((hit.start(), phrase, rel))
        masked = re.sub(f"(?<= ){re.escape(phrase)}(?= )", lambda x: "#" * len(x.group(0)), masked)
    # "on", "over" and "by" alone are relations only before an object phrase
    for phrase, rel in (("on", "on"), ("over", "above"), ("by", "beside")):
        for hit in re.finditer(rf"(?<= ){phrase}(?= (?:an? |the |one |two |three |four |five |\d ))", masked):
            found.append((hit.start(), phrase, rel))
    for _, phrase, rel in sorted(found):
        m.relations.append(rel)
        m.relation_phrases.append(phrase)
    for word in OTHER_RELATIONS:
        if re.search(rf"\b{re.escape(word)}\b", text) and word not in m.relation_phrases:
            m.unknown_relations.append(word)
    return m
