"""No documented command rots: every ``python -m ablation.run ...`` line of README.md and docs/*.md (fenced code
and inline code), and every ``make sweep`` / ``make demo`` line as make expands it, is composed by Hydra with the
project's schema and checked by ``spec``, as ``python -m ablation.run ... --cfg job`` would, in process.

A sweep (``-m``) is composed as its first job (each axis at its first value); each other value of each axis, on
the command line or in its experiment file (``hydra.sweeper.params``), is checked too, so a variant renamed in
conf/variant/ but not in a page or an experiment fails here.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from dataclasses import dataclass
from functools import cache

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, ValueType
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from ablation import schema, spec
from ablation.engine.errors import UserError
from ablation.paths import CONF_DIR
from tests.support import PROJECT, config_and_hydra

DOC_FILES = (PROJECT / "README.md", *sorted((PROJECT / "docs").glob("*.md")))
RUN = "python -m ablation.run"
#: make targets whose recipe is one ``python -m ablation.run`` line (``make tune`` is a shell loop of the same).
MAKE_LINE = re.compile(r"(?:^|\s)make\s+((?:sweep|demo)(?:\s.*)?)$")
#: Flags of ``python -m ablation.run`` that are not overrides (and ``...``, a page's "and so on"); the second set
#: takes a value.
FLAGS = {"-m", "--multirun", "--help", "-h", "--hydra-help", "--info", "--resolve", "..."}
FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p"}
SWEEPS = {ValueType.CHOICE_SWEEP, ValueType.SIMPLE_CHOICE_SWEEP, ValueType.RANGE_SWEEP, ValueType.GLOB_CHOICE_SWEEP}
#: What a command that does not compose raises: Hydra's and OmegaConf's errors, or spec's one-line refusal.
REFUSALS = (HydraException, OmegaConfBaseException, UserError)


@dataclass(frozen=True)
class Documented:
    """One documented command: where it is (``README.md:42``) and the shell text from ``python`` or ``make``."""

    where: str
    text: str


def snippets(markdown: str) -> list[tuple[int, str]]:
    """Shell text of a Markdown page with its line number: each line of fenced code (backslash continuations
    joined), and each inline code span outside fences."""
    found: list[tuple[int, str]] = []
    fenced, pending, start = False, "", 0
    for number, line in enumerate(markdown.splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif fenced and line.rstrip().endswith("\\"):
            start = start if pending else number
            pending += line.rstrip()[:-1] + " "
        elif fenced:
            found.append((start if pending else number, pending + line))
            pending = ""
        else:
            found += [(number, span) for span in re.findall(r"`([^`]+)`", line)]
    return found


def documented(markdown: str, name: str) -> list[Documented]:
    """The ``python -m ablation.run`` and ``make sweep|demo`` commands of a page (environment prefixes dropped)."""
    commands = []
    for number, text in snippets(markdown):
        if RUN in text:
            commands.append(Documented(f"{name}:{number}", text[text.index(RUN) :]))
        elif made := MAKE_LINE.search(text):
            commands.append(Documented(f"{name}:{number}", f"make {made[1]}"))
    return commands


def every_documented() -> list[Documented]:
    return [c for path in DOC_FILES for c in documented(path.read_text(), path.relative_to(PROJECT).as_posix())]


def run_words(command: Documented) -> list[str]:
    """The words after ``python -m ablation.run``; for a make line, those of the command make would run."""
    if not command.text.startswith("make "):
        return shlex.split(command.text, comments=True)[3:]
    target, *assignments = shlex.split(command.text, comments=True)[1:]
    done = subprocess.run(
        ["make", "-n", "-s", "-o", "install", target, *(a for a in assignments if a != "...")],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, f"{command.where}: {command.text}: {done.stderr}"
    recipe = done.stdout.replace("\\\n", " ")
    line = next((x for x in recipe.splitlines() if "-m ablation.run" in x), None)
    assert line is not None, f"{command.where}: make prints no ablation.run command: {recipe}"
    words = shlex.split(line)
    return words[words.index("ablation.run") + 1 :]


def overrides_of(words: list[str]) -> tuple[list[str], bool]:
    """Hydra's overrides among the words, and whether the command is a sweep (``-m``)."""
    overrides, skip = [], False
    for word in words:
        if skip or word in FLAGS or word in FLAGS_WITH_VALUE:
            skip = word in FLAGS_WITH_VALUE
            continue
        overrides.append(word)
    return overrides, "-m" in words or "--multirun" in words


def values(override: Override) -> list[str] | None:
    """A sweep override as one override per value; None for what cannot be listed (Optuna's intervals)."""
    if override.value_type not in SWEEPS:
        return None
    if override.value_type == ValueType.GLOB_CHOICE_SWEEP:
        options = sorted(p.stem for p in (CONF_DIR / override.key_or_group).glob("*.yaml"))
        listed = override.value().filter(options)
    else:
        listed = list(override.sweep_string_iterator())
    return [f"{override.get_key_element()}={v}" for v in listed]


def plan(overrides: list[str], axes_of_config: dict[str, str]) -> tuple[tuple[str, ...], list[str]]:
    """A sweep as its first job (each axis at its first value) and the other values, each checked alone
    (:func:`check_value`): each job of the product would cost a compose (a fifth of a second) and find no
    more. The config's axes (its experiment file's) count for keys the command line leaves open, as in Hydra's
    sweeper."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    on_line = {o.key_or_group for o in parsed}
    open_axes = [f"{key}={value}" for key, value in axes_of_config.items() if key not in on_line]
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    axes = [listed for o in parsed if o.is_sweep_override() and (listed := values(o))]
    of_config = [listed for o in OverridesParser.create().parse_overrides(open_axes) if (listed := values(o))]
    alone = [value for axis in axes for value in axis[1:]] + [value for axis in of_config for value in axis]
    return (*fixed, *(axis[0] for axis in axes)), alone


@cache
def check_job(overrides: tuple[str, ...]) -> dict[str, str]:
    """Compose one job with Hydra and the schema, check it with spec; the sweeper's axes of its config."""
    config, hydra = config_and_hydra(overrides)
    spec.from_config(schema.plain(config))
    return dict(hydra.sweeper.get("params") or {})


def check_value(override: str) -> None:
    """One more value of a sweep's axis: an option of conf/ (every file there composes: tests/test_schema.py)
    or, for a key or one of Hydra's own options, composed alone on the defaults."""
    group, _, option = override.partition("=")
    if not (CONF_DIR / group / f"{option}.yaml").is_file():
        check_job((override,))


def check(command: Documented) -> int:
    """Every job of a documented command composes and passes spec's checks; the number of composes it took."""
    overrides, sweep = overrides_of(run_words(command))
    if not sweep:
        check_job(tuple(overrides))
        return 1
    first, _ = plan(overrides, {})
    _, alone = plan(overrides, check_job(first))
    for value in alone:
        check_value(value)
    return 1 + len(alone)


@pytest.mark.parametrize(
    "command",
    # a make line starts make (make -n): slow
    [pytest.param(c, marks=pytest.mark.slow) if c.text.startswith("make ") else c for c in every_documented()],
    ids=lambda c: c.where,
)
def test_documented_command_composes(command: Documented) -> None:
    try:
        assert check(command) >= 1
    except REFUSALS as err:
        pytest.fail(f"{command.where}: `{command.text}` does not compose: {err}")


def test_readme_and_docs_are_read() -> None:
    """The four command lines of the README's "One run" and the sweeps of docs/ are among those checked."""
    texts = {c.text.split("#")[0].strip() for c in every_documented()}
    assert {
        "python -m ablation.run variant=vgg16_tanh",
        "python -m ablation.run variant=avg_pool images.width=256 run.iterations=300 run.seed=1",
        "python -m ablation.run --help",
        "make sweep EXPERIMENT=all SIZE=64 ITER=30 SEEDS=0,1 WEIGHTS=random",
    } <= texts
    assert {c.where.split(":")[0] for c in every_documented()} >= {"README.md", "docs/cluster.md"}


PAGE = """\
Run `python -m ablation.run -m variant=vgg16,nope run.seed=0,1` or:

```sh
MLFLOW_TRACKING_URI=http://host:5000 python -m ablation.run run.iteratons=3 \\
    images.width=64          # a misspelt key, on a continued line
python -m ablation.run optim.lr=-1
make sweep EXPERIMENT=table9 SIZE=64
make report
```
and `make sweep EXPERIMENT=table1 SIZE=64 SEEDS=0`.
"""


@pytest.mark.slow  # make -n
def test_the_extractor_finds_each_command_of_a_page() -> None:
    """Five commands: inline code, a fenced line continued with a backslash, two more fenced lines, inline make;
    ``make report`` is not one (it composes nothing)."""
    found = documented(PAGE, "page.md")
    assert [c.where for c in found] == ["page.md:1", "page.md:4", "page.md:6", "page.md:7", "page.md:10"]
    assert found[1].text.startswith("python -m ablation.run run.iteratons=3 ")
    assert overrides_of(run_words(found[1])) == (["run.iteratons=3", "images.width=64"], False)
    assert overrides_of(run_words(found[4]))[0] == ["experiment=table1", "hydra/launcher=basic", "images.width=64",
                                                   "run.seed=0"]  # fmt: skip


@pytest.mark.slow  # make -n
def test_a_bad_documented_command_fails() -> None:
    """An unknown variant inside a sweep, a misspelt key, a value spec refuses and an unknown experiment each
    fail; the good sweep of table1 takes six composes: the command, then each of table1's five variants."""
    bad, good = documented(PAGE, "page.md")[:4], documented(PAGE, "page.md")[4]
    for command in bad:
        with pytest.raises(REFUSALS):
            check(command)
    assert check(good) == 6


def test_a_sweep_is_its_first_job_and_each_other_value_alone() -> None:
    """``variant=a,b run.seed=0,1,2``: the first job, then vgg16, seeds 1 and 2 alone; the experiment's axes
    count only for keys the command line leaves open (its seeds give way to ``run.seed=7``)."""
    assert plan(["variant=original,vgg16", "run.seed=0,1,2", "weights=random"], {}) == (
        ("weights=random", "variant=original", "run.seed=0"),
        ["variant=vgg16", "run.seed=1", "run.seed=2"],
    )
    assert plan(["run.seed=7"], {"variant": "original,avg_pool", "run.seed": "0,1,2"}) == (
        ("run.seed=7",),
        ["variant=original", "variant=avg_pool"],
    )
    assert plan(["experiment=glob(table*)"], {})[1] == ["experiment=table2"]


def test_every_doc_page_is_linked_from_the_readme() -> None:
    readme = (PROJECT / "README.md").read_text()
    pages = [p.relative_to(PROJECT).as_posix() for p in DOC_FILES[1:]]
    assert pages and all(f"]({page}" in readme for page in pages), pages
    assert len(readme.splitlines()) <= 150


def anchors(markdown: str) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#+ (.+)$", markdown, flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def test_every_link_anchor_and_path_in_the_docs_exists() -> None:
    """Links between pages (with their #anchors), and every project path the docs quote in inline code."""
    missing = []
    for path in DOC_FILES:
        text = path.read_text()
        for link, anchor in re.findall(r"\]\(([^)#:]*)(?:#([^)]*))?\)", text):
            target = path.parent / link if link else path
            if not target.exists():
                missing.append(f"{path.name}: link {link}")
            elif anchor and anchor not in anchors(target.read_text()):
                missing.append(f"{path.name}: anchor {link}#{anchor}")
        for quoted in re.findall(r"`((?:ablation|tests|conf|docs|hydra_plugins|\.ci)/[\w./-]*)`", text):
            if not (PROJECT / quoted).exists():
                missing.append(f"{path.name}: path {quoted}")
    assert not missing, missing
