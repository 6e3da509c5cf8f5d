"""Every config in ``experiments/configs/`` holds every setting of the results it is cited for, so that
``sab-mips train --config X`` reproduces them.

The citations are read from the documents themselves (README, ``docs/``, ``experiments/RESULTS.md``,
``benchmarks/README.md``, the Makefile), so the docs and the configs cannot drift apart:

* every config is cited somewhere, and every config cited exists;
* a ``sab-mips train`` command that names a config gets nothing from its other flags: parsed with the real
  CLI parser and merged as ``train`` merges them, it gives the same model and training configs as the
  config alone (``--run-dir`` and the like are not settings). A command of another subcommand (``compare``)
  states its changes to the shared config as flags, and must parse;
* a config that stands for a run of a study plan (``experiments/plans/``) equals that run's flags.
"""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from sab_mips import SABConfig
from sab_mips.cli import build_parser
from sab_mips.cli.flags import explicit_values, merge_configs
from sab_mips.io import read_json
from sab_mips.training import TrainConfig

from image_files import fashion_dir  # noqa: F401  (a fixture)

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = "experiments/configs/"
CONFIGS = sorted(p.name for p in (ROOT / CONFIG_DIR).glob("*.json"))
# config -> (plan, setting, seed): the study run whose settings the config holds
PLAN_RUNS = {
    "copy100_sab.json": ("copy100_katt_stabilise.json", "cosine", 0),
    "adding200_sab.json": ("adding200_varlen.json", "recommended", 0),
}


def documents() -> list[Path]:
    docs = [ROOT / "README.md", ROOT / "Makefile", ROOT / "experiments/RESULTS.md", ROOT / "benchmarks/README.md"]
    return [p for p in docs if p.is_file()] + sorted((ROOT / "docs").glob("**/*.md"))


def commands(text: str) -> list[str]:
    """Every ``sab-mips ...`` command in a document: inline code spans and code lines (an environment
    prefix dropped, backslash continuations joined, a trailing ``# comment`` kept for shlex to drop)."""
    text = text.replace("\\\n", " ")
    found = [span.strip() for span in re.findall(r"`([^`\n]*)`", text) if span.strip().startswith("sab-mips ")]
    for line in text.splitlines():
        if "`" not in line and re.match(r"^(\s{4,}|\t)(\S+=\S+\s+)*sab-mips ", line):
            found.append(line[line.index("sab-mips "):])
    return found


def cited_commands() -> list[tuple[str, str, list[str]]]:
    """(where, config file name, argv after ``sab-mips``) of every command that names a config."""
    out = []
    for path in documents():
        for command in commands(path.read_text(encoding="utf-8")):
            argv = shlex.split(command, comments=True)[1:]
            for i, token in enumerate(argv):
                if token == "--config" and i + 1 < len(argv) and argv[i + 1].startswith(CONFIG_DIR):
                    where = f"{path.relative_to(ROOT)}: {' '.join(command.split())}"
                    out.append((where, argv[i + 1][len(CONFIG_DIR):], argv))
    return out


CITED = cited_commands()


def cited_anywhere() -> set[str]:
    pattern = re.compile(re.escape(CONFIG_DIR) + r"([\w.-]+\.json)")
    return {name for path in documents() for name in pattern.findall(path.read_text(encoding="utf-8"))}


def configs_of(argv: list[str]) -> tuple[dict, dict]:
    """(model, train) configs as ``sab-mips train`` makes them from ``argv``, config file read from the repository."""
    args = build_parser().parse_args(argv)
    config = str(ROOT / args.config) if getattr(args, "config", None) else None
    model, train = merge_configs(explicit_values(args, SABConfig), explicit_values(args, TrainConfig), config)
    return model.to_dict(), train.to_dict()


def config_alone(name: str) -> tuple[dict, dict]:
    return configs_of(["train", "--config", CONFIG_DIR + name, "--run-dir", "unused"])


def differences(got: tuple[dict, dict], want: tuple[dict, dict]) -> list[str]:
    return [f"{field}: {g[field]!r} from the flags, {w.get(field)!r} from the config alone"
            for g, w in zip(got, want) for field in g if g[field] != w.get(field)]


def test_the_docs_cite_commands_with_configs():
    """The parser below finds what it is meant to find (a guard against a test that checks nothing)."""
    cited = {name for _, name, _ in CITED}
    assert {"copy100_sab_paper.json", "adding50_sab.json"} <= cited, cited


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_is_cited(name):
    assert name in cited_anywhere(), (
        f"{CONFIG_DIR}{name} is cited in none of {[str(p.relative_to(ROOT)) for p in documents()]}: cite it "
        f"with the command and the result it stands for, or remove it")


def test_every_cited_config_exists():
    missing = sorted(cited_anywhere() - set(CONFIGS))
    assert not missing, f"cited but not in {CONFIG_DIR}: {missing}"


@pytest.mark.parametrize("where, name, argv", CITED, ids=[where for where, _, _ in CITED])
def test_a_cited_command_gets_nothing_from_flags_its_config_lacks(where, name, argv, fashion_dir):
    # fashion_dir: the image configs are merged against a generated stand-in of Fashion-MNIST
    if argv[0] != "train":  # e.g. compare: the flags are the stated changes to the shared config
        build_parser().parse_args(argv)
        return
    wrong = differences(configs_of(argv), config_alone(name))
    assert not wrong, f"{where}\n{CONFIG_DIR}{name} does not hold the command's settings:\n" + "\n".join(wrong)


@pytest.mark.parametrize("name", sorted(PLAN_RUNS))
def test_a_config_equals_the_study_run_it_stands_for(name):
    plan_name, setting, seed = PLAN_RUNS[name]
    plan = read_json(ROOT / "experiments/plans" / plan_name, "plan")
    flags = [*plan.get("common", []), *plan["settings"][setting].get("flags", []), "--seed", str(seed)]
    wrong = differences(configs_of(["train", *flags, "--run-dir", "unused"]), config_alone(name))
    assert not wrong, f"{CONFIG_DIR}{name} differs from run {setting}-s{seed} of {plan_name}:\n" + "\n".join(wrong)
