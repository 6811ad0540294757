"""Embedded default data sets, built offline from data that well-kept dependencies ship.

- :func:`names_by_language`: surnames -> language of origin, from the per-locale name lists of
  the Faker package (the many-to-one default, and the one-to-many default read backwards).
- :func:`dates`: one date written in many formats and languages -> ISO 8601, from the CLDR
  locale data that Babel ships (the encoder-decoder default; the alignments are crisp: the
  month name maps to the month digits, and so on).

Both are deterministic for a given seed and take about a second to build.
"""

from __future__ import annotations

import datetime as dt
import importlib
import random

from .readers import LabelledTexts

__all__ = ["NAME_LOCALES", "DATE_LOCALES", "names_by_language", "dates"]

# Latin-script locales only: with Cyrillic or Greek in the mix the script alone would give the
# answer away. Label = language (the locale's first part).
NAME_LOCALES = {
    "English": "en_US",
    "German": "de_DE",
    "French": "fr_FR",
    "Italian": "it_IT",
    "Spanish": "es_ES",
    "Dutch": "nl_NL",
    "Irish": "ga_IE",
    "Czech": "cs_CZ",
    "Finnish": "fi_FI",
    "Croatian": "hr_HR",
    "Slovak": "sk_SK",
    "Estonian": "et_EE",
    "Indonesian": "id_ID",
}

DATE_LOCALES = (
    "en_US", "en_GB", "de_DE", "fr_FR", "es_ES", "it_IT", "pt_BR", "nl_NL", "sv_SE",
    "pl_PL", "cs_CZ", "tr_TR", "fi_FI", "da_DK", "ro_RO", "hu_HU",
)  # fmt: skip
DATE_FORMATS = ("short", "medium", "long", "full")


def names_by_language(max_per_language: int = 500, seed: int = 0) -> LabelledTexts:
    """Surnames labelled with their language (Faker's ``last_names`` per locale).

    Names listed for more than one language are dropped (their label would be a coin toss);
    each language keeps at most ``max_per_language`` names, drawn with ``seed``.
    """
    lists: dict[str, list[str]] = {}
    for language, locale in NAME_LOCALES.items():
        provider = importlib.import_module(f"faker.providers.person.{locale}").Provider
        names = {n.strip() for n in provider.last_names if n.strip()}  # a list, or a dict of weights
        lists[language] = sorted(names)
    seen: dict[str, int] = {}
    for names in lists.values():
        for n in names:
            seen[n] = seen.get(n, 0) + 1
    rng = random.Random(seed)
    texts, labels = [], []
    for language, names in lists.items():
        unique = [n for n in names if seen[n] == 1]
        rng.shuffle(unique)
        for n in unique[:max_per_language]:
            texts.append(n)
            labels.append(language)
    order = list(range(len(texts)))
    rng.shuffle(order)
    return LabelledTexts([texts[i] for i in order], [labels[i] for i in order])


def dates(n: int = 20000, seed: int = 0) -> tuple[list[str], list[str]]:
    """``n`` random dates in 1950..2049 written by Babel in a random locale and format -> ISO 8601.

    Two-digit years (the ``short`` format of some locales) are unambiguous in this range.
    """
    from babel import Locale
    from babel.dates import format_date

    locales = {name: Locale.parse(name) for name in DATE_LOCALES}
    rng = random.Random(seed)
    first, span = dt.date(1950, 1, 1).toordinal(), (dt.date(2049, 12, 31) - dt.date(1950, 1, 1)).days
    sources, targets = [], []
    for _ in range(n):
        day = dt.date.fromordinal(first + rng.randint(0, span))
        locale = locales[rng.choice(DATE_LOCALES)]
        text = format_date(day, rng.choice(DATE_FORMATS), locale=locale)
        sources.append(" ".join(text.split()))  # CLDR uses narrow no-break spaces; one kind of space
        targets.append(day.isoformat())
    return sources, targets
