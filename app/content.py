"""Content generation: split a long text into chapters, summarise them, find its characters.

Deliberately heuristic and dependency-free; a language-model provider would plug in behind the
same `generate_content` signature and result shape.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from app.params import ContentParams
from stack.jobs.registry import JobContext

# Kana and CJK ideographs: scripts without spaces, where each character counts as one word.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_WORD = re.compile(rf"[{_CJK}]|[^\W{_CJK}]+(?:['’][^\W{_CJK}]+)*")  # noqa: RUF001

_NUMBER_WORDS = (
    "one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|thirteen|fourteen|"
    "fifteen|sixteen|seventeen|eighteen|nineteen|twenty|thirty|forty|fifty"
)
_ROMAN = r"(?=[ivxlcdm])m{0,4}(?:cm|cd|d?c{0,3})(?:xc|xl|l?x{0,3})(?:ix|iv|v?i{0,3})"
_CHAPTER_HEADING = re.compile(
    rf"^(?:chapter|chap\.)\s+(?:\d+|{_ROMAN}|(?:{_NUMBER_WORDS})(?:[- ](?:{_NUMBER_WORDS}))?)"
    r"(?:\W.*)?$",
    re.IGNORECASE,
)
_MARKDOWN_HEADING = re.compile(r"^(#{1,6})\s+\S.*$")
_CJK_HEADING = re.compile(r"^第[0-9０-９一二三四五六七八九十百千零〇两]+[章回节節卷].*$")  # noqa: RUF001
# Longer lines starting with "Chapter 3 ..." are prose that happens to begin that way.
_MAX_HEADING_CHARS = 100

_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
# Western full stops need a following space ("3.14", "e.g.x" are not ends); CJK ones do not.
_SENTENCE_END = re.compile(
    r"[.!?…]+[\"'”’)\]]*(?=\s|$)|[。！？]+[”’」』）]*"  # noqa: RUF001
)
_ABBREVIATIONS = frozenset({"mr", "mrs", "ms", "dr", "st", "jr", "sr", "prof", "vs", "etc", "no"})
_MAX_SUMMARY_CHARS = 300

_NAME_WORD = re.compile(r"[A-ZÀ-ÖØ-Þ][a-zß-öø-ÿ]+(?:['’][a-z]+)?")  # noqa: RUF001
# Capitalised for grammar, not because they name someone.
_STOPWORD_TEXT = """
    a an the he she it they we i you his her hers its their our my your me him them us this that
    these those there here then when where what which who whom whose why how and but or nor so
    yet if in on at of for to from with without as by after before about above below into over
    under again once all any both each few more most other some such no not only own same than
    too very just also still even now well yes oh ah ok okay perhaps maybe chapter part book
    prologue epilogue contents mr mrs ms dr sir madam lady lord miss one two three first last
    next monday tuesday wednesday thursday friday saturday sunday january february march april
    may june july august september october november december god
"""
_STOPWORDS = frozenset(_STOPWORD_TEXT.split())
_MAX_NAME_WORDS = 3


@dataclass
class Section:
    title: str
    # A list, not a growing string: appending line by line to a str is quadratic on long texts.
    lines: list[str] = field(default_factory=list)
    heading_level: int | None = None  # markdown '#' count, when the heading was one

    @property
    def body(self) -> str:
        return "\n".join(self.lines)


def count_words(text: str) -> int:
    return len(_WORD.findall(text))


def _heading_level(line: str) -> int | None:
    """0 for a chapter-style heading, the '#' count for markdown, None for ordinary text."""
    stripped = line.strip()
    if not stripped or len(stripped) > _MAX_HEADING_CHARS:
        return None
    if markdown := _MARKDOWN_HEADING.match(stripped):
        return len(markdown.group(1))
    if _CHAPTER_HEADING.match(stripped) or _CJK_HEADING.match(stripped):
        return 0
    return None


def _heading_title(line: str) -> str:
    return line.strip().lstrip("#").strip()


def split_on_headings(text: str) -> tuple[str, list[Section]]:
    """Text before the first heading, and one section per heading (empty list: no headings)."""
    preamble: list[str] = []
    sections: list[Section] = []
    for line in text.splitlines():
        level = _heading_level(line)
        if level is not None:
            sections.append(Section(_heading_title(line), heading_level=level or None))
        elif sections:
            sections[-1].lines.append(line)
        else:
            preamble.append(line)
    return "\n".join(preamble).strip(), sections


def _paragraph_units(text: str, limit: int) -> list[str]:
    """Paragraphs, with any paragraph longer than `limit` words cut at sentence ends."""
    units: list[str] = []
    for paragraph in _PARAGRAPH_BREAK.split(text):
        paragraph = paragraph.strip()
        if not paragraph:
            continue
        if count_words(paragraph) <= limit:
            units.append(paragraph)
        else:
            units.extend(_sentences(paragraph))
    return units


def split_by_words(text: str, chapter_words: int) -> list[Section]:
    """Chunks of about `chapter_words` words, closed at the first paragraph end past the target."""
    sections: list[Section] = []
    current: list[str] = []
    words = 0
    for unit in _paragraph_units(text, chapter_words):
        current.append(unit)
        words += count_words(unit)
        if words >= chapter_words:
            sections.append(Section(f"Chapter {len(sections) + 1}", ["\n\n".join(current)]))
            current, words = [], 0
    if current:
        sections.append(Section(f"Chapter {len(sections) + 1}", ["\n\n".join(current)]))
    return sections


def _sentences(text: str) -> list[str]:
    sentences: list[str] = []
    start = 0
    for match in _SENTENCE_END.finditer(text):
        before = text[start : match.start()].split()
        if match.group().startswith(".") and before and before[-1].lower() in _ABBREVIATIONS:
            continue  # "Mr. Darcy" does not end a sentence
        sentence = text[start : match.end()].strip()
        if sentence:
            sentences.append(sentence)
        start = match.end()
    if tail := text[start:].strip():
        sentences.append(tail)
    return sentences


def first_sentence(text: str) -> str:
    collapsed = " ".join(text.split())
    sentences = _sentences(collapsed)
    if not sentences:
        return ""
    summary = sentences[0]
    if len(summary) > _MAX_SUMMARY_CHARS:
        summary = summary[: _MAX_SUMMARY_CHARS - 1].rstrip() + "…"
    return summary


def _chapters(params: ContentParams) -> tuple[str | None, list[Section]]:
    """The book title found in the text (if any) and its chapters."""
    preamble, sections = split_on_headings(params.text)
    if not sections:
        return None, split_by_words(params.text, params.chapter_words)

    title: str | None = None
    first = sections[0]
    # "# Book" straight above "## Chapter 1" names the book, it is not a chapter of its own.
    if (
        len(sections) > 1
        and first.heading_level is not None
        and not first.body.strip()
        and (sections[1].heading_level or 0) > first.heading_level
    ):
        title = first.title
        sections = sections[1:]
    if preamble:
        # A lone short line above the first chapter is a title; more than that is a preface.
        if "\n" not in preamble and len(preamble) <= 200 and title is None:
            title = preamble
        else:
            sections.insert(0, Section("Preface", [preamble]))
    return title, sections


def _is_sentence_start(text: str, position: int) -> bool:
    index = position - 1
    while index >= 0 and (text[index].isspace() or text[index] in "\"'“‘(—-*_"):  # noqa: RUF001
        index -= 1
    return index < 0 or text[index] in ".!?:;…。！？"  # noqa: RUF001


def _name_runs(text: str) -> list[tuple[str, bool]]:
    """Runs of adjacent capitalised non-stopwords, each with whether it opens a sentence."""
    runs: list[tuple[str, bool]] = []
    current: list[str] = []
    run_start = 0
    last_end = -2  # no word yet, so nothing is adjacent

    def close() -> None:
        if not current:
            return
        if len(current) <= _MAX_NAME_WORDS:
            runs.append((" ".join(current), _is_sentence_start(text, run_start)))
        else:
            # Title-case prose ("The Old Mill Road Inn Was...") is not one long name.
            runs.extend((word, False) for word in current)
        current.clear()

    for match in _NAME_WORD.finditer(text):
        word = re.sub(r"['’]s$", "", match.group())  # noqa: RUF001
        adjacent = match.start() == last_end + 1 and text[last_end] == " "
        if not adjacent or word.lower() in _STOPWORDS:
            close()
        last_end = match.end()
        if word.lower() in _STOPWORDS:
            continue
        if not current:
            run_start = match.start()
        current.append(word)
    close()
    return runs


def find_characters(text: str) -> list[dict[str, Any]]:
    """Capitalised names (one to three words) mentioned at least twice, most mentioned first.

    A word seen only at the start of sentences and also in lower case elsewhere ("Suddenly",
    "Later") is grammar, not a name.
    """
    mentions: Counter[str] = Counter()
    mid_sentence: set[str] = set()
    for name, opens_sentence in _name_runs(text):
        mentions[name] += 1
        if not opens_sentence:
            mid_sentence.add(name)
    lower_words = {word.lower() for word in _WORD.findall(text) if word.islower()}
    ranked = sorted(mentions.items(), key=lambda item: (-item[1], item[0]))
    return [
        {"name": name, "mentions": count}
        for name, count in ranked
        if count >= 2 and (name in mid_sentence or name.lower() not in lower_words)
    ]


def generate_content(params: ContentParams, job: JobContext) -> dict[str, Any]:
    """Chapters (with word counts and one-sentence summaries) and characters of a text."""
    job.progress(5, "splitting into chapters")
    found_title, sections = _chapters(params)
    job.progress(10, f"found {len(sections)} chapters")

    chapters: list[dict[str, Any]] = []
    for index, section in enumerate(sections, start=1):
        chapters.append(
            {
                "index": index,
                "title": section.title,
                "words": count_words(section.body),
                "summary": first_sentence(section.body),
            }
        )
        job.progress(10 + 80 * index / len(sections), f"chapter {index}/{len(sections)}")

    job.progress(95, "finding characters")
    # Headings are left out: "Chapter Seven: Alice" would otherwise count as a mention.
    characters = find_characters("\n\n".join(section.body for section in sections))

    job.progress(100, "done")
    return {
        "title": params.title or found_title,
        "chapters": chapters,
        "characters": characters,
        "words": sum(chapter["words"] for chapter in chapters),
    }
