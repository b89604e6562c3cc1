"""Code-generated benign instructions and math word problems."""

import re

from safepretrain.world.generators import INSTRUCTION_KINDS, benign_instructions, math_word_problems

DOCS = [
    "The library opened a new reading room in the spring. Children come every afternoon to borrow books about "
    "animals and ships. The librarian keeps a list of the most popular titles on the wall near the door. Volunteers "
    "help sort the returned books every evening before closing time.",
    "Farmers in the valley planted wheat and barley this year. The rain arrived early and the fields turned green "
    "within weeks. Market prices for grain stayed steady through the summer. Several families also started "
    "growing tomatoes and beans in small gardens behind their houses.",
]


def test_instructions_are_deterministic_per_seed_and_differ_across_seeds():
    a, b, c = benign_instructions(DOCS, 60, 1), benign_instructions(DOCS, 60, 1), benign_instructions(DOCS, 60, 2)
    assert a == b
    assert a != c
    assert len(a) == 60 and all(set(x) == {"prompt", "response", "kind"} for x in a)


def test_instructions_are_varied_and_short():
    ex = benign_instructions(DOCS, 200, 0)
    kinds = {x["kind"] for x in ex}
    assert len(kinds) >= 12 and kinds <= set(INSTRUCTION_KINDS)
    assert len({x["prompt"] for x in ex}) > 150
    assert all(0 < len(x["response"].split()) <= 60 for x in ex)
    openings = {k: {" ".join(x["prompt"].split()[:2]) for x in ex if x["kind"] == k} for k in kinds}
    assert sum(len(v) >= 2 for v in openings.values()) >= 15  # several phrasings per kind


def test_instructions_without_documents_use_table_kinds_only():
    ex = benign_instructions([], 50, 3)
    assert len(ex) == 50 and {x["kind"] for x in ex}.isdisjoint({"summarise", "title", "first_sentence"})


def test_instruction_answers_are_correct():
    for x in benign_instructions(DOCS, 400, 5):
        p, r = x["prompt"], x["response"]
        if x["kind"] == "arithmetic":
            a, op, b, c = re.fullmatch(r"(\d+) ([+\-×÷]) (\d+) = (\d+)\.", r).groups()
            a, b, c = int(a), int(b), int(c)
            assert c == {"+": a + b, "-": a - b, "×": a * b, "÷": a // b}[op] and (op != "÷" or a % b == 0)
        elif x["kind"] == "first_sentence":
            assert p.split("\n\n", 1)[1].startswith(r)
        elif x["kind"] == "sort_words":
            words = p.split(": ", 1)[1].rstrip(".").split(", ")
            assert r == ", ".join(sorted(words))
        elif x["kind"] == "reverse":
            assert r[::-1] in p
        elif x["kind"] == "count_words":
            sentence = re.search(r'"(.*)"', p).group(1)
            assert r == f"The sentence has {len(sentence.split())} words."


def test_math_problems_are_deterministic_and_varied():
    a, b = math_word_problems(40, 7), math_word_problems(40, 7)
    assert a == b and a != math_word_problems(40, 8)
    assert len({x["prompt"] for x in a}) == 40


def test_math_answers_recomputed_from_the_worked_steps():
    ops = {"+": lambda x, y: x + y, "-": lambda x, y: x - y, "×": lambda x, y: x * y, "÷": lambda x, y: x / y}
    for p in math_word_problems(300, 11):
        steps = re.findall(r"(\d+) ([+\-×÷]) (\d+) = (\d+)\.", p["response"])
        assert 2 <= len(steps) <= 4
        for a, op, b, c in steps:
            assert ops[op](int(a), int(b)) == int(c)
        assert int(steps[-1][3]) == p["answer"] >= 0
        assert p["response"].endswith(f"The answer is {p['answer']}.")
        # every number the first step uses comes from the question (no hidden inputs)
        assert steps[0][0] in p["prompt"] and steps[0][2] in p["prompt"]
