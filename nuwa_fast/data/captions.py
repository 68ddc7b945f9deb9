"""Many plain-English phrasings of one landscape's attributes (training captions).

`phrase(attrs, rng)` draws a caption for the attributes of a render (nuwa_fast.data.landscape): the
time of day, the ground, the mountains, the water, clouds/moon and, for clips, the motion, each from
a list of synonyms, in one of several sentence shapes, sometimes leaving details out, the way users
write prompts. Training draws a new phrasing every time an image is used, so the text encoder learns
the attributes, not one wording. The canonical caption (landscape._caption) stays one of them.
"""
from __future__ import annotations

import numpy as np

TIME = {
    "day": ("on a sunny day", "by day", "in daylight", "at midday", "under a blue sky", "on a clear day",
            "in the afternoon", "in bright sunshine", "during the day", "at noon", "in the morning sun"),
    "sunset": ("at sunset", "at dusk", "at sundown", "in the evening glow", "as the sun sets",
               "under an orange evening sky", "at golden hour", "in the last light of the day",
               "at twilight", "under a red sky", "in the warm evening light"),
    "night": ("at night", "at midnight", "under the stars", "on a starry night", "in the dark",
              "under a night sky", "after dark", "in the middle of the night", "at nighttime",
              "under a black sky", "late at night"),
}
TIME_ADJ = {"day": ("sunny", "bright", "daytime", "blue-sky"),
            "sunset": ("sunset", "evening", "dusky", "golden"),
            "night": ("night", "dark", "nighttime", "starlit")}
GROUND = {
    "grass": ("green grassland", "a green meadow", "grassy fields", "rolling green fields", "a grassy plain",
              "green pastures", "grass"),
    "desert": ("a desert", "sand dunes", "a sandy desert", "dry desert sand", "an arid plain", "the desert"),
    "forest": ("a pine forest", "a forest", "dark pine woods", "a conifer forest", "evergreen trees",
               "a dense forest", "pine trees"),
}
MOUNTAINS = {
    "snow": ("snowy mountains", "snow-capped peaks", "white mountain peaks", "mountains covered in snow",
             "snowy peaks"),
    "high": ("mountains", "rocky peaks", "a mountain range", "tall mountains", "high mountains"),
    "hills": ("hills", "low hills", "gentle hills", "rolling hills", "distant hills"),
}
WATER = {"lake": ("a lake", "a calm lake", "a mountain lake", "still water", "a lake reflecting the sky"),
         "sea": ("the sea", "the ocean", "the coast", "a calm sea", "the seaside")}
CLOUDS = ("with clouds", "with a few clouds", "under scattered clouds", "with white clouds")
MOON = ("under a full moon", "with a bright moon", "by moonlight", "with the moon out")
STARS = ("under the stars", "with stars", "under a starry sky", "with twinkling stars")
MOTION = {"pan": ("the camera pans right", "panning to the right", "the view slides sideways",
                  "a slow pan across the land", "the camera moves to the right"),
          "clouds": ("clouds drift by", "clouds move across the sky", "drifting clouds",
                     "the clouds roll past", "clouds float slowly"),
          "sunset": ("the sun sets", "the sun goes down", "the sun sinks below the horizon",
                     "the sky turns orange as the sun sets", "the sun slowly sets")}
TEMPLATES = (
    "{ground} with {mtn}{water_and} {time}",
    "{mtn} above {ground}{water_and} {time}",
    "a landscape of {ground} and {mtn} {time}",
    "{Time}, {mtn} over {ground}{water_and}",
    "a view of {mtn} and {ground}{water_and}, {time}",
    "{ground} below {mtn} {time}",
    "a {adj} landscape with {mtn} and {ground}",
    "{mtn} {time}",
    "{ground} {time}",
    "a picture of {mtn}{water_and} {time}",
    "a {adj} scene: {ground}, {mtn}{water_and}",
)


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def phrase(a: dict, rng: np.random.Generator, motion: str | None = None) -> str:
    """One random plain-English caption of the landscape attributes `a` (and the clip's motion)."""
    sky = a["sky"]
    mkey = "hills" if a["mountains"] == "hills" else ("snow" if a.get("snow") else "high")
    water = a.get("water", "none")
    parts = {
        "time": _pick(rng, TIME[sky]),
        "adj": _pick(rng, TIME_ADJ[sky]),
        "ground": _pick(rng, GROUND[a["ground"]]),
        "mtn": _pick(rng, MOUNTAINS[mkey]),
        "water_and": "" if water == "none" or rng.random() < 0.25 else " and " + _pick(rng, WATER[water]),
    }
    parts["Time"] = parts["time"][0].upper() + parts["time"][1:]
    text = _pick(rng, TEMPLATES).format(**parts)
    if rng.random() < 0.5:
        if sky == "night":
            text += " " + _pick(rng, MOON if a.get("moon_phase", 1) == 0 else STARS)
        elif a.get("clouds") and motion != "clouds":
            text += " " + _pick(rng, CLOUDS)
    if motion:
        text += ", " + _pick(rng, MOTION[motion])
    return text
