"""Small built-in fact and word tables for the instruction and math generators (plain, well-known facts)."""

from __future__ import annotations

# (name, pronoun)
NAMES = [("Ava", "she"), ("Ben", "he"), ("Chloe", "she"), ("Daniel", "he"), ("Emma", "she"), ("Felix", "he"),
         ("Grace", "she"), ("Hugo", "he"), ("Isla", "she"), ("Jack", "he"), ("Kira", "she"), ("Liam", "he"),
         ("Maya", "she"), ("Noah", "he"), ("Olivia", "she"), ("Omar", "he"), ("Priya", "she"), ("Quinn", "he"),
         ("Rosa", "she"), ("Sam", "he"), ("Tara", "she"), ("Umar", "he"), ("Vera", "she"), ("Wei", "he"),
         ("Yara", "she"), ("Zoe", "she"), ("Leo", "he"), ("Nina", "she"), ("Arjun", "he"), ("Mei", "she")]

WORDS = ["apple", "banana", "garden", "window", "pencil", "river", "mountain", "candle", "bottle", "rabbit",
         "orange", "silver", "ladder", "blanket", "kitchen", "pillow", "market", "basket", "letter", "forest",
         "island", "planet", "button", "camera", "doctor", "engine", "flower", "guitar", "hammer", "jacket",
         "kettle", "lemon", "mirror", "needle", "ocean", "pepper", "rocket", "saddle", "teacher", "umbrella",
         "violin", "wallet", "yellow", "zebra", "bridge", "castle", "dragon", "feather", "harbor", "meadow",
         "puzzle", "rainbow", "sunset", "tunnel", "village", "whistle", "anchor", "cookie", "dolphin", "falcon"]

SYNONYMS = {"happy": "glad", "big": "large", "small": "little", "fast": "quick", "begin": "start", "end": "finish",
            "smart": "clever", "angry": "cross", "easy": "simple", "hard": "difficult", "shut": "close",
            "buy": "purchase", "help": "assist", "choose": "pick", "tired": "sleepy", "rich": "wealthy",
            "funny": "amusing", "quiet": "silent", "brave": "bold", "gift": "present", "house": "home",
            "road": "street", "talk": "speak", "look": "see", "scared": "afraid", "sick": "ill", "near": "close",
            "correct": "right", "answer": "reply", "job": "work"}

ANTONYMS = {"hot": "cold", "up": "down", "open": "closed", "early": "late", "light": "dark", "full": "empty",
            "old": "young", "tall": "short", "wet": "dry", "loud": "quiet", "fast": "slow", "happy": "sad",
            "high": "low", "strong": "weak", "clean": "dirty", "above": "below", "begin": "end", "win": "lose",
            "push": "pull", "always": "never", "heavy": "light", "rich": "poor", "inside": "outside",
            "arrive": "leave", "remember": "forget", "day": "night", "thick": "thin", "sweet": "sour",
            "buy": "sell", "true": "false"}

CAPITALS = {"France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Portugal": "Lisbon",
            "Japan": "Tokyo", "China": "Beijing", "India": "New Delhi", "Canada": "Ottawa", "Mexico": "Mexico City",
            "Brazil": "Brasilia", "Argentina": "Buenos Aires", "Egypt": "Cairo", "Kenya": "Nairobi",
            "Australia": "Canberra", "Russia": "Moscow", "Norway": "Oslo", "Sweden": "Stockholm",
            "Finland": "Helsinki", "Ireland": "Dublin", "Poland": "Warsaw", "Greece": "Athens", "Turkey": "Ankara",
            "Peru": "Lima", "Chile": "Santiago", "Thailand": "Bangkok", "South Korea": "Seoul",
            "the Netherlands": "Amsterdam", "Austria": "Vienna", "Hungary": "Budapest", "Denmark": "Copenhagen",
            "the United Kingdom": "London", "the United States": "Washington, D.C."}

PLANETS = ["Mercury", "Venus", "Earth", "Mars", "Jupiter", "Saturn", "Uranus", "Neptune"]

COLOUR_MIXES = {("blue", "yellow"): "green", ("red", "yellow"): "orange", ("red", "blue"): "purple",
                ("red", "white"): "pink", ("black", "white"): "grey", ("blue", "white"): "light blue"}

DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]

# (unit plural, unit singular, smaller unit plural, factor)
UNITS = [("kilometres", "kilometre", "metres", 1000), ("metres", "metre", "centimetres", 100),
         ("kilograms", "kilogram", "grams", 1000), ("hours", "hour", "minutes", 60),
         ("minutes", "minute", "seconds", 60), ("days", "day", "hours", 24), ("feet", "foot", "inches", 12),
         ("weeks", "week", "days", 7), ("litres", "litre", "millilitres", 1000), ("dozens", "dozen", "items", 12),
         ("yards", "yard", "feet", 3), ("years", "year", "months", 12)]

# (what the email asks, its body); {day} is filled in
EMAIL_TOPICS = [
    ("asking to move our meeting to {day}", "Would it be possible to move our meeting to {day}? Something has come up, "
                                             "and I am sorry for the short notice."),
    ("asking for a copy of the latest report", "Could you please send me a copy of the latest report when you have a "
                                                "moment? I would like to read it before our next meeting."),
    ("thanking them for their help last week", "I wanted to thank you for your help last week. It made a real "
                                                "difference, and I am very grateful."),
    ("asking for a day off on {day}", "I would like to ask whether I could take a day off on {day}. I will make sure "
                                       "my work is covered before then."),
    ("reminding them about the team lunch on {day}", "This is a friendly reminder about our team lunch on {day}. "
                                                     "Please let me know if you can join us."),
    ("confirming the delivery date of {day}", "I am writing to confirm that the delivery is planned for {day}. "
                                              "Please tell me if anything changes."),
]
