"""The synthetic support tickets the training benchmark trains and predicts on, and the names its modules share.

Part of ``bench.training`` (``.venv/bin/python -m bench.training``); bench/README.md says what it measures.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

Result = dict[str, Any]
SHAPES = ("mixed", "long", "short")

# --- a synthetic support-ticket set: sentiment sentences, context, closings ------------------------------------

PRODUCTS = [
    "the mobile app",
    "checkout",
    "the invoice page",
    "the API",
    "the dashboard",
    "password reset",
    "the CSV export",
    "search",
    "the Android app",
    "billing",
    "the refund form",
    "notifications",
    "two-factor login",
    "the calendar sync",
    "the admin console",
    "file uploads",
]
GOOD = [
    "{p} works great now, thanks for the quick fix.",
    "The agent was really helpful and {p} is fast again.",
    "Love the new {p}, everything is clear and simple.",
    "Perfect, {p} does exactly what I needed.",
    "Excellent support: {p} was sorted out within minutes.",
    "Thanks a lot, {p} is back and it feels faster.",
    "Great job on {p}, the new layout is much easier to use.",
    "{p} is working perfectly after the update.",
    "Your colleague explained {p} clearly and patiently, much appreciated.",
    "Happy to confirm that {p} syncs reliably now.",
]
BAD = [
    "{p} is still broken after the update.",
    "This is useless: {p} keeps crashing and nobody answers.",
    "I hate how slow {p} has become, it takes forever to load.",
    "{p} shows the wrong totals again.",
    "Awful experience, {p} lost my changes twice today.",
    "Third time I report this and {p} still fails.",
    "The answer I got about {p} was confusing and did not help at all.",
    "{p} is unusable on my phone.",
    "Very disappointed, {p} charged me twice and the refund never came.",
    "Nothing works: {p} returns an error every single time.",
]
CONTRAST_GOOD = ["The only annoying part was the long wait for {p}.", "{p} was a bit slow earlier, but that is minor."]
CONTRAST_BAD = ["To be fair, {p} itself is fine.", "I do like {p}, which makes this even more frustrating."]
CONTEXT = [
    "I am on version {v} of the app.",
    "My order number is {order}.",
    "It happened on {day} around {hh}:{mm}.",
    "I use it on {device}.",
    "We have {k} people on the team plan.",
    "I already tried clearing the cache and logging in again.",
    "Please let me know if you need screenshots or logs.",
    "My account email is {name}@example.com.",
    "This is for our office in {city}.",
    "I opened a similar ticket last {day} about {p}.",
    "Our admin changed the permissions last week, not sure if that matters.",
    "The browser is {browser} on a recent laptop.",
]
CLOSINGS = ["Thanks.", "Regards, {Name}.", "Best, {Name} from {city}.", "Cheers.", "", ""]
FILL = {
    "day": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"],
    "device": ["an iPhone 13", "a Pixel 7", "Windows 11", "a MacBook", "an old iPad", "Ubuntu 24.04"],
    "name": ["ana", "li.wei", "j.smith", "omar", "priya", "tom.b", "sofia", "kenji"],
    "city": ["Lisbon", "Austin", "Berlin", "Nairobi", "Osaka", "Toronto", "Lyon"],
    "browser": ["Firefox", "Chrome", "Safari", "Edge"],
}


def _fill(template: str, rng: random.Random) -> str:
    name = rng.choice(FILL["name"])
    return template.format(
        p=rng.choice(PRODUCTS),
        v=f"{rng.randint(3, 9)}.{rng.randint(0, 20)}.{rng.randint(0, 9)}",
        order=f"A-{rng.randint(100_000, 999_999)}",
        day=rng.choice(FILL["day"]),
        hh=f"{rng.randint(7, 22):02d}",
        mm=f"{rng.randint(0, 59):02d}",
        device=rng.choice(FILL["device"]),
        k=rng.randint(2, 400),
        name=name,
        Name=name.split(".")[0].title(),
        city=rng.choice(FILL["city"]),
        browser=rng.choice(FILL["browser"]),
    )


def tickets(n: int, shape: str, seed: int = 11, noise: float = 0.03) -> tuple[list[str], list[bool]]:
    """``n`` support tickets labelled satisfied (True) or not; ``noise`` of the labels flipped.

    ``short``: one sentiment sentence after a ticket number (about 15 tokens). ``mixed``: a ticket
    number, the sentiment sentence among 0-5 context sentences, sometimes a contrasting remark and a
    closing (about 15-110 tokens). ``long``: the same, grown to more than 70 words, so every text is cut
    at 64 tokens and every batch is 64 wide; the sentiment comes first or second so the cut keeps it.
    """
    rng = random.Random(f"{seed}-{shape}")
    texts, labels = [], []
    for i in range(n):
        happy = rng.random() < 0.5
        head = f"#{40_000 + i}:"
        mood = _fill(rng.choice(GOOD if happy else BAD), rng)
        mood = mood[0].upper() + mood[1:]
        if shape == "short":
            texts.append(f"{head} {mood}")
        else:
            extra = rng.choices(range(6), weights=[24, 24, 18, 14, 11, 9])[0]
            context = [_fill(rng.choice(CONTEXT), rng) for _ in range(extra)]
            if rng.random() < 0.2:
                context.append(_fill(rng.choice(CONTRAST_GOOD if happy else CONTRAST_BAD), rng))
            rng.shuffle(context)
            if shape == "long":
                while sum(len(s.split()) for s in context) < 70:
                    context.append(_fill(rng.choice(CONTEXT), rng))
                at = rng.randint(0, 1)
            else:
                at = rng.randint(0, min(2, len(context)))
            body = [*context[:at], mood, *context[at:], _fill(rng.choice(CLOSINGS), rng)]
            texts.append(" ".join([head, *(s for s in body if s)]))
        labels.append(happy if rng.random() >= noise else not happy)
    return texts, labels


def token_stats(lengths: Sequence[int], max_length: int) -> Result:
    s = sorted(lengths)
    return {
        "mean": round(sum(s) / len(s), 1),
        "p50": s[len(s) // 2],
        "p90": s[int(len(s) * 0.9)],
        "max": s[-1],
        "truncated": round(sum(n > max_length for n in s) / len(s), 3),
    }
