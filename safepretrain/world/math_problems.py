"""GSM8K-style multi-step math word problems, generated with their worked solutions.

Each template draws numbers so that every intermediate result is a non-negative integer, records the
2-4 operations it needs as ``Step``s, and writes the response from those steps:
``"<explanation>: a op b = c."`` lines, then ``"The answer is N."`` A test recomputes every step.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from safepretrain.world.generator_tables import NAMES

ITEMS = ["apples", "marbles", "stickers", "cookies", "pencils", "cards", "eggs", "books", "stamps", "shells",
         "oranges", "cupcakes", "balloons", "toy cars", "crayons", "muffins"]
FRIENDS = ["a friend", "a neighbour", "a cousin", "a classmate", "a teammate"]


@dataclass(frozen=True)
class Step:
    a: int
    op: str  # one of + - × ÷
    b: int
    what: str

    @property
    def result(self) -> int:
        return {"+": self.a + self.b, "-": self.a - self.b, "×": self.a * self.b, "÷": self.a // self.b}[self.op]


def _who(rng: random.Random) -> tuple[str, str, str]:
    name, pron = rng.choice(NAMES)
    return name, pron, {"she": "her", "he": "his"}[pron]


def _packs(rng):
    name, pron, _ = _who(rng)
    item = rng.choice(ITEMS)
    a, b, c = rng.randint(3, 40), rng.randint(2, 9), rng.randint(3, 12)
    s1 = Step(b, "×", c, f"{b} packs of {c} {item}")
    s2 = Step(a, "+", s1.result, f"{item} after buying")
    s3 = Step(s2.result, "-", rng.randint(1, s2.result - 1), f"{item} after giving some away")
    q = (f"{name} has {a} {item}. {pron.capitalize()} buys {b} packs with {c} {item} in each pack. Then {pron} gives "
         f"{s3.b} {item} to {rng.choice(FRIENDS)}. How many {item} does {name} have now?")
    return q, [s1, s2, s3]


def _change(rng):
    name, pron, _ = _who(rng)
    q1, p1, q2, p2 = rng.randint(2, 6), rng.randint(2, 9), rng.randint(1, 5), rng.randint(3, 15)
    s1, s2 = Step(q1, "×", p1, "cost of the notebooks"), Step(q2, "×", p2, "cost of the pens")
    s3 = Step(s1.result, "+", s2.result, "total cost")
    bill = next(b for b in (20, 50, 100, 200) if b > s3.result)
    s4 = Step(bill, "-", s3.result, "change")
    q = (f"{name} buys {q1} notebooks at ${p1} each and {q2} pens at ${p2} each. {pron.capitalize()} pays with a "
         f"${bill} bill. How many dollars of change does {pron} get?")
    return q, [s1, s2, s3, s4]


def _sharing(rng):
    name, pron, _ = _who(rng)
    item = rng.choice(["cookies", "muffins", "cupcakes"])
    k = rng.randint(2, 8)
    trays, per_tray = rng.randint(2, 6), k * rng.randint(1, 6)
    s1 = Step(trays, "×", per_tray, f"{item} baked")
    s2 = Step(s1.result, "÷", k, "each friend's share")
    q = (f"{name} bakes {trays} trays of {item} with {per_tray} {item} on each tray. {pron.capitalize()} shares "
         f"all of them equally among {k} friends. How many {item} does each friend get?")
    return q, [s1, s2]


def _reading(rng):
    name, pron, poss = _who(rng)
    per_day, days, weekend = rng.randint(5, 30), rng.randint(2, 7), rng.randint(10, 40)
    total = per_day * days + weekend + rng.randint(10, 200)
    s1 = Step(per_day, "×", days, "pages read on weekdays")
    s2 = Step(s1.result, "+", weekend, "pages read in total")
    s3 = Step(total, "-", s2.result, "pages left")
    q = (f"{name}'s book has {total} pages. {pron.capitalize()} reads {per_day} pages a day for {days} days, and then "
         f"{weekend} pages at the weekend. How many pages are left for {name} to read?")
    return q, [s1, s2, s3]


def _travel(rng):
    s, h, s2, h2 = rng.randint(4, 12) * 10, rng.randint(1, 5), rng.randint(4, 12) * 10, rng.randint(1, 4)
    a, b = Step(s, "×", h, "distance of the first part"), Step(s2, "×", h2, "distance of the second part")
    c = Step(a.result, "+", b.result, "total distance")
    q = (f"A train travels at {s} km per hour for {h} hours, then at {s2} km per hour for {h2} hours. "
         f"How many kilometres does it travel in total?")
    return q, [a, b, c]


def _savings(rng):
    name, pron, _ = _who(rng)
    weekly, weeks = rng.randint(3, 25), rng.randint(3, 12)
    saved = weekly * weeks
    x = rng.randint(1, saved // 2)
    y = rng.randint(1, saved - x)
    s1 = Step(weekly, "×", weeks, "money saved")
    s2 = Step(s1.result, "-", x, "after buying the book")
    s3 = Step(s2.result, "-", y, "after buying the game")
    q = (f"{name} saves ${weekly} every week for {weeks} weeks. Then {pron} spends ${x} on a book and ${y} on a game. "
         f"How many dollars does {name} have left?")
    return q, [s1, s2, s3]


def _garden(rng):
    name, pron, _ = _who(rng)
    rows, per_row, more = rng.randint(2, 9), rng.randint(3, 12), rng.randint(1, 5)
    s1, s2 = Step(rows, "×", per_row, "plants at first"), Step(more, "×", per_row, "plants added")
    s3 = Step(s1.result, "+", s2.result, "plants in all")
    s4 = Step(s3.result, "-", rng.randint(1, s3.result - 1), "plants left")
    q = (f"A garden has {rows} rows with {per_row} tomato plants in each row. {name} plants {more} more rows of "
         f"{per_row} plants. Then {s4.b} plants die. How many tomato plants are in the garden now?")
    return q, [s1, s2, s3, s4]


def _shop(rng):
    item = rng.choice(ITEMS)
    boxes, per_box = rng.randint(3, 12), rng.randint(6, 24)
    stock = boxes * per_box
    m = rng.randint(1, stock // 2)
    a = rng.randint(1, stock - m)
    s1 = Step(boxes, "×", per_box, f"{item} in stock")
    s2 = Step(m, "+", a, f"{item} sold")
    s3 = Step(s1.result, "-", s2.result, f"{item} left")
    q = (f"A shop has {boxes} boxes of {item} with {per_box} in each box. It sells {m} {item} in the morning and "
         f"{a} in the afternoon. How many {item} are left?")
    return q, [s1, s2, s3]


def _ages(rng):
    name, _, _ = _who(rng)
    friend, _ = rng.choice(NAMES)
    if friend == name:
        friend = "Alex"
    age, older, years = rng.randint(5, 40), rng.randint(1, 15), rng.randint(2, 20)
    s1, s2 = Step(age, "+", older, f"{friend}'s age now"), Step(age + older, "+", years, f"{friend}'s age later")
    q = (f"{name} is {age} years old. {friend} is {older} years older than {name}. "
         f"How old will {friend} be in {years} years?")
    return q, [s1, s2]


def _teams(rng):
    per_team, teams = rng.randint(3, 8), rng.randint(2, 9)
    kids = per_team * teams
    extra = rng.randint(1, 4)
    s1 = Step(kids, "÷", per_team, "number of teams")
    s2 = Step(s1.result, "×", extra, "balls needed")
    q = (f"There are {kids} children at a sports day. They form teams of {per_team}. Each team needs {extra} balls. "
         f"How many balls are needed?")
    return q, [s1, s2]


TEMPLATES: dict[str, Callable[[random.Random], tuple[str, list[Step]]]] = {
    "packs": _packs, "change": _change, "sharing": _sharing, "reading": _reading, "travel": _travel,
    "savings": _savings, "garden": _garden, "shop": _shop, "ages": _ages, "teams": _teams,
}


def solution(steps: list[Step]) -> str:
    lines = [f"{s.what.capitalize()}: {s.a} {s.op} {s.b} = {s.result}." for s in steps]
    return "\n".join(lines + [f"The answer is {steps[-1].result}."])


def math_word_problems(n: int, seed: int) -> list[dict]:
    """``n`` problems ``{"prompt", "response", "answer"}``; templates dealt from a reshuffled deck."""
    rng = random.Random(seed)
    deck: list[str] = []
    out = []
    for _ in range(n):
        if not deck:
            deck = sorted(TEMPLATES)
            rng.shuffle(deck)
        prompt, steps = TEMPLATES[deck.pop()](rng)
        out.append({"prompt": prompt, "response": solution(steps), "answer": steps[-1].result})
    return out
