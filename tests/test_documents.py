"""Loaders and splitters on real files: PDF pages, HTML cleaning, heading paths, code lines, bad files."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from config import Settings
from retrieval.chunking import iter_chunks, split
from retrieval.loaders import (
    LoadError,
    UnsupportedFileError,
    check_regular,
    html_to_markdown,
    iter_files,
    load,
)
from retrieval.store import DocumentStore


def write_pdf(path: Path, pages: list[str], title: str | None = None) -> None:
    """A minimal valid PDF 1.4: one Helvetica text line per page, with a correct xref table."""
    objects: list[bytes] = []
    kids = " ".join(f"{3 + 2 * n} 0 R" for n in range(len(pages)))
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {len(pages)} >>".encode())
    font_id = 3 + 2 * len(pages)
    for n, text in enumerate(pages):
        content_id = 4 + 2 * n
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {content_id} 0 R "
            f"/Resources << /Font << /F1 {font_id} 0 R >> >> >>".encode()
        )
        escaped = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
        stream = f"BT /F1 12 Tf 72 720 Td ({escaped}) Tj ET".encode()
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    info_id = None
    if title:
        objects.append(f"<< /Title ({title}) >>".encode())
        info_id = len(objects)
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{offset:010d} 00000 n \n".encode() for offset in offsets)
    trailer = (
        f"<< /Size {len(objects) + 1} /Root 1 0 R" + (f" /Info {info_id} 0 R" if info_id else "") + " >>"
    )
    out += f"trailer\n{trailer}\nstartxref\n{xref}\n%%EOF\n".encode()
    path.write_bytes(bytes(out))


def test_pdf_pages_become_chunks_located_by_page(tmp_path: Path) -> None:
    pdf = tmp_path / "manual.pdf"
    write_pdf(
        pdf, ["Scanner batteries last eleven hours.", "Replace the belt every 900 hours."], "Depot manual"
    )
    doc = load(pdf)
    assert (doc.kind, doc.title, [p.number for p in doc.pages]) == ("pdf", "Depot manual", [1, 2])
    chunks = split(doc, 200, 20)
    assert [(c.location, c.page, c.index) for c in chunks] == [("page 1", 1, 0), ("page 2", 2, 1)]
    assert "eleven hours" in chunks[0].text and "900 hours" in chunks[1].text


def test_a_pdf_is_searchable_and_cited_by_page(tmp_path: Path, settings: Settings) -> None:
    pdf = tmp_path / "manual.pdf"
    write_pdf(pdf, ["Scanner batteries last eleven hours.", "Replace the conveyor belt every 900 hours."])
    store = DocumentStore.open(settings)
    assert store.ingest([pdf]).added == [str(pdf.resolve())]
    [best] = store.query("how often should the conveyor belt be replaced", ["global"], 1)
    assert best.location == "page 2" and best.page == 2 and best.title == "manual"


def test_html_keeps_headings_and_text_but_not_scripts_or_navigation() -> None:
    title, text = html_to_markdown(
        "<html><head><title>Ops &amp; more</title><style>p{}</style></head><body><nav>Home</nav>"
        "<h1>Ops</h1><h2>Shifts</h2><p>Night shift   starts at <b>22:00</b>.</p>"
        "<ul><li>Bring a vest</li></ul>"
        "<script>alert(1)</script><footer>(c)</footer></body></html>"
    )
    assert title == "Ops & more"
    assert text == "# Ops\n\n## Shifts\n\nNight shift starts at 22:00.\n- Bring a vest"


def test_markdown_chunks_carry_their_heading_path_and_stay_within_size(tmp_path: Path) -> None:
    guide = tmp_path / "guide.md"
    body = " ".join(f"Sentence number {n} about installing on Linux." for n in range(60))
    guide.write_text(f"# Guide\n\nIntro.\n\n## Install\n\n### Linux\n\n{body}\n\n## Usage\n\nRun it.\n")
    doc = load(guide)
    chunks = split(doc, 300, 50)
    assert doc.title == "Guide"
    assert {c.location for c in chunks} == {"Guide", "Guide > Install > Linux", "Guide > Usage"}
    assert all(len(c.text) <= 300 for c in chunks)
    assert [c.index for c in chunks] == list(range(len(chunks)))
    linux = [c for c in chunks if c.location.endswith("Linux")]
    assert len(linux) > 3
    # Neighbours overlap, so a fact cut at a boundary is still whole in one of them.
    assert linux[0].text[-20:] in linux[1].text or linux[1].text[:20] in linux[0].text


def test_code_chunks_say_which_lines_they_cover(tmp_path: Path) -> None:
    source = tmp_path / "jobs.py"
    functions = "\n\n".join(f"def job_{n}() -> int:\n    '''Job {n}.'''\n    return {n}\n" for n in range(40))
    source.write_text(functions)
    doc = load(source)
    assert (doc.kind, doc.language, doc.title) == ("code", "python", "jobs.py")
    chunks = split(doc, 200, 0)
    first_line = int(chunks[1].location.split()[1].split("-")[0])
    lines = source.read_text().splitlines()
    assert chunks[1].text.splitlines()[0] == lines[first_line - 1]


@pytest.mark.parametrize(
    ("name", "data", "error", "message"),
    [
        ("photo.xyz", b"abc", UnsupportedFileError, "unsupported file type .xyz"),
        ("empty.md", b"  \n\n", LoadError, "is empty"),
        ("blob.txt", b"abc\x00\x01\x02", LoadError, "not a text file"),
        ("fake.pdf", b"%PDF-1.4 garbage", LoadError, "not a readable PDF"),
    ],
)
def test_bad_files_are_refused_with_a_message_naming_them(
    tmp_path: Path, name: str, data: bytes, error: type[Exception], message: str
) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(error, match=message) as raised:
        load(path)
    assert name in str(raised.value)


def test_folders_are_walked_without_hidden_or_build_folders(tmp_path: Path) -> None:
    for relative in [
        "a.md",
        "sub/b.txt",
        "sub/.hidden/c.md",
        "node_modules/d.js",
        ".e.md",
        "f.xyz",
        "sub/g.py",
    ]:
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("text")
    found = [p.relative_to(tmp_path.resolve()).as_posix() for p in iter_files([tmp_path, tmp_path / "a.md"])]
    assert found == ["a.md", "sub/b.txt", "sub/g.py"]
    with pytest.raises(LoadError, match="No such file"):
        list(iter_files([tmp_path / "missing"]))


def test_a_long_markdown_file_is_split_in_segments_without_losing_heading_paths(tmp_path: Path) -> None:
    # Over a megabyte: split a segment at a time, each chunk must keep its heading path.
    # Most segments start at a "## Detail" heading, whose chunks need the "# Part" above it.
    sections = []
    for n in range(40):
        sections.append(f"# Part {n}\n")
        for d in range(10):
            body = "\n\n".join(
                f"Paragraph {p} of part {n}.{d}. " + "Words fill the line. " * 12 for p in range(12)
            )
            sections.append(f"## Detail {n}.{d}\n\n{body}\n\n```\n# not a heading {n}.{d}\n```\n")
    guide = tmp_path / "long.md"
    guide.write_text("\n".join(sections))
    doc = load(guide)
    assert len(doc.pages[0].text) > 1_000_000
    chunks = list(iter_chunks(doc, 500, 50))
    padded = "\n" + doc.pages[0].text
    assert [c.index for c in chunks] == list(range(len(chunks)))
    for chunk in chunks:
        part = re.search(r"(?:of part|not a heading) (\d+)\.(\d+)", chunk.text)
        assert part is not None, chunk
        assert chunk.location == f"Part {part.group(1)} > Detail {part.group(1)}.{part.group(2)}", chunk
        # Offsets are the whole text's: a chunk starts within its own part.
        assert chunk.start >= 0
        heading = padded.rfind("\n# Part ", 0, chunk.start + 2)
        assert padded.startswith(f"\n# Part {part.group(1)}\n", heading), chunk


def test_a_long_code_file_keeps_its_line_numbers(tmp_path: Path) -> None:
    source = tmp_path / "long.py"
    source.write_text("".join(f"def f{n}(a):\n    return a * {n}\n\n" for n in range(30_000)))
    lines = source.read_text().split("\n")
    for chunk in iter_chunks(load(source), 400, 0):
        first, last = (int(n) for n in chunk.location.split()[1].split("-"))
        assert "\n".join(lines[first - 1 : last]).strip() == chunk.text


def test_devices_and_pipes_are_refused_with_a_reason(tmp_path: Path) -> None:
    with pytest.raises(LoadError, match="character device"):
        list(iter_files([Path("/dev/zero")]))
    with pytest.raises(LoadError, match="character device"):
        load(Path("/dev/zero"))
    fifo = tmp_path / "notes.md"
    os.mkfifo(fifo)
    # In a folder it is offered, so that ingesting reports it instead of passing over it.
    assert list(iter_files([tmp_path])) == [fifo.resolve()]
    with pytest.raises(LoadError, match="named pipe"):
        check_regular(fifo)


def test_an_ingested_document_is_found_and_read_back_whole_after_its_file_is_gone(
    tmp_path: Path, settings: Settings
) -> None:
    # Long paragraphs are cut with overlapping chunks; reading back must give each sentence once.
    sentences = [f"Sentence number {n} says the on-call rota changes on day {n * 7}." for n in range(120)]
    body = "\n\n".join(" ".join(sentences[p : p + 20]) for p in range(0, len(sentences), 20))
    guide = tmp_path / "rota.md"
    guide.write_text(f"# Rota\n\n{body}\n")
    store = DocumentStore.open(settings)
    store.ingest([guide])
    [doc] = store.documents()
    assert doc.chunks > 3
    guide.unlink()
    for name in (doc.id, str(guide), guide.resolve().as_uri(), "rota.md"):
        assert store.find(name) == doc, name
    assert store.find("nothing.md") is None and store.find("file:///nowhere/rota.md") is None
    text = store.document_text(doc)
    for sentence in sentences:
        assert text.count(sentence) == 1, sentence
    assert text.index(sentences[0]) < text.index(sentences[60]) < text.index(sentences[119])
