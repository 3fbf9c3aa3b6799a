"""The scene grammar of the generator, round 2: words, scene graphs, captions and held-out validation sets.

A scene is up to five objects in one to three *groups* (``three red cubes`` is one group of count 3),
related by one of 13 relations. The grammar writes training captions (many templates and phrasings per
scene); it never decides what a user's prompt means at sampling time: the network reads the prompt's tokens.

Vocabulary:

- ``COLOUR_RGB``: 100+ colour names with their real RGB (CSS/X11 values; ``light X`` / ``dark X`` for
  the basic hues). The twelve basic words keep the values the first composer used (between CSS's pure
  primaries and what the words mean in common use), so the shipped model is judged on what it learned.
  Deviations from CSS, where the CSS value is not what the word means to most people: ``azure`` is the
  colour-wheel azure (CSS ``azure`` is nearly white), ``lavender`` is floral lavender, ``dark gray`` is
  darker than ``gray`` (CSS has it the other way round).
- ``SHAPE_WORDS``: canonical shape -> synonyms (``ball``, ``box``, ``donut``, ``pill``, …).
- ``SIZE_SCALE``: size words -> scale; ``COUNT_WORDS``: 1-5.
- ``RELATION_WORDS``: 13 canonical relations -> phrasings (``on``, ``above``, ``under``, ``beside``,
  ``near``, ``left``, ``right``, ``front``, ``behind``, ``between``, ``around``, ``row``, ``stack``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

MAX_OBJECTS = 5

# ---------------------------------------------------------------- colours
_BASIC = {  # the first composer's values (0-1)
    "red": (0.85, 0.1, 0.1),
    "orange": (1.0, 0.55, 0.05),
    "yellow": (0.95, 0.9, 0.1),
    "green": (0.15, 0.65, 0.2),
    "blue": (0.1, 0.25, 0.9),
    "purple": (0.55, 0.15, 0.75),
    "pink": (1.0, 0.55, 0.75),
    "brown": (0.5, 0.3, 0.12),
    "black": (0.06, 0.06, 0.06),
    "white": (0.95, 0.95, 0.95),
    "gray": (0.5, 0.5, 0.5),
    "cyan": (0.1, 0.85, 0.9),
}
BASIC_COLOURS = tuple(_BASIC)

_CSS_HEX = {
    # reds
    "crimson": "DC143C", "scarlet": "FF2400", "maroon": "800000", "dark red": "8B0000", "firebrick": "B22222",
    "tomato": "FF6347", "coral": "FF7F50", "salmon": "FA8072", "light salmon": "FFA07A", "light coral": "F08080",
    "indian red": "CD5C5C", "burgundy": "800020", "rose": "FF007F", "ruby": "E0115F", "cherry": "DE3163",
    # oranges and yellows
    "dark orange": "FF8C00", "amber": "FFBF00", "tangerine": "F28500", "peach": "FFDAB9", "apricot": "FBCEB1",
    "gold": "FFD700", "lemon": "FFF700", "mustard": "FFDB58", "khaki": "F0E68C", "light yellow": "FFFFE0",
    "goldenrod": "DAA520", "beige": "F5F5DC", "cream": "FFFDD0", "ivory": "FFFFF0",
    # greens
    "lime": "00FF00", "lime green": "32CD32", "light green": "90EE90", "dark green": "006400",
    "forest green": "228B22", "sea green": "2E8B57", "olive": "808000", "olive green": "6B8E23",
    "emerald": "50C878", "mint": "98FF98", "jade": "00A86B", "chartreuse": "7FFF00", "spring green": "00FF7F",
    "pale green": "98FB98", "yellow green": "9ACD32", "sage": "BCB88A", "dark olive green": "556B2F",
    # cyans and teals
    "teal": "008080", "turquoise": "40E0D0", "aquamarine": "7FFFD4", "aqua": "00FFFF", "dark cyan": "008B8B",
    "light cyan": "E0FFFF", "dark turquoise": "00CED1",
    # blues
    "navy": "000080", "royal blue": "4169E1", "sky blue": "87CEEB", "light blue": "ADD8E6", "dark blue": "00008B",
    "midnight blue": "191970", "steel blue": "4682B4", "cornflower blue": "6495ED", "dodger blue": "1E90FF",
    "deep sky blue": "00BFFF", "powder blue": "B0E0E6", "cobalt": "0047AB", "azure": "007FFF",
    "sapphire": "0F52BA", "cerulean": "007BA7", "baby blue": "89CFF0", "indigo": "4B0082",
    "medium blue": "0000CD", "slate blue": "6A5ACD",
    # purples and pinks
    "violet": "EE82EE", "lavender": "B57EDC", "lilac": "C8A2C8", "plum": "DDA0DD", "orchid": "DA70D6",
    "magenta": "FF00FF", "fuchsia": "FF00FF", "dark violet": "9400D3", "dark magenta": "8B008B", "mauve": "E0B0FF",
    "amethyst": "9966CC", "medium purple": "9370DB", "thistle": "D8BFD8", "eggplant": "614051",
    "hot pink": "FF69B4", "deep pink": "FF1493", "light pink": "FFB6C1",
    # browns
    "chocolate": "D2691E", "sienna": "A0522D", "saddle brown": "8B4513", "tan": "D2B48C",
    "sandy brown": "F4A460", "rosy brown": "BC8F8F", "copper": "B87333", "bronze": "CD7F32", "rust": "B7410E",
    "coffee": "6F4E37", "wheat": "F5DEB3", "chestnut": "954535", "mahogany": "C04000",
    # grays, whites, blacks
    "grey": "808080", "silver": "C0C0C0", "light gray": "D3D3D3", "light grey": "D3D3D3", "dark gray": "404040",
    "dark grey": "404040", "charcoal": "36454F", "slate gray": "708090", "snow": "FFFAFA", "snow white": "FFFAFA",
}


def _hex(h: str) -> tuple[float, float, float]:
    return tuple(int(h[i : i + 2], 16) / 255.0 for i in (0, 2, 4))  # type: ignore[return-value]


def _shade(rgb, light: bool) -> tuple[float, float, float]:
    """``light X``: 45 % of the way to white; ``dark X``: 55 % of the brightness."""
    c = np.asarray(rgb, dtype=float)
    out = c + 0.45 * (1.0 - c) if light else 0.55 * c
    return tuple(float(x) for x in out)  # type: ignore[return-value]


def _palette() -> dict[str, tuple[float, float, float]]:
    pal = {k: tuple(map(float, v)) for k, v in _BASIC.items()}
    pal.update({k: _hex(v) for k, v in _CSS_HEX.items()})
    pal["grey"] = pal["gray"]
    for base in ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "cyan"):
        for light in (True, False):
            name = f"{'light' if light else 'dark'} {base}"
            pal.setdefault(name, _shade(pal[base], light))
    return pal


COLOUR_RGB: dict[str, tuple[float, float, float]] = _palette()
COLOUR_NAMES = tuple(COLOUR_RGB)


def colour_rgb(name: str) -> tuple[float, float, float]:
    """The RGB (0-1) of a colour name of the grammar."""
    return COLOUR_RGB[name]


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """CIELAB (D65) of sRGB colours in [0, 1] (…×3)."""
    c = np.clip(np.asarray(rgb, dtype=np.float64), 0, 1)
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    m = np.array([[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]])
    xyz = lin @ m.T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


def delta_e(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """CIE76 colour difference ΔE*ab between sRGB colours (…×3)."""
    return np.linalg.norm(srgb_to_lab(a) - srgb_to_lab(b), axis=-1)


# ---------------------------------------------------------------- shapes, sizes, counts
SHAPE_WORDS: dict[str, tuple[str, ...]] = {
    "sphere": ("sphere", "ball", "orb", "globe"),
    "cube": ("cube", "box", "block"),
    "cylinder": ("cylinder", "tube", "drum", "column"),
    "cone": ("cone",),
    "torus": ("torus", "donut", "doughnut", "ring"),
    "pyramid": ("pyramid",),
    "capsule": ("capsule", "pill"),
    "table": ("table", "desk"),
    "chair": ("chair",),
    "lamp": ("lamp",),
    "tree": ("tree", "pine tree"),
    "snowman": ("snowman",),
    "house": ("house", "cottage"),
}
_PLURAL = {"torus": "tori", "box": "boxes", "snowman": "snowmen", "cottage": "cottages", "globe": "globes"}


def plural(word: str) -> str:
    """English plural of a shape word (``box`` -> ``boxes``, ``torus`` -> ``tori``)."""
    last = word.split()[-1]
    head = word[: len(word) - len(last)]
    if last in _PLURAL:
        return head + _PLURAL[last]
    if last.endswith(("s", "x", "ch", "sh")):
        return head + last + "es"
    return head + last + "s"


SIZE_SCALE: dict[str | None, float] = {"tiny": 0.35, "small": 0.55, "little": 0.55, None: 1.0, "big": 1.5, "large": 1.5, "huge": 1.9}
COUNT_WORDS: dict[int, tuple[str, ...]] = {
    1: ("a", "one", "a single"),
    2: ("two", "a pair of", "2"),
    3: ("three", "3"),
    4: ("four", "4"),
    5: ("five", "5"),
}

# ---------------------------------------------------------------- relations
RELATION_WORDS: dict[str, tuple[str, ...]] = {
    "on": ("on", "on top of", "resting on", "sitting on"),
    "above": ("above", "over", "floating above", "hovering over"),
    "under": ("under", "below", "beneath", "underneath"),
    "beside": ("beside", "next to", "by"),
    "near": ("near", "close to"),
    "left": ("to the left of", "left of", "on the left of"),
    "right": ("to the right of", "right of", "on the right of"),
    "front": ("in front of",),
    "behind": ("behind", "in back of"),
    "between": ("between",),
    "around": ("around", "surrounding", "in a circle around"),
    "row": ("in a row", "lined up", "side by side"),
    "stack": ("stacked", "stacked up", "in a stack"),
}
RELATIONS = tuple(RELATION_WORDS)
PAIR_RELATIONS = ("on", "above", "under", "beside", "near", "left", "right", "front", "behind")
HORIZONTAL = ("beside", "near", "left", "right", "front", "behind")
ARRANGEMENTS = ("row", "stack")


# ---------------------------------------------------------------- scene graphs
@dataclass
class Thing:
    """One kind of object in a scene: canonical shape, colour name (None: natural), size word, count."""

    shape: str
    colour: str | None = None
    size: str | None = None
    count: int = 1
    arrangement: str | None = None  # "row" / "stack" for a group of count ≥ 2
    word: str | None = None  # the synonym the caption uses (None: the canonical name)

    @property
    def noun(self) -> str:
        """The shape word the caption uses, singular."""
        return self.word or self.shape


@dataclass
class Relation:
    """``subject`` (a group index) stands ``relation`` to ``anchors`` (one group; two for ``between``)."""

    subject: int
    relation: str
    anchors: tuple[int, ...]


@dataclass
class Scene:
    """Groups of objects and the relations between them; at most ``MAX_OBJECTS`` objects in all."""

    groups: list[Thing]
    relations: list[Relation] = field(default_factory=list)

    @property
    def num_objects(self) -> int:
        """Objects in the scene (the sum of the group counts)."""
        return sum(g.count for g in self.groups)

    def to_json(self) -> dict:
        """A JSON-able dict."""
        return {
            "groups": [vars(g).copy() for g in self.groups],
            "relations": [{"subject": r.subject, "relation": r.relation, "anchors": list(r.anchors)} for r in self.relations],
        }

    @classmethod
    def from_json(cls, d: dict) -> Scene:
        """Inverse of ``to_json``."""
        return cls([Thing(**g) for g in d["groups"]], [Relation(r["subject"], r["relation"], tuple(r["anchors"])) for r in d["relations"]])


# ---------------------------------------------------------------- held-out validation sets
# templates never trained on (the held-out wording set), (shape, colour) pairs and (count, relation) combos
# held out beside the project's ../shared/generation/heldout.txt
HELDOUT_OBJECT_TEMPLATES = ("that_is", "in_colour")
HELDOUT_WRAPPERS = ("picture", "can_you")
VALIDATION_PAIRS = {
    ("sphere", "gold"), ("cube", "teal"), ("cone", "navy"), ("cylinder", "crimson"), ("pyramid", "lavender"),
    ("torus", "olive"), ("capsule", "coral"), ("sphere", "light green"), ("cube", "dark blue"),
}
VALIDATION_COUNT_RELATIONS = {(3, "stack"), (4, "row"), (4, "around"), (2, "behind"), (2, "left")}


@dataclass
class Rules:
    """What training scenes may not contain: held-out pairs (by colour value), combos and templates."""

    pairs: set[tuple[str, str]] = field(default_factory=set)
    prompts: set[str] = field(default_factory=set)
    count_relations: set[tuple[int, str]] = field(default_factory=lambda: set(VALIDATION_COUNT_RELATIONS))
    object_templates: tuple[str, ...] = HELDOUT_OBJECT_TEMPLATES
    wrappers: tuple[str, ...] = HELDOUT_WRAPPERS

    def pair_held(self, shape: str, colour: str | None) -> bool:
        """True when (shape, colour) is held out; aliases of a held-out colour (same RGB) count too."""
        if colour is None:
            return False
        rgb = COLOUR_RGB[colour]
        return any(s == shape and COLOUR_RGB.get(c) == rgb for s, c in self.pairs)

    def allows(self, scene: Scene) -> bool:
        """True when no group uses a held-out pair and no relation a held-out (count, relation)."""
        if any(self.pair_held(g.shape, g.colour) for g in scene.groups):
            return False
        for g in scene.groups:
            if g.arrangement and (g.count, g.arrangement) in self.count_relations:
                return False
        for r in scene.relations:
            if (scene.groups[r.subject].count, r.relation) in self.count_relations:
                return False
        return True


def training_rules(heldout=None) -> Rules:
    """Rules for training data: the project's held-out file (``data.HeldOut``) plus our validation sets."""
    from .data import normalise_prompt

    pairs = set(VALIDATION_PAIRS)
    prompts: set[str] = set()
    if heldout is not None:
        pairs |= set(heldout.pairs)
        prompts = {normalise_prompt(p) for p in heldout.prompts}
    return Rules(pairs=pairs, prompts=prompts)


def validation_rules() -> Rules:
    """No exclusions (validation scenes may use anything)."""
    return Rules(pairs=set(), count_relations=set(), object_templates=(), wrappers=())


# ---------------------------------------------------------------- captions
OBJECT_TEMPLATES = ("plain", "coloured", "painted", "made_of", "that_is", "in_colour")
WRAPPERS: dict[str, str] = {
    "bare": "{}",
    "scene": "a scene with {}",
    "render": "a 3d render of {}",
    "there_is": "there is {}",
    "show": "show me {}",
    "want": "i want {}",
    "make": "make {}",
    "model": "a 3d model of {}",
    "picture": "a picture of {}",  # held out
    "can_you": "can you make {}",  # held out
}


# more caption forms for the second bank (``caption(wide=True)``): object templates and wrappers beyond the six
# and ten above, so that the network meets more ways of attaching a colour to a noun. None paraphrases a held-out
# one ("that is", "in", "a picture of", "can you make" stay unseen: they are the held-out wording set)
WIDE_OBJECT_TEMPLATES = ("of_colour", "coloured_after", "with_finish", "colour_colon", "hued", "shade_of")
WIDE_WRAPPERS: dict[str, str] = {
    "draw": "draw {}",
    "generate": "generate {}",
    "create": "please create {}",
    "give": "give me {}",
    "like": "i would like {}",
    "build": "build {}",
    "containing": "a scene containing {}",
    "arrangement": "an arrangement of {}",
    "here": "here we have {}",
    "need": "i need {}",
}


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def object_phrase(thing: Thing, template: str, rng: np.random.Generator, definite: bool = False) -> str:
    """A noun phrase for a group: ``three small red cubes``, ``a box painted teal``, ``the red ball``."""
    noun = thing.noun if thing.count == 1 else plural(thing.noun)
    size = thing.size
    colour = thing.colour
    if colour is None:
        template = "plain"
    if template == "plain":
        core = " ".join(w for w in (size, colour, noun) if w)
    elif template == "coloured":
        core = " ".join(w for w in (size, f"{colour} coloured", noun) if w)
    elif template == "painted":
        core = " ".join(w for w in (size, noun, "painted", colour) if w)
    elif template == "made_of":
        core = " ".join(w for w in (size, noun, "in the colour", colour) if w)
    elif template == "that_is":
        core = " ".join(w for w in (size, noun, "that is" if thing.count == 1 else "that are", colour) if w)
    elif template == "in_colour":
        core = " ".join(w for w in (size, noun, "in", colour) if w)
    elif template == "of_colour":
        core = " ".join(w for w in (size, noun, "of colour", colour) if w)
    elif template == "coloured_after":
        core = " ".join(w for w in (size, noun, "coloured", colour) if w)
    elif template == "with_finish":
        core = " ".join(w for w in (size, noun, "with a", colour, "finish") if w)
    elif template == "colour_colon":
        core = " ".join(w for w in (size, noun, "(colour:", colour + ")") if w)
    elif template == "hued":
        core = " ".join(w for w in (size, f"{colour}-hued", noun) if w)
    elif template == "shade_of":
        core = " ".join(w for w in (size, noun, "with the colour", colour) if w)
    else:
        raise ValueError(f"unknown object template {template!r}")
    if definite:
        det = "the" if thing.count == 1 else f"the {COUNT_WORDS[thing.count][0]}"
    elif thing.count == 1:
        det = _article(core) if rng.random() < 0.75 else ("one" if rng.random() < 0.5 else "a single")
    else:
        words = COUNT_WORDS[thing.count]
        det = words[rng.integers(len(words))]
    phrase = f"{det} {core}"
    if thing.arrangement:
        words = RELATION_WORDS[thing.arrangement]
        arr = words[rng.integers(len(words))]
        if rng.random() < 0.3:
            lead = "a stack of" if thing.arrangement == "stack" else "a row of"
            phrase = f"{lead} {COUNT_WORDS[thing.count][0]} {core}"
        else:
            phrase = f"{phrase} {arr}"
    return phrase


@dataclass
class Caption:
    """A caption and the order its groups are first named (slot order: objects of group order[0] first)."""

    text: str
    order: list[int]
    template: str
    wrapper: str


def caption(scene: Scene, rng: np.random.Generator, rules: Rules | None = None,
            template: str | None = None, wrapper: str | None = None, wide: bool = False) -> Caption:
    """A random caption of ``scene`` (templates and wrappers outside ``rules``' held-out ones); ``wide`` also
    draws from ``WIDE_OBJECT_TEMPLATES`` / ``WIDE_WRAPPERS`` (the second bank)."""
    rules = rules or Rules(pairs=set())
    wrappers = {**WRAPPERS, **WIDE_WRAPPERS} if wide else WRAPPERS
    if template is None:
        allowed = [t for t in (*OBJECT_TEMPLATES, *(WIDE_OBJECT_TEMPLATES if wide else ())) if t not in rules.object_templates]
        template = allowed[0] if rng.random() < 0.5 else allowed[rng.integers(len(allowed))]
    if wrapper is None:
        allowed_w = [w for w in wrappers if w not in rules.wrappers]
        wrapper = "bare" if rng.random() < 0.4 else allowed_w[rng.integers(len(allowed_w))]
    named: list[int] = []

    def phrase(i: int) -> str:
        definite = i in named
        if not definite:
            named.append(i)
        return object_phrase(scene.groups[i], template, rng, definite=definite)

    clauses = []
    if not scene.relations:
        parts = [phrase(i) for i in range(len(scene.groups))]
        clauses.append(parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1])
    for r in scene.relations:
        words = RELATION_WORDS[r.relation]
        rel = words[rng.integers(len(words))]
        subj = phrase(r.subject)
        if r.relation == "between":
            anchors = scene.groups[r.anchors[0]] if len(r.anchors) == 1 else None
            if anchors is not None:  # between two objects of one group
                obj = phrase(r.anchors[0])
            else:
                obj = f"{phrase(r.anchors[0])} and {phrase(r.anchors[1])}"
        else:
            obj = phrase(r.anchors[0])
        clauses.append(f"{subj} {rel} {obj}")
    text = " and ".join(clauses) if len(clauses) < 3 else ", ".join(clauses[:-1]) + " and " + clauses[-1]
    text = wrappers[wrapper].format(text)
    return Caption(" ".join(text.split()), named, template, wrapper)


# ---------------------------------------------------------------- random scenes
PRIMITIVE_SHAPES = ("sphere", "cube", "cylinder", "cone", "torus", "pyramid", "capsule")
COMPOSITE_SHAPES = ("table", "chair", "lamp", "tree", "snowman", "house")


def random_thing(rng: np.random.Generator, rules: Rules, *, count: int = 1, composite_p: float = 0.15,
                 size_p: float = 0.3, basic_p: float = 0.35) -> Thing:
    """One group of ``count`` objects, with a shape, colour, size and synonym drawn at random."""
    while True:
        if rng.random() < composite_p:
            shape = COMPOSITE_SHAPES[rng.integers(len(COMPOSITE_SHAPES))]
            colour_choice = None if rng.random() < 0.4 else "any"
        else:
            shape = PRIMITIVE_SHAPES[rng.integers(len(PRIMITIVE_SHAPES))]
            colour_choice = "any"
        colour = None
        if colour_choice:
            pool = BASIC_COLOURS if rng.random() < basic_p else COLOUR_NAMES
            colour = pool[rng.integers(len(pool))]
        if rules.pair_held(shape, colour):
            continue
        size = None
        if rng.random() < size_p:
            words = [w for w in SIZE_SCALE if w is not None]
            size = words[rng.integers(len(words))]
        words = SHAPE_WORDS[shape]
        word = shape if rng.random() < 0.5 else words[rng.integers(len(words))]
        return Thing(shape, colour, size, count, None, None if word == shape else word)


SCENE_KINDS = ("single", "group", "pair", "triple", "list")
KIND_WEIGHTS = (0.3, 0.15, 0.3, 0.15, 0.1)


def random_scene(rng: np.random.Generator, rules: Rules, kind: str | None = None,
                 weights: tuple[float, ...] | None = None) -> Scene:
    """A random scene the rules allow. ``kind``: single / group / pair / triple / list (None: a mix drawn
    with ``weights``, default ``KIND_WEIGHTS``)."""
    kinds = SCENE_KINDS
    if weights is None:
        weights = KIND_WEIGHTS
    else:
        weights = tuple(np.asarray(weights, dtype=float) / float(np.sum(weights)))
    while True:
        k = kind or kinds[rng.choice(len(kinds), p=weights)]
        scene = _draw(rng, rules, k)
        if scene.num_objects <= MAX_OBJECTS and rules.allows(scene):
            return scene


def _draw(rng: np.random.Generator, rules: Rules, kind: str) -> Scene:
    if kind == "single":
        return Scene([random_thing(rng, rules, composite_p=0.3, size_p=0.4)])
    if kind == "group":
        n = int(rng.integers(2, 6))
        t = random_thing(rng, rules, count=n, composite_p=0.1)
        t.arrangement = [None, "row", "stack"][rng.integers(3)]
        if t.arrangement == "stack" and t.shape not in ("cube", "cylinder"):
            t.arrangement = "row"  # only flat-topped things stack
        return Scene([t])
    if kind == "pair":
        rel = PAIR_RELATIONS[rng.integers(len(PAIR_RELATIONS))]
        if rng.random() < 0.12:
            rel = "around"
        if rel == "around":
            a, b = random_thing(rng, rules, count=int(rng.integers(2, 5)), size_p=0.0), random_thing(rng, rules)
            a.size = "small"
        elif rel in HORIZONTAL:
            a = random_thing(rng, rules, count=int(rng.choice([1, 1, 1, 2, 3])))
            b = random_thing(rng, rules, count=int(rng.choice([1, 1, 1, 2])))
        else:
            a, b = random_thing(rng, rules), random_thing(rng, rules)
        return Scene([a, b], [Relation(0, rel, (1,))])
    if kind == "triple":
        if rng.random() < 0.35:  # between
            a = random_thing(rng, rules)
            if rng.random() < 0.4:
                b = random_thing(rng, rules, count=2)
                return Scene([a, b], [Relation(0, "between", (1,))])
            b, c = random_thing(rng, rules), random_thing(rng, rules)
            return Scene([a, b, c], [Relation(0, "between", (1, 2))])
        a, b, c = (random_thing(rng, rules) for _ in range(3))
        r1 = PAIR_RELATIONS[rng.integers(len(PAIR_RELATIONS))]
        r2 = HORIZONTAL[rng.integers(len(HORIZONTAL))]
        if r1 in HORIZONTAL:
            # the two subjects stand on different sides of the shared anchor
            r1, r2 = ("left", "right") if rng.random() < 0.5 else ("front", "behind")
            if rng.random() < 0.5:
                r1, r2 = r2, r1
        return Scene([a, b, c], [Relation(0, r1, (1,)), Relation(2, r2, (1,))])
    if kind == "list":
        n_groups = int(rng.integers(2, 5))
        things = [random_thing(rng, rules, count=1) for _ in range(n_groups)]
        spare = MAX_OBJECTS - n_groups
        for t in things:
            if spare and rng.random() < 0.3:
                t.count += 1
                spare -= 1
        return Scene(things)
    raise ValueError(f"unknown scene kind {kind!r}")


def bare_scene(shape: str, colour: str | None, size: str | None = None, count: int = 1) -> Scene:
    """A one-group scene (helpers, tests, benchmarks)."""
    return Scene([Thing(shape, colour, size, count)])


def _self_check() -> None:
    if len(COLOUR_RGB) < 100:
        raise AssertionError("the grammar must name at least 100 colours")
    if len(RELATIONS) < 12 or not math.isfinite(sum(SIZE_SCALE.values())):
        raise AssertionError("the grammar must have at least 12 relations")


_self_check()
