"""Languages by name or ISO 639-1 code, and the country-flag emoji that ask for them.

A flag names a country, not a language: the table below says which language a team most likely
means by it (🇧🇷 → Portuguese, 🇲🇽 → Spanish). Flags that mean no language (🏴‍☠️, 🏳️‍🌈, 🇪🇺, 🇺🇳) are
unknown on purpose: the caller says so in one line rather than guessing.
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.errors import TaskError


@dataclass(frozen=True)
class Language:
    """A language the model is asked to write: its English name and ISO 639-1 code."""

    code: str
    name: str


LANGUAGES: dict[str, str] = {
    "ar": "Arabic",
    "bg": "Bulgarian",
    "ca": "Catalan",
    "cs": "Czech",
    "da": "Danish",
    "de": "German",
    "el": "Greek",
    "en": "English",
    "es": "Spanish",
    "et": "Estonian",
    "fa": "Persian",
    "fi": "Finnish",
    "fr": "French",
    "he": "Hebrew",
    "hi": "Hindi",
    "hr": "Croatian",
    "hu": "Hungarian",
    "id": "Indonesian",
    "it": "Italian",
    "ja": "Japanese",
    "ko": "Korean",
    "lt": "Lithuanian",
    "lv": "Latvian",
    "ms": "Malay",
    "nl": "Dutch",
    "no": "Norwegian",
    "pl": "Polish",
    "pt": "Portuguese",
    "ro": "Romanian",
    "ru": "Russian",
    "sk": "Slovak",
    "sl": "Slovenian",
    "sr": "Serbian",
    "sv": "Swedish",
    "th": "Thai",
    "tr": "Turkish",
    "uk": "Ukrainian",
    "vi": "Vietnamese",
    "zh": "Chinese",
}

# Other ways people write them.
_ALIASES: dict[str, str] = {
    "jp": "ja",
    "cn": "zh",
    "kr": "ko",
    "mandarin": "zh",
    "farsi": "fa",
    "brazilian": "pt",
    "português": "pt",
    "portugues": "pt",
    "français": "fr",
    "francais": "fr",
    "deutsch": "de",
    "español": "es",
    "espanol": "es",
    "castellano": "es",
    "italiano": "it",
    "nederlands": "nl",
    "日本語": "ja",
    "中文": "zh",
    "한국어": "ko",
    "русский": "ru",
    "polski": "pl",
    "svenska": "sv",
    "norsk": "no",
    "bokmål": "no",
    "dansk": "da",
    "suomi": "fi",
    "türkçe": "tr",
    "ελληνικά": "el",
}

# Country (ISO 3166-1 alpha-2, as in the flag emoji and Slack's `flag-xx` names) → language.
_COUNTRIES: dict[str, str] = {
    "fr": "fr", "be": "fr", "ch": "de", "de": "de", "at": "de", "es": "es", "mx": "es", "ar": "es",
    "co": "es", "cl": "es", "pe": "es", "pt": "pt", "br": "pt", "it": "it", "jp": "ja", "cn": "zh",
    "tw": "zh", "hk": "zh", "kr": "ko", "ru": "ru", "ua": "uk", "pl": "pl", "nl": "nl", "se": "sv",
    "no": "no", "dk": "da", "fi": "fi", "gr": "el", "tr": "tr", "il": "he", "sa": "ar", "eg": "ar",
    "ae": "ar", "in": "hi", "id": "id", "vn": "vi", "th": "th", "cz": "cs", "sk": "sk", "hu": "hu",
    "ro": "ro", "bg": "bg", "hr": "hr", "rs": "sr", "si": "sl", "ee": "et", "lv": "lv", "lt": "lt",
    "ir": "fa", "my": "ms", "us": "en", "gb": "en", "uk": "en", "au": "en", "ca": "en", "nz": "en",
    "ie": "en",
}  # fmt: skip

# Slack's short names for some flags (most are `flag-xx`).
_SLACK_FLAGS = {"fr": "fr", "de": "de", "es": "es", "it": "it", "jp": "jp", "cn": "cn", "kr": "kr",
                "ru": "ru", "us": "us", "gb": "gb", "uk": "gb"}  # fmt: skip


def language(text: str) -> Language:
    """The language `text` names ("fr", "French", "français", "pt-BR"); TaskError if none."""
    key = text.strip().lower()
    key = _ALIASES.get(key, key)
    base = key.split("-")[0].split("_")[0] if len(key) > 3 and key[2:3] in "-_" else key
    if base in LANGUAGES:
        return Language(base, LANGUAGES[base])
    for code, name in LANGUAGES.items():
        if name.lower() == key:
            return Language(code, name)
    raise TaskError(
        f"I don't know the language {text.strip()!r}: name it in English or by its two-letter code "
        "(French, fr, de, ja…)."
    )


def flag_country(emoji: str) -> str | None:
    """The country code of a flag: 🇫🇷 (two regional indicators) or a Slack name (`flag-fr`, `jp`);
    None when `emoji` is no country flag at all."""
    chars = [ord(c) for c in emoji.strip()]
    if len(chars) == 2 and all(0x1F1E6 <= c <= 0x1F1FF for c in chars):
        return "".join(chr(c - 0x1F1E6 + ord("a")) for c in chars)
    name = emoji.strip().strip(":").lower()
    if name.startswith("flag-") and len(name) == 7:
        return name[5:]
    return _SLACK_FLAGS.get(name)


def is_flag(emoji: str) -> bool:
    """Whether a reaction is a flag of any kind (country flags, 🏴‍☠️, 🏳️‍🌈, `pirate_flag`…)."""
    name = emoji.strip().strip(":").lower()
    if flag_country(emoji) is not None or "flag" in name:
        return True
    return any(c in emoji for c in ("\U0001f3f4", "\U0001f3f3", "\U0001f6a9"))


def flag_language(emoji: str) -> Language:
    """The language a flag reaction asks for; TaskError (one line) for a flag that means none."""
    country = flag_country(emoji)
    code = _COUNTRIES.get(country or "")
    if code is None:
        raise TaskError(f"No language goes with the flag {emoji}: react with a country's flag (🇫🇷, 🇩🇪, 🇯🇵…).")
    return Language(code, LANGUAGES[code])
