"""Test set-up: 8 fake CPU devices, set before JAX is imported anywhere."""

import os

_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The tests run on the CPU even where libtpu is installed (requirements-plan.txt,
# for the compile-only planner): no TPU backend, no metadata-server queries,
# and no process holding libtpu's lock file for the others.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pathlib  # noqa: E402

import pytest  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
# Outputs of the authors' code for the parity tests (README there); part of the repository.
FIXTURES = REPO_ROOT / "tests" / "fixtures" / "reference"
# The real annotations are not in the repository: JML_DATA_ROOT names a folder
# holding twitter2015/ twitter2017/ trc/ (python -m data_pipeline.download --out data/).
DATA_ROOT_ENV = "JML_DATA_ROOT"
NO_REAL_DATA = (f"set {DATA_ROOT_ENV} to a folder with the real annotations "
                "(python -m data_pipeline.download --out data/)")


@pytest.fixture(scope="session")
def fixtures_dir():
    if not (FIXTURES / "orig_tiny_model.npz").is_file():
        raise FileNotFoundError(f"the reference fixtures are missing from {FIXTURES}; they are part of the repository")
    return FIXTURES


@pytest.fixture(scope="session")
def real_data_dir():
    root = os.environ.get(DATA_ROOT_ENV)
    if not root:
        pytest.skip(NO_REAL_DATA)
    path = pathlib.Path(root).expanduser().resolve()
    missing = [name for name in ("twitter2015", "twitter2017", "trc") if not (path / name).is_dir()]
    if missing:
        raise FileNotFoundError(f"{DATA_ROOT_ENV}={root} lacks the folder(s) {missing}; " + NO_REAL_DATA)
    return path
