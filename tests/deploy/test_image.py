"""The Dockerfile, checked without a Docker engine (none runs on these machines, so nothing is built here).

hadolint lints it; its stages are read with dockerfile-parse and held against pyproject.toml, the
settings and .dockerignore; and the wheel that the images install is built, to check that it carries
every data file the packages read at run time.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser

from stream_app.settings import REPO_ROOT, Settings
from tests.deploy_tools import venv_tool

DOCKERFILE = REPO_ROOT / "Dockerfile"
PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
DEV_PACKAGES = {"devtools"}  # the demo, click replay and embedded broker: installed in a checkout, never shipped
PACKAGES = [p.rstrip("*") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
            if p.rstrip("*") not in DEV_PACKAGES]
BUILD_TOOLS = {"gcc", "g++", "make", "build-essential", "cmake", "clang"}

Stage = list[tuple[str, str]]  # (instruction, value) in order


def stages() -> dict[str, Stage]:
    """Each stage's instructions by its name, the FROM line first."""
    named: dict[str, Stage] = {}
    for instruction in DockerfileParser(str(DOCKERFILE)).structure:
        kind, value = instruction["instruction"], instruction["value"]
        if kind == "FROM":
            current = named.setdefault(value.split(" AS ")[-1], [])
        if kind != "COMMENT" and named:
            current.append((kind, value))
    return named


def values(stage: Stage, kind: str) -> list[str]:
    return [value for instruction, value in stage if instruction == kind]


def ancestry(name: str, all_stages: dict[str, Stage]) -> list[Stage]:
    """A stage and every stage it is built on (an ARG-named base: all stages that name can take)."""
    [base] = [value.split(" AS ")[0] for value in values(all_stages[name], "FROM")]
    if "${" in base:
        prefix = base.split("${")[0]
        parents = [other for other in all_stages if prefix and other.startswith(prefix) and other != name]
    else:
        parents = [base] if base in all_stages else []
    return [all_stages[name]] + [stage for parent in parents for stage in ancestry(parent, all_stages)]


def environment(chain: list[Stage]) -> dict[str, str]:
    """The ENV a stage ends with: its ancestors' first, its own last."""
    return dict(
        item.split("=", 1)
        for stage in reversed(chain)
        for value in values(stage, "ENV")
        for item in shlex.split(value)
    )


def test_hadolint_finds_nothing() -> None:
    lint = subprocess.run(
        [venv_tool("hadolint"), "--no-color", DOCKERFILE], capture_output=True, text=True, check=False
    )
    assert lint.returncode == 0 and not lint.stdout, lint.stdout + lint.stderr


@pytest.mark.parametrize("target", ["serving", "training"])
def test_final_images_run_unprivileged_and_carry_no_build_tools(target: str) -> None:
    all_stages = stages()
    stage = all_stages[target]
    [user] = values(stage, "USER")
    assert user.split(":")[0] not in ("root", "0")
    copied_from = [value for value in values(stage, "COPY") if value.startswith("--from=")]
    assert copied_from == [f"--from={target}-build /opt/venv /opt/venv"]  # the environment, nothing else
    installs = [
        run for chain in ancestry(target, all_stages) for run in values(chain, "RUN") if "install" in run
    ]
    assert not BUILD_TOOLS & {word for run in installs for word in shlex.split(run)}


def test_the_serving_image_is_the_default_and_runs_the_worker_with_a_healthcheck() -> None:
    all_stages = stages()
    assert list(all_stages)[-1] == "serving"  # `docker build .` builds the last stage
    serving = all_stages["serving"]
    assert json.loads(values(serving, "ENTRYPOINT")[0]) == ["python", "-m", "stream_app", "worker"]
    [healthcheck] = values(serving, "HEALTHCHECK")
    assert "/livez" in healthcheck and "NEXTCLICK_WEB_PORT" in healthcheck
    port = environment(ancestry("serving", all_stages))["NEXTCLICK_WEB_PORT"]
    assert values(serving, "EXPOSE") == [port]


def test_the_training_image_runs_retrain_with_the_configs_beside_it() -> None:
    training = stages()["training"]
    assert json.loads(values(training, "ENTRYPOINT")[0]) == ["python", "-m", "training.retrain"]
    [workdir] = values(training, "WORKDIR")
    assert f"configs {workdir}/configs" in values(training, "COPY")  # relative --config paths resolve


def test_serving_installs_no_torch_and_training_pins_it_as_pyproject_does() -> None:
    extras = PYPROJECT["project"]["optional-dependencies"]
    all_stages = stages()
    serving_install = " ".join(values(all_stages["serving-build"], "RUN"))
    [requested] = [word for word in shlex.split(serving_install) if word.startswith("./[")]
    serving_requirements = PYPROJECT["project"]["dependencies"] + [
        requirement for extra in requested[3:-1].split(",") for requirement in extras[extra]
    ]
    assert not any(requirement.startswith("torch") for requirement in serving_requirements)

    [pin] = [requirement for requirement in extras["train"] if requirement.startswith("torch==")]
    torch_version = dict(value.split("=", 1) for value in values(all_stages["training-build"], "ARG"))[
        "TORCH_VERSION"
    ]
    assert pin == f"torch=={torch_version}"


def test_the_cuda_image_installs_the_onnxruntime_gpu_of_the_gpu_extra() -> None:
    arguments = dict(value.split("=", 1) for value in values(stages()["serving-build"], "ARG") if "=" in value)
    assert PYPROJECT["project"]["optional-dependencies"]["gpu"] == [
        f"onnxruntime-gpu=={arguments['ONNXRUNTIME_GPU_VERSION']}"
    ]


# The CUDA major each onnxruntime-gpu wheel on PyPI is built for (its release notes): on a base image with another
# one it finds no libcudart / libcublas to load, and the worker scores on the CPU (or refuses: provider `cuda`)
ONNXRUNTIME_GPU_CUDA = {"1.31": 13}


def test_the_cuda_base_carries_the_cuda_its_onnxruntime_gpu_was_built_for() -> None:
    arguments = dict(value.split("=", 1) for value in values(stages()["serving-build"], "ARG") if "=" in value)
    minor = ".".join(arguments["ONNXRUNTIME_GPU_VERSION"].split(".")[:2])
    assert minor in ONNXRUNTIME_GPU_CUDA, f"which CUDA is onnxruntime-gpu {minor} built for? (add it above)"
    global_arguments = dict(
        instruction["value"].split("=", 1) for instruction in DockerfileParser(str(DOCKERFILE)).structure
        if instruction["instruction"] == "ARG" and "=" in instruction["value"]
    )
    cuda_image = global_arguments["CUDA_IMAGE"]  # e.g. nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04
    assert cuda_image.startswith(f"nvidia/cuda:{ONNXRUNTIME_GPU_CUDA[minor]}.") and "cudnn" in cuda_image


def test_the_image_sets_every_folder_setting() -> None:
    """The settings' folder defaults point into a source checkout, which an installed package is not."""
    env = environment(ancestry("serving", stages()))
    folders = {
        f"NEXTCLICK_{name.upper()}"
        for name, field in Settings.model_fields.items()
        if isinstance(field.default, Path)
    }
    assert folders <= set(env), folders - set(env)
    assert all(Path(env[folder]).is_absolute() for folder in folders)


def test_the_build_context_holds_what_the_dockerfile_copies() -> None:
    """.dockerignore is an allow-list ('*' first): every COPY source must be let back in by name."""
    patterns = [
        line.strip()
        for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*"
    allowed = {pattern[1:].rstrip("/") for pattern in patterns if pattern.startswith("!")}
    sources = {
        source
        for stage in stages().values()
        for value in values(stage, "COPY")
        if not value.startswith("--from=")
        for source in shlex.split(value)[:-1]
    }
    assert sources <= allowed, sources - allowed
    assert set(PACKAGES) <= sources and not DEV_PACKAGES & (sources | allowed)  # serving ships no dev tooling
    assert all((REPO_ROOT / source).exists() for source in sources)


def test_the_installed_package_carries_its_data_files(tmp_path: Path) -> None:
    """The images install nextclick as a wheel (no source tree): every non-Python file of its packages
    (the click JSON schema, read by the worker) must be inside."""
    source = tmp_path / "source"  # a copy, so that the build leaves nothing in the work tree
    for package in PACKAGES:
        shutil.copytree(REPO_ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ["pyproject.toml", "README.md"]:
        shutil.copy(REPO_ROOT / name, source / name)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            tmp_path / "wheel",
            source,
        ],
        check=True,
        capture_output=True,
    )
    [wheel] = (tmp_path / "wheel").glob("nextclick-*.whl")
    in_wheel = set(zipfile.ZipFile(wheel).namelist())
    data_files = {
        path.relative_to(source).as_posix()
        for package in PACKAGES
        for path in (source / package).rglob("*")
        if path.is_file() and path.suffix != ".py"
    }
    assert data_files and data_files <= in_wheel, data_files - in_wheel
