"""Every code block of README.md and of the docs/ pages runs as written: bash and python, offline, in a temp folder.

The blocks run in one temporary folder (``recipes/`` and ``tests/`` linked into it): README.md's first,
in README order, then each page of ``docs/`` in name order (:data:`PAGES`), each in its own order, so a
block finds what an earlier one wrote, as a reader following the README, then a page, would: the
README's "Load and predict" and the blocks of docs/sharing.md load the model that the README's
``make demo`` wrote. The only changes are the small-run overrides that docs/design.md's "Tests"
section documents:

* a ``recipes/train_jtln.py`` command gets :data:`SMALL_RUN` appended (and :data:`WARMUP` when
  the run reads a warm-up, :data:`SAMPLES` when it computes a features-* cost) and runs in this process (the recipe's ``main`` with the line's
  arguments, split as bash splits them), to spare one start-up of torch per command;
* a python block runs in a fresh interpreter with ``max_steps=500`` made ``max_steps=2``, after a
  preamble that replaces ``HfApi.create_repo`` / ``HfApi.upload_folder`` (nothing leaves the
  machine);
* every other command runs with bash, as written, with ``python`` this interpreter.

A command that cannot run offline or in minutes matches one rule of :data:`NOT_RUN`, with its
reason and a substitute check that goes as far as offline allows (the flags parse, the Hub call
replaced, the files it reads exist). A command that matches no rule is run; one that cannot be
run fails the test. docs/design.md's "Tests" section names every rule.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from huggingface_hub import CommitInfo, HfApi, RepoUrl, constants
from huggingface_hub.utils import filter_repo_objects

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
#: The pages whose blocks run, in this order: the README, then every page of docs/ by name.
PAGES = [README, *sorted((REPO / "docs").glob("*.md"))]
#: Where the "Tests" section lives: the rules of NOT_RUN and the overrides are named there.
TESTS_SECTION = REPO / "docs" / "design.md"
RECIPE = "recipes/train_jtln.py"
#: The small-run overrides of a recipe command: 2 steps per stage, one seed, 64 test images, batches loaded in
#: the training process (no data-loader worker processes started for 2 steps).
SMALL_RUN = ["--max_steps", "2", "--seeds", "0", "--max_eval_samples", "64", "--dataloader_num_workers", "0"]
#: Added where the run reads a warm-up (a model cost, Co-Tuning): 2 source-only steps, not 200.
WARMUP = ["--cost_warmup_steps", "2"]
#: Added where the run computes a features-* cost: 16 source images per class for C, not 200.
SAMPLES = ["--cost_samples_per_class", "16"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
#: Run before every python block: the Hub calls recorded, not made (a push prints its files).
PREAMBLE = '''
from huggingface_hub import CommitInfo as _CommitInfo, HfApi as _HfApi, RepoUrl as _RepoUrl
def _create_repo(self, repo_id, **kwargs):
    return _RepoUrl(f"https://huggingface.co/{repo_id}")
def _upload_folder(self, *, repo_id, folder_path, **kwargs):
    import pathlib
    print("PUSHED", repo_id, sorted(p.name for p in pathlib.Path(folder_path).iterdir()))
    return _CommitInfo(commit_url=f"https://huggingface.co/{repo_id}/commit/0", commit_message="",
                       commit_description="", oid="0")
_HfApi.create_repo, _HfApi.upload_folder = _create_repo, _upload_folder
'''


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


recipe = _load("train_jtln_readme", REPO / RECIPE)


# ------------------------------------------------------------------------------------ the blocks
@dataclass
class Block:
    lang: str
    code: str
    line: int  # of the opening fence in its page
    page: Path = README

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(REPO)} line {self.line}"

    @property
    def id(self) -> str:  # README-bash-L22, sharing-python-L12
        return f"{self.page.stem}-{self.lang}-L{self.line}"


def page_blocks(page: Path) -> list[Block]:
    """Every fenced block of a page with a language, dedented (a block may sit in a list item)."""
    text = page.read_text()
    blocks = []
    for match in re.finditer(r"^( *)```(\w*)\n(.*?)^\1```$", text, re.S | re.M):
        indent, lang, body = match.groups()
        if lang:
            code = "\n".join(line[len(indent):] for line in body.splitlines())
            blocks.append(Block(lang, code, text[: match.start()].count("\n") + 1, page))
    return blocks


def readme_blocks() -> list[Block]:
    """The blocks of every page of :data:`PAGES`, in the order they run."""
    return [block for page in PAGES for block in page_blocks(page)]


def commands(code: str) -> list[list[str]]:
    """A bash block's commands, each split as bash splits it (continuations joined, comments dropped)."""
    joined = re.sub(r"\\\n", " ", code)
    return [tokens for line in joined.splitlines() if (tokens := shlex.split(line, comments=True))]


def _after(tokens: list[str], word: str) -> list[str]:
    return tokens[tokens.index(word) + 1:]


# ----------------------------------------------------------------------------- the small runs
def _reads_warmup(argv: list[str]) -> bool:
    from jtln_hf.experiment.arguments import resolved_cost
    from jtln_hf.experiment.cli import parse_args
    from jtln_hf.methods import METHOD_REGISTRY

    data, model, jtln, *_ = parse_args(argv)
    methods = [METHOD_REGISTRY[m] for m in jtln.run_methods]
    return any("cost_warmup_steps" in m.flags and not m.uses_ot for m in methods) or (
        any(m.uses_ot for m in methods) and resolved_cost(data, model, jtln).warmup_steps > 0)  # fmt: skip


def _reads_samples(argv: list[str]) -> bool:
    from jtln_hf.cost.builders import COST_BUILDERS
    from jtln_hf.experiment.arguments import resolved_cost
    from jtln_hf.experiment.cli import parse_args
    from jtln_hf.methods import METHOD_REGISTRY

    data, model, jtln, *_ = parse_args(argv)
    if "--cost_samples_per_class" in argv or not any(METHOD_REGISTRY[m].uses_ot for m in jtln.run_methods):
        return False
    builder = COST_BUILDERS.get(resolved_cost(data, model, jtln).kind)
    return builder is not None and builder.samples


def small_run(argv: list[str]) -> list[str]:
    """``argv`` with the documented small-run overrides appended."""
    extra = SMALL_RUN + (WARMUP if _reads_warmup(argv + SMALL_RUN) else [])
    extra += SAMPLES if _reads_samples(argv + extra) else []
    return argv + extra


def _fake_hub(monkeypatch: pytest.MonkeyPatch, calls: list) -> None:
    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", repo_id))
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, *, repo_id, folder_path, path_in_repo=None, allow_patterns=None, ignore_patterns=None,
                      **kwargs):  # fmt: skip
        folder = Path(folder_path)
        names = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        kept = list(filter_repo_objects(names, allow_patterns=allow_patterns, ignore_patterns=ignore_patterns))
        calls.append(("upload_folder", repo_id, str(folder), kept))
        return CommitInfo(commit_url=f"https://huggingface.co/{repo_id}/commit/0", commit_message="",
                          commit_description="", oid="0")  # fmt: skip

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    monkeypatch.setenv("HF_TOKEN", "hf_fake_token_for_the_readme_test")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # the recipe refuses to push offline


@dataclass
class Workspace:
    """The temporary folder the blocks run in, and what each block did."""

    root: Path
    blocks: list[Block]
    outcomes: dict[int, BaseException | None] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)

    def run_until(self, index: int) -> None:
        """Run blocks 0..index not yet run, in page order; each one's failure is kept for its own test."""
        for k in range(index + 1):
            if k not in self.outcomes:
                try:
                    self.run_block(self.blocks[k])
                    self.outcomes[k] = None
                except BaseException as err:  # noqa: BLE001  (reported by that block's test)
                    self.outcomes[k] = err

    def run_block(self, block: Block) -> None:
        if block.lang == "python":
            self.run_python(block)
        elif block.lang == "bash":
            for tokens in commands(block.code):
                self.run_command(tokens)
        else:
            raise AssertionError(f"{block.where}: a ```{block.lang} block: the test runs python and bash")

    def run_python(self, block: Block) -> None:
        code = re.sub(r"\bmax_steps=\d+", "max_steps=2", block.code)
        script = self.root / f"block_{block.page.stem}_L{block.line}.py"
        script.write_text(PREAMBLE + "\n" + code + "\n")
        proc = subprocess.run([sys.executable, script.name], cwd=self.root, env=ENV, capture_output=True, text=True,
                              timeout=600)  # fmt: skip
        self.log.append(proc.stdout)
        assert proc.returncode == 0, f"{block.where}:\n{proc.stderr[-3000:]}"
        if "push_model_folder(" in code:  # it reached the (replaced) upload
            assert "PUSHED" in proc.stdout, proc.stdout[-2000:]
        for folder in re.findall(r'save_model_folder\(model, "([^"]+)"\)', code):  # what pipeline(...) needs
            assert (self.root / folder / "preprocessor_config.json").is_file(), folder

    def run_command(self, tokens: list[str]) -> None:
        with contextlib.chdir(self.root):  # relative paths are the workspace's (a local dataset or a Hub id?)
            rule = matching_rule(tokens)
            if rule is not None:
                NOT_RUN[rule][1](self, tokens)
            elif tokens[:2] == ["python", RECIPE]:
                self.recipe(small_run(_after(tokens, RECIPE)))
            else:
                self.bash(tokens)

    def recipe(self, argv: list[str], expect: int = 0) -> None:
        status = recipe.main(argv)
        assert status == expect, f"recipes/train_jtln.py {shlex.join(argv)}: exit status {status}"

    def bash(self, tokens: list[str]) -> None:
        bindir = self.root / ".bin"
        bindir.mkdir(exist_ok=True)
        if not (bindir / "python").exists():  # `python` is this interpreter (a symlink would lose its venv)
            (bindir / "python").write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
            (bindir / "python").chmod(0o755)
        env = {**ENV, "PATH": f"{bindir}{os.pathsep}{ENV.get('PATH', '')}"}
        proc = subprocess.run(["bash", "-c", shlex.join(tokens)], cwd=self.root, env=env, capture_output=True,
                              text=True, timeout=600)  # fmt: skip
        assert proc.returncode == 0, f"{shlex.join(tokens)}:\n{proc.stderr[-3000:]}"


# --------------------------------------------------------------------------- what is not run
def _flags_parse(argv: list[str]) -> None:
    """The recipe's parser knows every flag and converts every value (no dataclass built: e.g. --bf16 on a CPU)."""
    from jtln_hf.experiment.cli import build_parser

    argv = [arg for arg in argv if arg != "..."]
    _, unknown = build_parser().parse_known_args(argv)
    assert not unknown, f"unknown flags {unknown}"


def _make_demo(ws: Workspace, tokens: list[str]) -> None:
    """The Makefile's demo command, with the small-run overrides, twice: a second ``make demo`` replaces the first."""
    rule = re.search(r"^demo:.*\n((?:\t.*\n)+)", (REPO / "Makefile").read_text(), re.M).group(1)
    (command,) = [shlex.split(line) for line in rule.splitlines() if RECIPE in line]
    argv = small_run(_after(command, RECIPE))
    out = Path("outputs/jtln-fashion-mnist")
    ws.recipe(argv)
    (out / "model" / "stale.txt").write_text("from the first make demo")
    ws.recipe(argv)
    assert not (out / "model" / "stale.txt").exists() and (out / "model" / "preprocessor_config.json").is_file()


def _make_test(ws: Workspace, tokens: list[str]) -> None:
    """The test rule as make expands it (``make -n``: printed, not run): the whole suite offline, twice,
    the second time on another CPU's kernels."""
    printed = subprocess.run(["make", "-n", "-C", str(REPO), "test"], capture_output=True, text=True, check=True).stdout
    passes = [line for line in printed.splitlines() if "-m pytest" in line]
    assert len(passes) == 2 and all("HF_HUB_OFFLINE=1" in line and "tests/" not in line for line in passes), printed
    assert re.search(r"ATEN_CPU_CAPABILITY=(avx2|default) ", passes[1]) and "ATEN_CPU_CAPABILITY" not in passes[0]


def _hf_cli(ws: Workspace, tokens: list[str]) -> None:
    """huggingface_hub's ``hf`` command in this process: ``--help`` of login; ``upload`` with the Hub replaced."""
    from huggingface_hub.cli.hf import app

    args = tokens[1:] if tokens[1] == "upload" else [*tokens[1:], "--help"]
    calls: list = []
    with pytest.MonkeyPatch.context() as mp:
        _fake_hub(mp, calls)
        try:
            app(args=args, standalone_mode=False)
        except SystemExit as err:  # --help exits 0
            assert err.code in (0, None), err
    if tokens[1] == "upload":
        (_, repo_id, folder, files) = calls[-1]
        assert repo_id == tokens[2] and Path(folder).resolve() == Path(tokens[3]).resolve()
        assert files and not [f for f in files if f.startswith(".") or "__pycache__" in f]
        if "--repo-type" in tokens:  # the demo Space: the app, its settings and the package it imports
            assert {"app.py", "demo.json", "requirements.txt", "jtln_hf/__init__.py"} <= set(files)
        elif (Path(folder) / "preprocessor_config.json").is_file():  # the JTLN model folder
            assert "model.safetensors" in files and "preprocessor_config.json" in files
            assert not [f for f in files if f.startswith("timm/")]  # the export goes to its own repository
        else:  # the timm export
            assert "model.safetensors" in files and "config.json" in files and "README.md" in files


def _push(ws: Workspace, tokens: list[str]) -> None:
    """The recipe's --push_to_hub run, with the Hub calls replaced: one upload of OUTPUT_DIR/model (without
    its timm/ folder), one of OUTPUT_DIR/model/timm to the export's own repository, and with
    --push_space one of the demo to the Space."""
    calls: list = []
    argv = small_run(_after(tokens, RECIPE))
    with pytest.MonkeyPatch.context() as mp:
        _fake_hub(mp, calls)
        ws.recipe(argv)
    from jtln_hf.experiment.cli import parse_args

    out = Path(parse_args(argv)[3].output_dir)
    space = _after(tokens, "--push_space")[0] if "--push_space" in tokens else None
    assert [c[0] for c in calls] == ["create_repo", "upload_folder"] * (3 if space else 2)
    assert calls[1][2] == str(out / "model") and not [f for f in calls[1][3] if f.startswith("timm/")]
    assert calls[3][2] == str(out / "model" / "timm") and calls[3][1] == calls[1][1] + "-timm"
    if space:
        assert calls[5][1] == space and "app.py" in calls[5][3]


def _tensorboard(ws: Workspace, tokens: list[str]) -> None:
    logdir = Path(_after(tokens, "--logdir")[0])
    assert list(logdir.rglob("events.out.tfevents.*")), f"{logdir} holds no TensorBoard events"


def _launcher(ws: Workspace, tokens: list[str]) -> None:
    if "--config_file" in tokens:
        assert isinstance(yaml.safe_load(Path(_after(tokens, "--config_file")[0]).read_text()), dict)
    _flags_parse(_after(tokens, RECIPE))


def _sweep(ws: Workspace, tokens: list[str]) -> None:
    """The sweep's flags parse and every run's flags pass the recipe's checks; it stops before the first run
    (Ray Tune's): a ``--ray_address`` is passed to the cluster check, not dialled."""
    sys.path.insert(0, str(REPO / "recipes"))
    sweep = _load("sweep_readme", REPO / "recipes" / "sweep.py")

    class Stop(Exception):
        pass

    def stop(*args, **kwargs):
        raise Stop

    from jtln_hf.experiment import trials

    addresses: list = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trials, "run_trials", stop)
        mp.setattr(trials, "check_ray_address", addresses.append)  # no cluster runs here: the address is recorded
        with pytest.raises(Stop):
            sweep.main(_after(tokens, "recipes/sweep.py"))
    if "--ray_address" in tokens:
        assert addresses == [_after(tokens, "--ray_address")[0]]


def _ray_start(ws: Workspace, tokens: list[str]) -> None:
    """Ray's CLI knows the command: ``ray start --help`` exits 0 (the ray[tune] extra installs ``ray``)."""
    ray = Path(sys.executable).with_name("ray")
    done = subprocess.run([str(ray), "start", "--help"], env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "--address" in done.stdout and "--head" in done.stdout, done.stderr[-2000:]


def _your_files(ws: Workspace, tokens: list[str]) -> None:
    _flags_parse(_after(tokens, RECIPE))


def _demo_app(ws: Workspace, tokens: list[str]) -> None:
    """The demo's server: its flags parse (``app.py ... --help`` exits 0 and names them); serving and a
    browser's upload are tests/test_demo_browser.py."""
    app = ws.root / tokens[1]
    assert app.is_file(), f"{tokens[1]}: no demo (the model folder is written by the README's make demo block)"
    done = subprocess.run([sys.executable, str(app), *tokens[2:], "--help"], cwd=ws.root, env=ENV,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0 and "--host" in done.stdout and "--port" in done.stdout, done.stderr[-2000:]


def _is_hub_run(tokens: list[str]) -> bool:
    """A recipe command reading the Hub: a Hub dataset id (not a local path) or timm's pretrained weights."""
    if tokens[:2] != ["python", RECIPE]:
        return False
    flags = ("--dataset", "--source_dataset", "--target_dataset")
    specs = [tokens[k + 1] for k, t in enumerate(tokens[:-1]) if t in flags]
    hub_specs = [s for s in specs if "/" in s and not Path(s).exists()]
    return "..." not in tokens and (bool(hub_specs) or "--pretrained_backbone" in tokens)


#: rule -> (why it is not run as written, its substitute check, does it match the command?)
NOT_RUN: dict[str, tuple[str, Callable[[Workspace, list[str]], None], Callable[[list[str]], bool]]] = {
    "make demo": ("ten minutes of training (5 methods x 3 seeds x 500 steps)",
                  _make_demo, lambda t: t == ["make", "demo"]),
    "make test": ("this test suite itself", _make_test, lambda t: t == ["make", "test"]),
    "hf auth login": ("interactive, stores a token", _hf_cli, lambda t: t[:3] == ["hf", "auth", "login"]),
    "hf upload": ("uploads to the Hub", _hf_cli, lambda t: t[:2] == ["hf", "upload"]),
    "--push_to_hub": ("uploads to the Hub", _push, lambda t: t[:2] == ["python", RECIPE] and "--push_to_hub" in t),
    "tensorboard": ("a server that does not return", _tensorboard, lambda t: t[0] == "tensorboard"),
    "model/app.py": ("the demo's server, which does not return", _demo_app,
                     lambda t: t[0] == "python" and t[1].endswith("model/app.py")),
    "torchrun / accelerate launch": ("several processes or GPUs", _launcher,
                                     lambda t: t[0] == "torchrun" or t[:2] == ["accelerate", "launch"]),
    "recipes/sweep.py": ("47 minutes: 13 settings x 5 seeds", _sweep,
                         lambda t: t[:2] == ["python", "recipes/sweep.py"]),
    "ray start": ("starts a Ray cluster that outlives the command", _ray_start, lambda t: t[:2] == ["ray", "start"]),
    "...": ("stands for your own flags and files", _your_files, lambda t: t[:2] == ["python", RECIPE] and "..." in t),
    "Hub datasets and weights": ("downloads from the Hub", _your_files, _is_hub_run),
}


def matching_rule(tokens: list[str]) -> str | None:
    """The one rule of :data:`NOT_RUN` a command matches, or None (it is run)."""
    rules = [name for name, (_, _, matches) in NOT_RUN.items() if matches(tokens)]
    assert len(rules) <= 1, f"{shlex.join(tokens)} matches several rules: {rules}"
    return rules[0] if rules else None


# ---------------------------------------------------------------------------------------- tests
BLOCKS = readme_blocks()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, digits_folder) -> Workspace:
    root = tmp_path_factory.mktemp("readme")
    for name in ("recipes", "tests"):
        (root / name).symlink_to(REPO / name)
    (root / "path" / "to").mkdir(parents=True)
    (root / "path" / "to" / "my_images").symlink_to(digits_folder)  # "a folder of your images"
    return Workspace(root, BLOCKS)


def test_the_pages_have_python_and_bash_blocks_only():
    assert {b.lang for b in BLOCKS} == {"python", "bash"}, {b.lang for b in BLOCKS}
    assert len(BLOCKS) >= 20 and {b.lang for b in BLOCKS if b.page == README} == {"python", "bash"}
    # every page the README links to that holds commands has them run (docs/results.md, cli.md, ...)
    assert {b.page.name for b in BLOCKS} >= {"README.md", "cli.md", "results.md", "scale.md", "sharing.md", "errors.md"}


def test_every_rule_is_named_in_the_docs_tests_section():
    """docs/design.md's "Tests" says what is not run and why; this test and that text must not drift apart."""
    section = TESTS_SECTION.read_text().split("\n## Tests\n")[1].split("\n## ")[0]
    for rule, (reason, _, _) in NOT_RUN.items():
        assert f"`{rule}`" in section, rule
    assert shlex.join(SMALL_RUN) in section and shlex.join(WARMUP) in section and "max_steps=2" in section
    assert shlex.join(SAMPLES) in section


@pytest.mark.parametrize("index", range(len(BLOCKS)), ids=[b.id for b in BLOCKS])
def test_readme_block_runs_as_written(index, workspace):
    workspace.run_until(index)
    error = workspace.outcomes[index]
    if error is not None:
        raise error
