from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from scribe_service.library import LibraryError, load_library, load_prototype
from support import PROTOTYPES

FILES = sorted(PROTOTYPES.glob("*.toml"))


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_each_prototype_is_valid(path: Path) -> None:
    prototype = load_prototype(path)
    assert prototype.id == path.stem


def test_library_coverage() -> None:
    library = load_library(PROTOTYPES)
    assert len(library.routable()) >= 24
    domains = {p.domain for p in library.routable()}
    assert {"math", "tool_use", "search_qa"} <= domains
    assert library.fallback.fallback and not library.fallback.exemplars
    exemplars = [e for p in library.routable() for e in p.exemplars]
    assert len(exemplars) == len(set(exemplars)), "an exemplar appears in two prototypes"


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    target = tmp_path / "prototypes"
    shutil.copytree(PROTOTYPES, target)
    return target


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def test_version_is_a_content_hash(copy: Path) -> None:
    before = load_library(copy).version
    assert load_library(copy).version == before
    (copy / "templates" / "judge_user.txt").write_text("{{step}}")
    assert load_library(copy).version != before


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        pytest.param(("[levels]", "[levels]\n4 = 'too high a level'"), "levels", id="extra-level"),
        pytest.param(("max_score = ", "max_score = 7 #"), "max_score", id="cap-out-of-range"),
        pytest.param(("domain = ", "domain = 'cooking' #"), "domain", id="unknown-domain"),
        pytest.param(("id = ", "id = 'other_name' #"), "must match the file name", id="id-vs-file"),
        pytest.param(("exemplars = [", "exemplars = ['a', 'a', "), "exemplars", id="dup-exemplar"),
        pytest.param(("name = ", "nme = "), "name", id="misspelt-field"),
        pytest.param(("[levels]", "[levels"), "not valid TOML", id="bad-toml"),
    ],
)
def test_errors_name_the_file_and_field(
    copy: Path, breakage: tuple[str, str], message: str
) -> None:
    target = next(p for p in sorted(copy.glob("*.toml")) if "fallback = true" not in p.read_text())
    _edit(target, *breakage)
    with pytest.raises(LibraryError) as error:
        load_library(copy)
    assert target.name in str(error.value)
    assert message in str(error.value)


def test_exactly_one_fallback(copy: Path) -> None:
    fallback = next(p for p in copy.glob("*.toml") if "fallback = true" in p.read_text())
    fallback.unlink()
    with pytest.raises(LibraryError, match="exactly one prototype with `fallback = true`"):
        load_library(copy)


def test_missing_template(copy: Path) -> None:
    (copy / "templates" / "judge_system.txt").unlink()
    with pytest.raises(LibraryError, match="judge_system.txt"):
        load_library(copy)


@pytest.mark.parametrize(
    ("checks", "message"),
    [
        pytest.param('["arithmetic", "speling"]', "unknown check 'speling'", id="unknown"),
        pytest.param('["arithmetic", "arithmetic"]', "checks repeat", id="repeated"),
    ],
)
def test_a_bad_check_name_is_refused_naming_file_and_check(
    copy: Path, checks: str, message: str
) -> None:
    target = copy / "arithmetic_computation.toml"
    _edit(target, 'checks = ["arithmetic"]', f"checks = {checks}")
    with pytest.raises(LibraryError) as error:
        load_library(copy)
    assert target.name in str(error.value) and "checks" in str(error.value)
    assert message in str(error.value)


def test_checks_are_declared_where_steps_compute_call_tools_or_answer() -> None:
    library = load_library(PROTOTYPES)
    by_id = library.prototypes
    for prototype in by_id.values():
        if prototype.domain in ("math", "general"):
            assert "arithmetic" in prototype.checks, prototype.id
        if prototype.domain in ("tool_use", "search_qa", "general"):
            assert "tool_arguments" in prototype.checks, prototype.id
    for final in ("final_answer_statement", "answer_synthesis", "final_response_from_tools"):
        assert "reference_answer" in by_id[final].checks
    assert "answer_grounded" in by_id["answer_synthesis"].checks
    assert "reference_answer" in library.fallback.checks
