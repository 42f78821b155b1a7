"""Word lists of the semantic-cache verifier (services/cache/verifier.py).

Everything here is general English and general knowledge, not tuned to particular questions: function
words, contractions and chat abbreviations, number words, units, date and time words, question intents,
negation and scope cues, phrasal-verb particles, common synonyms and a small gazetteer of names people
type in lower case. Keys are lower case; multi-word phrases are joined with a space.
"""

from __future__ import annotations

from pathlib import Path

# ---- normalisation ------------------------------------------------------------------------------------

# Contractions and chat shorthand, expanded before anything else looks at the text.
EXPANSIONS: dict[str, str] = {
    "what's": "what is", "whats": "what is", "where's": "where is", "wheres": "where is",
    "who's": "who is", "whos": "who is", "how's": "how is", "when's": "when is", "why's": "why is",
    "that's": "that is", "thats": "that is", "there's": "there is", "theres": "there is",
    "it's": "it is", "here's": "here is", "let's": "let us", "lets": "let us",
    "i'm": "i am", "im": "i am", "i've": "i have", "ive": "i have", "i'll": "i will", "i'd": "i would",
    "you're": "you are", "youre": "you are", "you've": "you have", "you'll": "you will", "you'd": "you would",
    "we're": "we are", "we've": "we have", "we'll": "we will", "they're": "they are", "theyre": "they are",
    "they've": "they have", "he's": "he is", "she's": "she is",
    "can't": "can not", "cant": "can not", "cannot": "can not", "won't": "will not", "wont": "will not",
    "don't": "do not", "dont": "do not", "doesn't": "does not", "doesnt": "does not", "didn't": "did not",
    "didnt": "did not", "isn't": "is not", "isnt": "is not", "aren't": "are not", "arent": "are not",
    "wasn't": "was not", "wasnt": "was not", "weren't": "were not", "werent": "were not",
    "haven't": "have not", "havent": "have not", "hasn't": "has not", "hasnt": "has not",
    "hadn't": "had not", "hadnt": "had not", "shouldn't": "should not", "shouldnt": "should not",
    "wouldn't": "would not", "wouldnt": "would not", "couldn't": "could not", "couldnt": "could not",
    "mustn't": "must not", "needn't": "need not", "ain't": "is not", "shan't": "shall not",
    "u": "you", "ur": "your", "r": "are", "pls": "please", "plz": "please", "thx": "thanks", "ty": "thanks",
    "info": "information", "tmrw": "tomorrow", "tmr": "tomorrow", "tonite": "tonight", "w/": "with",
    "w/o": "without", "b/c": "because", "bc": "because", "acct": "account", "appt": "appointment",
    "pw": "password", "pwd": "password", "msg": "message", "pic": "picture", "pics": "pictures",
    "2fa": "two factor authentication", "mfa": "multi factor authentication", "pto": "paid time off",
    "dict": "dictionary", "dicts": "dictionaries", "int": "integer", "ints": "integers",
    "str": "string", "repo": "repository", "repos": "repositories", "config": "configuration",
    "db": "database", "dbs": "databases", "env": "environment", "vs.": "vs", "versus": "vs",
    "e-mail": "email", "e-mails": "emails", "log-in": "login", "sign-in": "signin", "sign-up": "signup",
    "wi-fi": "wifi", "set-up": "setup", "check-in": "checkin", "carry-on": "carryon", "carry on": "carryon",
    # common abbreviations of general and technical words (names stay names: "js" is JavaScript)
    "k8s": "kubernetes", "js": "javascript", "gpu": "graphics card", "gpus": "graphics cards",
    "cpu": "processor", "cpus": "processors", "ram": "memory", "os": "operating system",
    "vm": "virtual machine", "vms": "virtual machines", "cert": "certificate", "certs": "certificates",
    "var": "variable", "vars": "variables", "docs": "documentation", "doc": "document",
    "auth": "authentication", "govt": "government", "dept": "department", "uni": "university",
    "prof": "professor", "ppl": "people", "bday": "birthday", "ev": "electric vehicle",
    "evs": "electric vehicles", "approx": "approximately", "w/out": "without", "pre-owned": "secondhand",
    "second-hand": "secondhand",
}

# Phrasal verbs: verb + particle become one word ("turn on" -> "turnon"), so "turn on" and "turn off"
# differ as words do, and "log in" matches "login".
PHRASAL_VERBS = frozenset({
    "turn", "switch", "log", "sign", "zoom", "opt", "check", "back", "set", "pick", "speed", "shut", "power",
    "plug", "scroll", "roll", "scale", "lock", "look", "clean", "clear", "wake", "start", "boot", "fill",
    "sum", "round", "cut", "wipe", "top", "calm", "cool", "warm", "slow", "break", "mix", "hang", "throw",
    "blow", "pay", "carry", "sort", "freeze", "dial", "spin", "tune", "print", "free",
})
# Light verbs take a particle only when no noun phrase follows it ("take off" / "take on the plane").
LIGHT_PHRASAL_VERBS = frozenset({"take", "put", "go", "come", "give", "show", "work", "write", "drop", "hand",
                                 "bring", "stay", "move", "fall", "run"})
DETERMINERS = frozenset({"the", "a", "an", "my", "your", "his", "her", "our", "their", "its", "this", "that",
                         "these", "those", "some", "any", "every", "each", "all"})
PARTICLES = frozenset({"on", "off", "in", "out", "up", "down", "into", "back", "over", "away"})

# Fixed phrases that mean one word, joined before anything else looks at them.
PHRASES: dict[str, str] = {
    "money back": "refund", "time off": "vacation", "paid time off": "vacation", "get rid of": "remove",
    "how come": "why", "a lot of": "many", "lots of": "many", "in store": "instore", "in-store": "instore",
    "e mail": "email", "sign in": "signin", "log in": "login", "set up": "setup", "carry on": "carryon",
    "as well": "also", "right now": "now", "at the moment": "now", "kind of": "", "sort of": "",
    "in order to": "to", "so that": "so", "is it possible to": "can", "am i able to": "can i",
    "be able to": "can", "is there a way to": "can", "quick question": "", "real quick": "", "in advance": "ahead",
    "stop getting": "prevent", "stop having": "prevent", "and then": "then",
    # "what does it mean when X" asks why X; "get more X" is "increase X"
    "what does it mean when": "why", "what does it mean if": "why", "what does that mean when": "why",
    "get more": "increase", "get higher": "increase", "get a higher": "increase", "get a bigger": "increase",
    "get a larger": "increase", "get less": "decrease", "get fewer": "decrease", "get lower": "decrease",
    "get a lower": "decrease", "get a smaller": "decrease",
}

# Irregular verb forms, mapped to the base form before stemming.
IRREGULAR: dict[str, str] = {
    "built": "build", "bought": "buy", "sold": "sell", "paid": "pay", "made": "make", "took": "take",
    "taken": "take", "went": "go", "gone": "go", "ran": "run", "wrote": "write", "written": "write",
    "found": "find", "sent": "send", "spent": "spend", "left": "leave", "kept": "keep", "lost": "lose",
    "won": "win", "began": "begin", "begun": "begin", "brought": "bring", "thought": "think", "caught": "catch",
    "taught": "teach", "felt": "feel", "held": "hold", "said": "say", "told": "tell", "gave": "give",
    "given": "give", "ate": "eat", "eaten": "eat", "drank": "drink", "drunk": "drink", "drove": "drive",
    "driven": "drive", "flew": "fly", "flown": "fly", "grew": "grow", "grown": "grow", "knew": "know",
    "known": "know", "chose": "choose", "chosen": "choose", "broke": "break", "broken": "break",
    "spoke": "speak", "spoken": "speak", "stole": "steal", "stolen": "steal", "froze": "freeze",
    "frozen": "freeze", "forgot": "forget", "forgotten": "forget", "hid": "hide", "hidden": "hide",
    "rose": "rise", "risen": "rise", "fell": "fall", "fallen": "fall", "shook": "shake", "woke": "wake",
    "woken": "wake", "wore": "wear", "worn": "wear", "sang": "sing", "sung": "sing", "swam": "swim",
    "threw": "throw", "thrown": "throw", "understood": "understand", "stood": "stand", "meant": "mean",
    "met": "meet", "led": "lead", "fed": "feed", "slept": "sleep", "sat": "sit", "dug": "dig", "hung": "hang",
    "bit": "bite", "bitten": "bite", "fought": "fight", "sought": "seek", "lent": "lend", "bent": "bend",
    "built-in": "builtin", "children": "child", "people": "person", "men": "man", "women": "woman",
    "feet": "foot", "teeth": "tooth", "mice": "mouse", "geese": "goose", "data": "data",
}

# British -> American spellings that suffix rules do not catch.
SPELLINGS: dict[str, str] = {
    "centre": "center", "centres": "centers", "colour": "color", "colours": "colors", "favourite": "favorite",
    "theatre": "theater", "metre": "meter", "metres": "meters", "litre": "liter", "litres": "liters",
    "kilometre": "kilometer", "kilometres": "kilometers", "programme": "program", "catalogue": "catalog",
    "cheque": "check", "grey": "gray", "travelling": "traveling", "travelled": "traveled",
    "cancelling": "canceling", "cancelled": "canceled", "labelled": "labeled", "modelling": "modeling",
    "aluminium": "aluminum", "tyre": "tire", "tyres": "tires", "pyjamas": "pajamas", "enrol": "enroll",
    "behaviour": "behavior", "neighbour": "neighbor", "honour": "honor", "licence": "license",
    "defence": "defense", "offence": "offense", "analyse": "analyze", "organise": "organize",
    "organisation": "organization", "recognise": "recognize", "realise": "realize", "apologise": "apologize",
    "customise": "customize", "optimise": "optimize", "prioritise": "prioritize", "summarise": "summarize",
    "minimise": "minimize", "maximise": "maximize", "authorise": "authorize", "synchronise": "synchronize",
    # Not spellings, but words whose stem would collide with another word's ("site" -> "sit").
    "site": "website", "sites": "websites", "plane": "airplane", "planes": "airplanes", "huge": "large",
    "wage": "salary", "wages": "salary",
}

# ---- numbers ------------------------------------------------------------------------------------------

# "one" is left out on purpose: it is far more often a pronoun ("which one") than a count.
NUMBER_WORDS: dict[str, str] = {
    "zero": "0", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6", "seven": "7",
    "eight": "8", "nine": "9", "ten": "10", "eleven": "11", "twelve": "12", "thirteen": "13",
    "fourteen": "14", "fifteen": "15", "sixteen": "16", "seventeen": "17", "eighteen": "18",
    "nineteen": "19", "twenty": "20", "thirty": "30", "forty": "40", "fifty": "50", "sixty": "60",
    "seventy": "70", "eighty": "80", "ninety": "90", "hundred": "100", "thousand": "1000",
    "million": "1000000", "billion": "1000000000", "dozen": "12", "twice": "2", "thrice": "3",
    "second": "2nd", "third": "3rd", "fourth": "4th", "fifth": "5th", "sixth": "6th", "seventh": "7th",
    "eighth": "8th", "ninth": "9th", "tenth": "10th",
}
# Ordinal words that also have another sense ("second" is a unit of time, "quarter" a period): counted as
# numbers only when a number-like context makes that likely (see verifier._analyze).
AMBIGUOUS_NUMBER_WORDS = frozenset({"second"})

# ---- units --------------------------------------------------------------------------------------------

UNITS: dict[str, str] = {}


def _units(canonical: str, *forms: str) -> None:
    for form in (canonical, *forms):
        UNITS[form] = canonical


_units("km", "kms", "kilometer", "kilometers", "kilometre", "kilometres")
_units("mile", "miles", "mi")
_units("m", "meter", "meters", "metre", "metres")
_units("cm", "centimeter", "centimeters", "centimetre", "centimetres")
_units("mm", "millimeter", "millimeters", "millimetre", "millimetres")
_units("ft", "foot", "feet")
_units("inch", "inches")
_units("yard", "yards", "yd", "yds")
_units("kg", "kgs", "kilogram", "kilograms", "kilo", "kilos")
_units("g", "gram", "grams", "gr")
_units("mg", "milligram", "milligrams")
_units("mcg", "microgram", "micrograms", "µg", "ug")
_units("lb", "lbs", "pound", "pounds")
_units("oz", "ounce", "ounces")
_units("ton", "tons", "tonne", "tonnes")
_units("l", "liter", "liters", "litre", "litres")
_units("ml", "milliliter", "milliliters", "millilitre", "millilitres")
_units("gallon", "gallons", "gal")
_units("quart", "quarts", "pint", "pints")
_units("cup", "cups")
_units("tbsp", "tablespoon", "tablespoons")
_units("tsp", "teaspoon", "teaspoons")
_units("mph")
_units("kmh", "kph", "km/h")
_units("celsius", "°c", "centigrade")
_units("fahrenheit", "°f")
_units("kelvin")
_units("degree", "degrees", "°")
_units("kb", "kilobyte", "kilobytes")
_units("mb", "megabyte", "megabytes")
_units("gb", "gigabyte", "gigabytes", "gig", "gigs")
_units("tb", "terabyte", "terabytes")
_units("kbps")
_units("mbps")
_units("gbps")
_units("hz", "hertz")
_units("ghz", "gigahertz")
_units("mhz", "megahertz")
_units("w", "watt", "watts")
_units("kw", "kilowatt", "kilowatts")
_units("kwh")
_units("v", "volt", "volts")
_units("mah")
_units("calorie", "calories", "kcal", "cal")
_units("ms", "millisecond", "milliseconds")
_units("sec", "secs", "seconds")
_units("minute", "minutes", "min", "mins")
_units("hour", "hours", "hr", "hrs")
_units("day", "days")
_units("week", "weeks")
_units("month", "months")
_units("year", "years", "yr", "yrs")
_units("decade", "decades")
_units("century", "centuries")
_units("dollar", "dollars", "$", "usd", "bucks", "buck")
_units("euro", "euros", "€", "eur")
_units("gbp", "£", "sterling")
_units("yen", "¥", "jpy")
_units("rupee", "rupees", "inr")
_units("cad")
_units("aud")
_units("chf", "franc", "francs")
_units("yuan", "rmb", "cny")
_units("percent", "%", "percentage")
_units("acre", "acres")
_units("hectare", "hectares")
_units("sqft", "ft2", "ft²")
_units("sqm", "m2", "m²")
_units("step", "steps")
_units("rep", "reps")
_units("serving", "servings")
_units("pixel", "pixels", "px")
_units("dpi")
_units("fps")
_units("rpm")
_units("psi")
_units("bar")
# Counted things that are units only after a number ("10 steps"; not "steps to reset a router").
COUNT_UNITS = frozenset({"step", "rep", "serving", "pixel"})
# "second" is a unit only next to a number or another time unit; see verifier._analyze.
TIME_UNITS = frozenset({"ms", "sec", "minute", "hour", "day", "week", "month", "year", "decade", "century"})
# Unit symbols that are units wherever they appear; unit words ("dollar", "cup") count as units only next
# to a number or in a conversion ("in", "to", "per"), else they are ordinary words ("dollar-cost averaging").
UNIT_SYMBOLS = frozenset({"°c", "°f", "°", "km/h", "mph", "kmh", "kph", "mbps", "gbps", "kbps", "kwh", "mah"})

# ---- dates and times ----------------------------------------------------------------------------------

DATE_WORDS: dict[str, str] = {}


def _dates(canonical: str, *forms: str) -> None:
    for form in (canonical, *forms):
        DATE_WORDS[form] = canonical


for _d in ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"):
    _dates(_d, _d + "s", _d[:3], _d[:3] + ".")
_dates("tuesday", "tues")
_dates("wednesday", "weds")
_dates("thursday", "thurs", "thur")
for _m in ("january", "february", "march", "april", "june", "july", "august", "september", "october",
           "november", "december"):
    _dates(_m)
for _short, _m in (("jan", "january"), ("feb", "february"), ("mar", "march"), ("apr", "april"),
                   ("jun", "june"), ("jul", "july"), ("aug", "august"), ("sep", "september"),
                   ("sept", "september"), ("oct", "october"), ("nov", "november"), ("dec", "december")):
    _dates(_m, _short)
_dates("today", "todays")
_dates("tomorrow", "tomorrows")
_dates("yesterday", "yesterdays")
_dates("tonight", "tonights")
_dates("morning", "mornings")
_dates("afternoon", "afternoons")
_dates("evening", "evenings")
_dates("night", "nights", "overnight")
_dates("noon", "midday")
_dates("midnight")
_dates("dawn", "sunrise")
_dates("dusk", "sunset")
_dates("weekend", "weekends")
_dates("weekday", "weekdays", "workday", "workdays")
_dates("spring", "springtime")
_dates("summer", "summertime", "summers")
_dates("autumn", "fall")
_dates("winter", "wintertime", "winters", "winterize", "winterizing", "winterized", "winterise", "winterising")
_dates("am", "a.m.")
_dates("pm", "p.m.")
_dates("christmas", "xmas", "christmas day", "xmas day")
_dates("christmas eve", "xmas eve")
_dates("new year eve", "nye")  # "new year's eve": the new year pair, then "eve" (verifier)
_dates("thanksgiving")
_dates("easter")
_dates("halloween")
_dates("hanukkah")
_dates("ramadan")
_dates("diwali")
_dates("new year", "new years", "new year's")
_dates("black friday")
_dates("cyber monday")
_dates("labor day", "labour day")
_dates("memorial day")
_dates("independence day")
_dates("valentine's day", "valentines day", "valentines")
_dates("mother's day", "mothers day")
_dates("father's day", "fathers day")
_dates("eod", "end of day")
_dates("eow", "end of week")
_dates("eom", "end of month")
_dates("eoy", "end of year")
_dates("q1")
_dates("q2")
_dates("q3")
_dates("q4")
# Holidays: "<holiday> eve" is the day before, "<holiday> day" the holiday itself.
HOLIDAYS = frozenset({"christmas", "new year", "thanksgiving", "easter", "halloween", "hanukkah", "diwali"})
# "fall", "march", "may" and "sun" double as other words; they count as dates only in date-like context.
AMBIGUOUS_DATE_WORDS = frozenset({"fall", "march", "mar", "may", "sun", "sat", "wed", "am", "dec", "jan",
                                  "second"})
_dates("may")
# Words that make the period after them relative: "next week", "last month", "this weekend".
RELATIVE = {"this": "this", "next": "next", "last": "last", "previous": "last", "past": "last",
            "coming": "next", "upcoming": "next", "following": "next", "current": "this"}
PERIODS = frozenset({"week", "weekend", "month", "year", "quarter", "day", "night", "morning", "evening",
                     "afternoon", "season", "semester", "term", "spring", "summer", "autumn", "fall", "winter",
                     "monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday", "time"})

# ---- negation and scope ---------------------------------------------------------------------------------

NEGATIONS = frozenset({
    "not", "no", "never", "without", "nor", "neither", "nothing", "nobody", "nowhere", "none",
    "avoid", "avoiding", "prevent", "preventing", "stop", "stopping", "except", "excluding", "exclude", "lack",
    "lacking", "unable", "impossible", "refuse", "refuses", "refused", "refusing",
})
# Negating prefixes: "incompatible" is "not compatible" when the other text has "compatible".
NEGATING_PREFIXES = ("un", "in", "im", "il", "ir", "dis", "non", "non-", "de", "anti", "mis")
# Prefixes that stay joined to their word when written with a hyphen ("non-deductible" = "nondeductible").
# Not "in-": "in-store", "in-app" are a preposition and a noun.
HYPHEN_NEGATING_PREFIXES = frozenset({"non", "un", "dis", "anti", "mis", "de", "counter"})
# Personal pronouns by person (subject and object form alike): their order around a verb gives the roles
# ("can my landlord sue me" / "can I sue my landlord"); see verifier.check_order.
PERSONS = {"i": "<i>", "me": "<i>", "we": "<we>", "us": "<we>", "you": "<you>", "he": "<he>", "him": "<he>",
           "they": "<they>", "them": "<they>"}

# Scope words, canonicalised: words that mean the same scope share one name.
SCOPE: dict[str, str] = {
    "all": "all", "every": "all", "each": "all", "everything": "all", "everyone": "all", "everybody": "all",
    "entire": "all", "whole": "all", "any": "any", "anything": "any", "anyone": "any", "anybody": "any",
    "only": "only", "solely": "only", "exclusively": "only", "just": "",
    "some": "some", "several": "some", "certain": "some", "part": "part", "partial": "part",
    "partially": "part", "partly": "part", "most": "most", "mostly": "most", "majority": "most",
    "few": "few", "couple": "few", "fewer": "less", "fewest": "least",
    "first": "first", "earliest": "first", "oldest": "first", "initial": "first",
    "last": "last", "latest": "last", "newest": "last", "final": "last", "recent": "last", "newer": "later",
    "older": "earlier",
    "max": "most", "maximum": "most", "highest": "most", "largest": "most", "biggest": "most",
    "min": "least", "minimum": "least", "lowest": "least", "smallest": "least", "least": "least",
    "more": "more", "greater": "more", "above": "more", "exceeding": "more", "over": "",
    "less": "less", "below": "less", "under": "less",
    "before": "before", "prior": "before", "after": "after",
    "next": "next", "always": "always", "sometimes": "sometimes", "often": "often", "usually": "",
    "rarely": "rarely", "ever": "ever", "occasionally": "sometimes", "frequently": "often",
    "top": "top", "bottom": "bottom", "cheapest": "least_cost", "priciest": "most_cost",
}
# Words after which "last" is the verb ("how long does it last", "last in the fridge", "last longer").
AFTER_VERB_LAST = frozenset({"", "in", "for", "on", "after", "outside", "without", "longer", "if", "when",
                             "through", "until", "till", "once", "before", "at"})
# Scope words a paraphrase may add or drop without changing the question ("list users" / "list all users").
IMPLICIT_SCOPE = frozenset({"all", "any", "some"})

# People a question can be about instead of the asker ("do I need" / "does the recipient need").
ROLE_NOUNS = frozenset({
    "recipient", "sender", "buyer", "seller", "customer", "client", "employee", "employer", "boss", "landlord",
    "tenant", "renter", "owner", "driver", "passenger", "patient", "doctor", "child", "kid", "son", "daughter",
    "parent", "spouse", "wife", "husband", "partner", "student", "teacher", "manager", "agent", "guest", "member",
    "vendor", "supplier", "applicant", "beneficiary", "borrower", "lender", "payee", "payer", "cosigner", "friend",
    "neighbor", "neighbour", "roommate", "contractor", "candidate", "visitor", "user", "admin", "administrator",
    "assistant", "secretary", "colleague", "coworker", "brother", "sister", "mother", "father", "mom", "dad",
    "grandparent", "grandmother", "grandfather", "toddler", "baby", "teammate", "subordinate", "intern",
})

# ---- question intent ------------------------------------------------------------------------------------

INTENT_WORDS = {"who": "who", "whom": "who", "whose": "who", "when": "when", "where": "where", "why": "why"}
# "how X": the kind of quantity asked for.
HOW_INTENTS = {
    "much": "amount", "many": "amount", "long": "duration", "old": "age", "big": "size", "large": "size",
    "small": "size", "tall": "size", "high": "size", "far": "distance", "fast": "speed", "quickly": "speed",
    "quick": "speed", "slow": "speed", "often": "frequency", "frequently": "frequency", "heavy": "weight",
    "hot": "temperature", "cold": "temperature", "deep": "size", "wide": "size", "soon": "when",
    "likely": "likelihood",
}
# Nouns that ask the same as an intent word: "what is the price" asks "how much".
INTENT_NOUNS = {
    "price": "amount", "cost": "amount", "costs": "amount", "fee": "amount", "fees": "amount",
    "distance": "distance", "speed": "speed", "age": "age", "height": "size", "weight": "weight",
    "temperature": "temperature", "reason": "why", "reasons": "why", "cause": "why", "causes": "why",
    "duration": "duration", "deadline": "when", "deadlines": "when", "amount": "amount", "budget": "amount",
    "pace": "speed", "chance": "likelihood", "chances": "likelihood", "odds": "likelihood",
    "probability": "likelihood", "likelihood": "likelihood", "ingredients": "composition",
}
# "what/which" + one of these asks "when" ("what time does it open").
WHEN_NOUNS = frozenset({"time", "date", "day", "year", "month", "hour"})
# "what makes/causes X" asks "why".
WHY_VERBS = frozenset({"makes", "causes", "caused", "make", "cause", "causing"})
# May stand between "what" and a why-verb: "what could be causing it" asks why.
WHY_AUXILIARIES = frozenset({"could", "might", "would", "may", "can", "is", "be", "was", "has", "have", "been"})

# Order-sensitive connectors: two shared words swapping sides around one of these swap roles
# ("km to miles" / "miles to km", "A faster than B" / "B faster than A").
DIRECTIONAL = frozenset({"to", "into", "from", "than", "by", "minus", "towards", "onto", "then"})
# Symmetric connectors: "A and B", "A vs B", "between A and B" may be written in either order.
SYMMETRIC = frozenset({"and", "or", "vs", "between", "&", "versus", "compared", "comparing"})
# Attaching prepositions: "the 404 status code in HTTP" moves HTTP without swapping roles.
ATTACHING = frozenset({"in", "on", "for", "of", "at", "with", "using", "via", "within", "inside", "about", "over",
                       "under", "underneath", "beneath", "atop"})
# The attaching words of a place or a part: two things swapping sides around one of these swap roles ("a Tesla at
# a CCS station" / "a CCS car at a Tesla station"); around "with" or "for" they may not ("A with B" / "B with A").
PLACING = frozenset({"in", "on", "of", "at", "within", "inside", "over", "under", "underneath", "beneath", "atop"})
# Auxiliaries and modals: "where is", "who should", "when does" (question inversion).
AUXILIARIES = frozenset({"is", "are", "was", "were", "do", "does", "did", "can", "could", "should", "would",
                         "will", "may", "might", "must", "has", "have", "had", "shall", "am"})
# Words before "to" that make it an infinitive marker, not a direction ("how to convert X to Y").
INFINITIVE_BEFORE = frozenset({"how", "what", "where", "when", "which", "whether", "want", "wants", "wanted",
                               "need", "needs", "have", "has", "had", "able", "try", "trying", "way", "ways",
                               "going", "like", "used", "supposed", "allowed", "possible", "easiest", "fastest",
                               "ought", "plan", "planning", "hoping", "wish", "decide", "learn", "best", "better",
                               "can", "tips", "steps", "order"})
# Words after which a wh-word opens an (indirect) question: "tell me where", "not sure when".
QUESTION_OPENERS = frozenset({"know", "tell", "me", "wondering", "wonder", "ask", "asking", "explain", "show",
                              "understand", "figure", "out", "idea", "sure", "unsure", "confused", "and",
                              "but", "so", "or", "then", "at", "in", "to", "from", "by", "since", "until",
                              "for", "of", "on", "about"})

# ---- function words -------------------------------------------------------------------------------------

STOPWORDS = frozenset([
    "a", "an", "the", "this", "that", "these", "those", "there", "here", "it", "its", "it's", "they", "them",
    "their", "theirs", "we", "us", "our", "ours", "you", "your", "yours", "he", "him", "his", "she", "her", "hers",
    "i", "me", "my", "mine", "myself", "yourself", "ourselves", "themselves", "itself", "one", "ones", "is", "am",
    "are", "was", "were", "be", "been", "being", "do", "does", "did", "doing", "done", "have", "has", "had",
    "having", "get", "gets", "got", "getting", "gotten", "will", "would", "shall", "should", "can", "could", "may",
    "might", "must", "need", "needs", "needed", "ought", "and", "or", "but", "if", "then", "so", "than", "too",
    "very", "also", "just", "really", "quite", "rather", "still", "even", "yet", "already", "again", "of", "in",
    "on", "at", "to", "for", "from", "by", "with", "about", "into", "onto", "over", "under", "up", "down", "out",
    "off", "through", "during", "before", "after", "above", "below", "between", "among", "around", "across",
    "along", "via", "per", "as", "like", "such", "what", "which", "who", "whom", "whose", "when", "where", "why",
    "how", "whether", "please", "thanks", "thank", "hi", "hello", "hey", "dear", "ok", "okay", "yes", "yeah",
    "sure", "well", "oh", "vs", "versus", "help", "tell", "explain", "describe", "show", "know", "want", "wanted",
    "wondering", "wonder", "like", "would", "let", "lets", "go", "going", "try", "trying", "way", "ways", "method",
    "methods", "process", "procedure", "steps", "step", "tips", "tip", "guide", "anyone", "somebody", "someone",
    "something", "some", "any", "possible", "able", "allowed", "permitted", "okay", "fine", "thing", "things",
    "stuff", "kind", "sort", "type", "actually", "basically", "mean", "means", "meaning", "meant", "definition",
    "define", "defined", "is", "there", "exist", "exists", "exactly", "correct", "right", "typically", "usually",
    "generally", "normally", "commonly", "often", "currently", "while", "whilst",
])

# Light verbs and request words that a paraphrase swaps freely ("how do I ..." / "what's the way to ...").
FILLER = frozenset({"use", "using", "used", "take", "put", "bring",
                    "recommend", "suggest", "proper", "properly", "correctly",
                    "exactly", "quickly", "easily", "easy", "simple", "simply", "effectively", "effective",
                    "anymore", "specific", "particular", "certain", "current", "existing",
                    "learn", "understand", "example", "examples", "expected", "supposed", "required", "require",
                    "necessary", "needed", "work", "works", "happen", "happens", "available", "having",
                    "instructions", "information", "details", "detail", "overview", "summary", "reason",
                    "question", "problem", "issue", "regarding", "concerning", "about", "related",
                    "obtain", "acquire", "approximately", "roughly"})

# "used" is the adjective (second-hand) after these words unless a preposition follows ("used for", "used to").
BEFORE_SECONDHAND = DETERMINERS | {"or", "and", "new", "buy", "buying", "sell", "selling", "certified"}
AFTER_USED_VERB = frozenset({"to", "for", "by", "as", "in", "with", "on", "at", "when", "if"})

# Verbs that only introduce an embedded question: "check which ports are open" = "see which ports are open"
# = "find out which ports are open"; followed by one of EMBEDDED_QUESTION they add nothing.
INQUIRY_VERBS = frozenset({"see", "check", "find", "tell", "know", "figure", "determine", "verify", "confirm",
                           "work", "learn", "ask"})
EMBEDDED_QUESTION = frozenset({"which", "what", "whether", "if", "how", "who", "where", "when", "why"})

# Operations: a word a paraphrase may not add on one side only ("find a file" / "delete a file").
ACTIONS = frozenset([
    "add", "create", "delete", "remove", "cancel", "change", "update", "install", "uninstall", "reset", "restore",
    "buy", "sell", "send", "receive", "open", "close", "start", "stop", "enable", "disable", "search", "block",
    "unblock", "lock", "unlock", "upload", "download", "import", "export", "share", "merge", "split", "copy",
    "move", "rename", "sort", "filter", "convert", "translate", "encrypt", "decrypt", "compress", "extract",
    "print", "scan", "sign", "pay", "refund", "return", "exchange", "book", "approve", "reject", "accept",
    "decline", "transfer", "deposit", "withdraw", "borrow", "lend", "rent", "lease", "hire", "fire", "promote",
    "report", "submit", "register", "subscribe", "unsubscribe", "follow", "unfollow", "mute", "hide", "show",
    "publish", "deploy", "build", "test", "debug", "fix", "restart", "shutdown", "upgrade", "downgrade", "sync",
    "backup", "archive", "revert", "undo", "redo", "clear", "edit", "replace", "insert", "join", "leave", "quit",
    "kill", "run", "execute", "schedule", "reschedule", "postpone", "track", "verify", "check", "compare",
    "calculate",
])

# ---- synonyms -------------------------------------------------------------------------------------------

SYNONYM_GROUPS: tuple[tuple[str, ...], ...] = (
    ("change", "update", "modify", "edit", "alter", "amend", "adjust"),
    ("create", "make", "generate", "build", "setup"),
    ("delete", "remove", "erase", "drop", "eliminate", "rid"),
    ("buy", "purchase"),
    ("fix", "repair", "solve", "resolve", "troubleshoot", "mend"),
    ("error", "issue", "problem", "bug", "fault", "mistake", "exception"),
    ("start", "begin", "launch", "commence"),
    ("exit", "quit"),
    ("different", "another", "other"),
    ("big", "large"),  # "huge" is spelled large (SPELLINGS): its stem would be "hug"
    ("small", "little", "tiny"),
    ("fast", "quick", "rapid", "speedy"),
    ("faster", "quicker", "speedup"),
    ("fastest", "quickest", "speediest"),
    ("cheap", "inexpensive", "affordable", "budget"),
    ("expensive", "pricey"),  # not "costly": its stem is "cost", which belongs with price
    ("car", "vehicle", "automobile"),
    ("phone", "smartphone", "cellphone", "mobile"),
    ("computer", "pc"),
    ("refund", "reimbursement", "moneyback"),
    ("reservation", "booking", "reserve", "book"),
    ("luggage", "baggage"),
    ("information", "info", "details"),
    ("cause", "reason"),
    ("boss", "manager", "supervisor"),
    ("employee", "staff", "worker", "staffer"),
    ("list", "display", "view", "see"),
    ("enable", "turnon", "switchon", "activate"),
    ("disable", "turnoff", "switchoff", "deactivate"),
    ("login", "signin", "logon", "signon", "loginto", "loginon"),
    ("logout", "signout", "logoff", "signoff"),
    ("signup", "register", "enroll", "registration", "enrollment"),
    ("rich", "high"),
    ("doctor", "physician", "gp"),
    ("medicine", "medication", "drug", "med", "meds"),
    ("kid", "child", "children"),
    ("house", "home"),
    ("apartment",),  # not "flat": a flat tyre, a flat rate, a flat screen
    ("movie", "film"),
    ("happen", "occur"),
    ("calculate", "compute", "workout"),
    ("depart", "departure", "leave"),
    ("arrive", "arrival", "reach"),
    ("cost", "price", "charge", "fee"),
    ("answer", "reply", "respond", "response"),
    ("picture", "photo", "image", "pic"),
    ("shop", "store"),
    ("customer", "client"),
    ("job", "position", "role"),
    ("salary", "pay", "paycheck", "payday", "paid"),  # "wage(s)": SPELLINGS (stem "wag")
    ("vacation", "holiday", "pto", "timeoff"),
    ("folder", "directory"),
    ("program", "app", "application", "software"),
    ("website", "webpage"),  # "site" is a spelling of it (SPELLINGS): its stem would be "sit"
    ("password", "passcode", "passphrase"),
    ("choose", "pick", "select"),
    ("find", "locate"),
    ("allow", "permit", "let"),
    ("receive",),
    ("request", "ask"),
    ("speed", "velocity"),
    ("guideline", "rule", "policy"),
    ("warranty", "guarantee"),
    ("weather", "forecast"),
    ("dad", "father"),
    ("mom", "mother", "mum"),
    ("tv", "television"),
    ("symptom", "sign", "indication"),
    ("unsubscribe", "optout"),
    ("subscribe", "optin"),
    ("check", "verify", "confirm", "validate"),
    ("restart", "reboot"),
    ("shut", "shutdown", "poweroff"),
    ("cancel", "terminate", "abort"),
    ("traveling", "travel", "trip"),
    ("wifi", "wireless"),
    ("coworker", "colleague"),
    ("teacher", "instructor"),
    ("tutorial", "guide"),
    ("ill", "sick"),
    ("benefit", "advantage", "pro", "upside"),
    ("disadvantage", "drawback", "downside"),
    ("loop", "iterate", "iteration"),
    ("hotel", "accommodation", "lodging"),
    ("baby", "infant", "newborn"),
    ("bike", "bicycle"),
    ("pain", "ache", "hurt", "sore"),
    ("talk", "speak"),
    ("company", "business", "firm"),
    ("money", "cash", "fund", "funds"),
    ("bill", "invoice"),
    ("ship", "shipping", "deliver", "delivery"),
    ("package", "parcel", "shipment"),
    ("text", "sms"),
    ("discount", "promo", "coupon", "voucher", "promotion"),
    ("subscription", "membership"),
    ("fridge", "refrigerator"),
    ("couch", "sofa"),
    ("trash", "garbage", "rubbish"),
    ("terminal", "console", "shell", "cli", "commandline"),
    ("increase", "raise", "boost"),
    ("decrease", "reduce", "lower"),
    ("wrong", "incorrect"),
    ("quiet", "silent"),
    ("happy", "glad"),
)

# ---- names people type in lower case --------------------------------------------------------------------

GAZETTEER = frozenset([
    "afghanistan", "albania", "algeria", "argentina", "armenia", "australia", "austria", "azerbaijan", "bahamas",
    "bangladesh", "belarus", "belgium", "bolivia", "bosnia", "brazil", "bulgaria", "cambodia", "cameroon", "canada",
    "colombia", "croatia", "cuba", "cyprus", "czechia", "denmark", "ecuador", "egypt", "estonia", "ethiopia",
    "finland", "france", "germany", "ghana", "greece", "guatemala", "haiti", "honduras", "hungary", "iceland",
    "india", "indonesia", "iran", "iraq", "ireland", "israel", "italy", "jamaica", "japan", "kazakhstan", "kenya",
    "korea", "kuwait", "laos", "latvia", "lebanon", "libya", "lithuania", "luxembourg", "madagascar", "malaysia",
    "maldives", "malta", "mexico", "moldova", "monaco", "mongolia", "montenegro", "morocco", "mozambique",
    "myanmar", "nepal", "netherlands", "holland", "nicaragua", "nigeria", "norway", "oman", "pakistan", "panama",
    "paraguay", "peru", "philippines", "poland", "portugal", "qatar", "romania", "russia", "rwanda", "scotland",
    "senegal", "serbia", "singapore", "slovakia", "slovenia", "somalia", "spain", "sudan", "sweden", "switzerland",
    "syria", "taiwan", "tanzania", "thailand", "tunisia", "uganda", "ukraine", "uruguay", "uzbekistan", "venezuela",
    "vietnam", "wales", "yemen", "zambia", "zimbabwe", "usa", "uk", "uae", "england", "britain", "europe", "asia",
    "africa", "america", "antarctica", "oceania", "london", "paris", "berlin", "madrid", "rome", "milan",
    "barcelona", "lisbon", "amsterdam", "brussels", "vienna", "prague", "budapest", "warsaw", "dublin", "edinburgh",
    "zurich", "geneva", "munich", "frankfurt", "hamburg", "copenhagen", "stockholm", "oslo", "helsinki", "athens",
    "istanbul", "moscow", "kyiv", "cairo", "dubai", "doha", "riyadh", "tehran", "mumbai", "delhi", "bangalore",
    "bengaluru", "chennai", "kolkata", "karachi", "lahore", "dhaka", "bangkok", "hanoi", "singapore", "jakarta",
    "manila", "seoul", "tokyo", "osaka", "kyoto", "beijing", "shanghai", "shenzhen", "hongkong", "taipei", "sydney",
    "melbourne", "brisbane", "auckland", "toronto", "vancouver", "montreal", "ottawa", "calgary", "chicago",
    "boston", "seattle", "austin", "houston", "dallas", "denver", "atlanta", "miami", "orlando", "nashville",
    "portland", "philadelphia", "detroit", "vegas", "sacramento", "sanfrancisco", "losangeles", "nyc", "newyork",
    "brooklyn", "manhattan", "washington", "lagos", "nairobi", "johannesburg", "capetown", "casablanca",
    "marrakech", "bogota", "santiago", "quito", "caracas", "havana", "cancun", "saopaulo", "buenosaires", "mexico",
    "texas", "california", "florida", "ohio", "oregon", "nevada", "arizona", "colorado", "utah", "alaska", "hawaii",
    "virginia", "michigan", "python", "javascript", "typescript", "golang", "kotlin", "scala", "php", "perl",
    "haskell", "elixir", "erlang", "clojure", "lua", "matlab", "fortran", "cobol", "zsh", "powershell", "nosql",
    "c++", "c#", ".net", "dotnet", "react", "angular", "vue", "svelte", "nextjs", "nuxt", "django", "flask",
    "fastapi", "rails", "laravel", "nodejs", "deno", "pandas", "numpy", "scipy", "pytorch", "tensorflow", "keras",
    "sklearn", "jax", "hadoop", "postgres", "postgresql", "mysql", "sqlite", "mongodb", "mariadb", "cassandra",
    "elasticsearch", "dynamodb", "snowflake", "bigquery", "airflow", "docker", "kubernetes", "k8s", "terraform",
    "ansible", "jenkins", "github", "gitlab", "bitbucket", "mercurial", "svn", "linux", "ubuntu", "debian",
    "fedora", "centos", "macos", "osx", "ios", "android", "chromeos", "unix", "freebsd", "aws", "azure", "gcp",
    "heroku", "vercel", "netlify", "cloudflare", "chrome", "firefox", "powerpoint", "outlook", "slack", "skype",
    "gmail", "yahoo", "google", "microsoft", "facebook", "instagram", "whatsapp", "twitter", "tiktok", "youtube",
    "netflix", "spotify", "uber", "lyft", "airbnb", "toyota", "honda", "bmw", "audi", "volkswagen", "nissan",
    "hyundai", "samsung", "sony", "nokia", "huawei", "xiaomi", "lenovo", "dell", "hp", "asus", "acer", "intel",
    "amd", "nvidia", "ibm", "walmart", "costco", "ikea", "ebay", "etsy", "paypal", "venmo", "stripe", "mastercard",
    "amex", "citibank", "hsbc", "barclays", "fidelity", "vanguard", "schwab", "robinhood", "coinbase", "bitcoin",
    "ethereum", "dogecoin", "iphone", "ipad", "macbook", "imac", "airpods", "kindle", "chatgpt", "openai",
    "playstation", "xbox", "nintendo", "thinkpad", "chromebook", "ibuprofen", "acetaminophen", "paracetamol",
    "aspirin", "naproxen", "amoxicillin", "penicillin", "metformin", "insulin", "influenza", "measles", "mumps",
    "malaria", "diabetes", "asthma", "einstein", "newton", "darwin", "shakespeare", "mozart", "beethoven",
    "picasso", "jupiter", "saturn", "neptune", "uranus",
])


# ---- synonym groups of services/cache/synonyms.txt ------------------------------------------------------

SYNONYMS_FILE = Path(__file__).with_name("synonyms.txt")


def load_synonym_groups(path: Path = SYNONYMS_FILE) -> tuple[tuple[str, ...], ...]:
    """The groups of a synonyms file: one per line, comma-separated, `#` starts a comment. A missing file
    gives none (the verifier then only refuses more)."""
    if not path.is_file():
        return ()
    groups = []
    for line in path.read_text(encoding="utf-8").splitlines():
        words = tuple(w.strip().lower() for w in line.split("#", 1)[0].split(",") if w.strip())
        if len(words) >= 2:
            groups.append(words)
    return tuple(groups)


SYNONYM_GROUPS = SYNONYM_GROUPS + load_synonym_groups()


# ---- WordNet synonyms and antonyms of services/cache/wordnet_synonyms.tsv --------------------------------

WORDNET_FILE = Path(__file__).with_name("wordnet_synonyms.tsv")


def load_wordnet(path: Path = WORDNET_FILE) -> tuple[tuple[tuple[str, ...], ...], tuple[tuple[str, str], ...]]:
    """(synonym sets, antonym pairs) of the WordNet data file written by `build_lexicon.py`: lines
    `s<TAB>pos<TAB>word word ...` and `a<TAB>word<TAB>word`, `#` starts a comment. A missing file gives
    neither (the verifier then only refuses more)."""
    if not path.is_file():
        return (), ()
    synsets: list[tuple[str, ...]] = []
    antonyms: list[tuple[str, str]] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        fields = line.split("\t")
        if line.startswith("#") or len(fields) != 3:
            continue
        if fields[0] == "s":
            words = tuple(fields[2].split())
            if len(words) >= 2:
                synsets.append(words)
        elif fields[0] == "a":
            antonyms.append((fields[1], fields[2]))
    return tuple(synsets), tuple(antonyms)


WORDNET_SYNSETS, WORDNET_ANTONYMS = load_wordnet()
