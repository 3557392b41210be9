"""What all demo domains of one seed share: latent interests, feature projections and words."""

from __future__ import annotations

import re
import zlib

import numpy as np

from missrec_recbole.tools.demo.settings import (LATENT_DIM, LOOK_SCALE, N_INTERESTS, N_LOOKS, N_SUBSTYLES,
                                                 SUBSTYLE_SCALE)

_CATALOG = {  # department -> interest nouns (56 interests)
    "Home & Kitchen": ("lamp", "kettle", "teapot", "blender", "coffee grinder", "spice rack",
                       "cutting board", "frying pan", "water bottle", "lunch box", "travel mug"),
    "Sports & Outdoors": ("backpack", "tent", "yoga mat", "hiking boots"),
    "Office Products": ("notebook", "desk organizer", "stapler", "fountain pen", "planner"),
    "Electronics": ("headphones", "phone case", "charging cable", "keyboard", "mouse pad"),
    "Clothing & Accessories": ("sneakers", "sunglasses", "wristwatch", "wallet", "scarf", "beanie",
                               "rain jacket"),
    "Industrial & Scientific": ("microscope", "thermometer", "pipette", "beaker", "multimeter"),
    "Tools & Home Improvement": ("soldering iron", "glue", "tape", "drill bit", "screwdriver"),
    "Arts & Crafts": ("paint brush", "sketchbook", "canvas", "watercolor set"),
    "Musical Instruments": ("guitar strings", "drumsticks", "ukulele", "metronome"),
    "Pet Supplies": ("dog leash", "cat toy", "aquarium filter", "bird feeder"),
    "Toys & Games": ("puzzle", "board game"),
}
_NOUNS = tuple(n for nouns in _CATALOG.values() for n in nouns)
_DEPARTMENT_OF = {n: dep for dep, nouns in _CATALOG.items() for n in nouns}
_KEYWORDS = (
    "durable", "compact", "lightweight", "portable", "ergonomic", "waterproof", "adjustable",
    "premium", "classic", "heavy duty", "eco friendly", "rechargeable", "foldable", "non slip",
    "stainless", "handmade", "insulated", "professional", "beginner friendly", "quick dry",
    "reusable", "precision", "soft touch", "washable", "travel size", "extra large", "silent",
    "shockproof", "breathable", "magnetic", "cordless", "vintage", "modular", "stackable",
    "scratch resistant", "anti glare", "odor free", "quick release", "low profile", "high capacity",
)
_STYLES = (
    "matte black", "bamboo", "walnut", "brushed steel", "sky blue", "forest green", "coral",
    "charcoal", "ivory", "copper", "navy", "sand", "crimson", "slate gray", "mint", "amber",
    "transparent", "oak", "graphite", "rose gold", "olive", "burgundy", "pearl white", "teal",
    "carbon fiber", "linen", "ceramic", "leather", "canvas", "titanium", "lavender", "mustard",
)
_SYLLABLES = (
    "ka", "ro", "mi", "ven", "tor", "lu", "sa", "zen", "bri", "qua", "dor", "fi", "nex", "pol",
    "ar", "vo", "tek", "li", "mo", "ra", "kin", "sol", "ter", "by",
)


def domain_code(name: str) -> str:
    """Short id prefix that keeps original ids distinct across domains (``Demo-A`` -> ``A``)."""
    tail = re.sub(r"[^A-Za-z0-9]", "", name.rsplit("-", 1)[-1]).upper()
    if not tail:
        tail = f"X{zlib.crc32(name.encode()) % 10000:04d}"
    return tail


def domain_rng(seed: int, name: str) -> np.random.Generator:
    """The one random stream of a domain: depends on the seed and the domain's name only."""
    return np.random.default_rng([int(seed), zlib.crc32(name.encode("utf-8")), 0xD0])


def unit_rows(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


class World:
    """Everything shared by all domains of one seed (latent interests, projections, words)."""

    def __init__(self, seed: int, feature_dim: int):
        rng = np.random.default_rng([int(seed), 0x5EED])
        K, S, L = N_INTERESTS, N_SUBSTYLES, LATENT_DIM
        self.centers = unit_rows(rng.standard_normal((K, L)))
        self.substyles = SUBSTYLE_SCALE * unit_rows(rng.standard_normal((K, S, L)))
        # global interest popularity: how likely a domain includes / favours an interest
        self.base_pop = rng.gamma(2.0, 1.0, K)
        # sparse-ish global transition matrix: each interest has a few favoured successors
        trans = rng.gamma(0.3, 1.0, (K, K))
        np.fill_diagonal(trans, 0.0)
        self.transition = trans / trans.sum(1, keepdims=True)
        # fixed random projections into feature space (+ CLIP-like common mean directions)
        self.proj_text = rng.standard_normal((L, feature_dim)) / np.sqrt(feature_dim)
        self.proj_image = rng.standard_normal((L, feature_dim)) / np.sqrt(feature_dim)
        self.mean_text = unit_rows(rng.standard_normal(feature_dim))
        self.mean_image = unit_rows(rng.standard_normal(feature_dim))
        self.looks = LOOK_SCALE * unit_rows(rng.standard_normal((N_LOOKS, L)))
        # words
        order = rng.permutation(len(_NOUNS))  # which noun names which interest
        self.nouns = [_NOUNS[order[k]] if k < len(_NOUNS) else f"gadget {k}" for k in range(K)]
        self.department = [_DEPARTMENT_OF.get(n, "Miscellaneous") for n in self.nouns]
        self.keywords = [
            [_KEYWORDS[j] for j in rng.choice(len(_KEYWORDS), 4, replace=False)] for _ in range(K)
        ]
        self.style_words = [
            [_STYLES[j] for j in rng.choice(len(_STYLES), S, replace=False)] for _ in range(K)
        ]
        self.brands = [
            [
                "".join(_SYLLABLES[j] for j in rng.integers(0, len(_SYLLABLES), rng.integers(2, 4)))
                .capitalize()
                for _ in range(3)
            ]
            for _ in range(K)
        ]
