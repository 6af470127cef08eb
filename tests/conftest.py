"""Shared fixtures and helpers. Tests never touch the network: the Hub is offline and caches are
private, removed when the session ends. The corpus is the copy the package ships: the suite needs
nothing beside the repo."""

from __future__ import annotations

import contextlib
import math
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

# Before datasets / huggingface_hub are imported anywhere: they read these at import time.
_CACHE = Path(tempfile.mkdtemp(prefix="tinylm-tests-hf-"))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HOME"] = str(_CACHE)
os.environ["HF_DATASETS_CACHE"] = str(_CACHE / "datasets")
os.environ["XDG_CACHE_HOME"] = str(_CACHE / "user")  # tinylm.machine's measurements
if "PYTEST_XDIST_WORKER" in os.environ:  # pytest -n N: N workers share the cores, a thread each
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import pyarrow.parquet as pq  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from tinylm import TransformerLM  # noqa: E402  (the network with generate and stream)
from tinylm.config import ModelConfig  # noqa: E402
from tinylm.rundir import RunDir  # noqa: E402
from tinylm.sources import embedded_corpus  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
# nanoGPT's input.txt, which the package's corpus holds byte for byte.
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"


def pytest_unconfigure(config: pytest.Config) -> None:
    """The private Hugging Face cache goes with the session: each run would leave one behind."""
    shutil.rmtree(_CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def shakespeare_text() -> str:
    """The whole tiny-shakespeare corpus, read once from the copy inside the package."""
    table = pq.read_table(embedded_corpus("tiny_shakespeare") / "data")
    return "".join(table.column("text").to_pylist())


@pytest.fixture(scope="session")
def shakespeare_path(shakespeare_text: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The corpus as the one text file nanoGPT downloads, input.txt."""
    path = tmp_path_factory.mktemp("corpus") / "input.txt"
    path.write_text(shakespeare_text, encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def small_text(shakespeare_text: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 30,000 characters of tiny shakespeare: trains in seconds."""
    path = tmp_path_factory.mktemp("text") / "small.txt"
    path.write_text(shakespeare_text[:30_000], encoding="utf-8")
    return path


# ---------------------------------------------------------------- small models of every variant

VOCAB = 37
# Each option on its own, then the modern preset's three together, then everything at once.
VARIANTS = {
    "nanogpt": {},
    "rope": dict(position="rope"),
    "no-position": dict(position="none"),
    "rmsnorm": dict(norm="rmsnorm"),
    "swiglu": dict(mlp="swiglu"),
    "gqa": dict(kv_heads=2),
    "multi-query": dict(kv_heads=1),
    "qk-norm": dict(qk_norm=True),
    "modern": dict(position="rope", norm="rmsnorm", mlp="swiglu"),
    "everything": dict(position="rope", norm="rmsnorm", mlp="swiglu", kv_heads=2, qk_norm=True),
    "relu2": dict(mlp="relu2"),
    "untied": dict(tie_embeddings=False),
    "softcap": dict(logit_softcap=2.0),
    # experiment=speedrun's model (zero_init aside: make_model needs blocks that do something).
    "speedrun": dict(position="rope", qk_norm=True, mlp="relu2", tie_embeddings=False, logit_softcap=30.0),
}
variants = pytest.mark.parametrize("variant", list(VARIANTS))


def make_model(variant: str = "nanogpt", **overrides) -> TransformerLM:
    """A small model of ``variant`` (2 layers, 4 heads, d_model 32, block_size 16) with sharp
    attention: at the 0.02 init every score is near zero and softmax near uniform, which would
    hide a wrong scale, mask, rotation or grouping."""
    torch.manual_seed(0)
    shape = dict(layers=2, heads=4, d_model=32, block_size=16)
    model = TransformerLM(ModelConfig(**{**shape, **VARIANTS[variant], **overrides}), VOCAB).eval()
    with torch.no_grad():
        for block in model.blocks:
            block.attn.qkv.weight.normal_(std=0.4)
    return model


def tokens(batch: int = 3, length: int = 16, seed: int = 1) -> torch.Tensor:
    """A batch of random token ids of ``make_model``'s vocabulary."""
    return torch.randint(VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def swiglu_closed_form(d: int, ratio: float, bias: bool) -> int:
    """The weights of a SwiGLU MLP of width ``d``, by the documented rule for its hidden width."""
    hidden = 8 * math.ceil(2 * ratio * d / 3 / 8)
    return 3 * d * hidden + bias * (2 * hidden + d)


# ---------------------------------------------------------------- runs


@pytest.fixture(scope="session")
def trained(small_text: Path, tmp_path_factory: pytest.TempPathFactory):
    """A 40-step run of the quick model: its run directory, Trainer and LitLM."""
    from tinylm.config import TrainConfig  # here: Lightning loads only for the tests that train
    from tinylm.train import fit

    run_dir = tmp_path_factory.mktemp("run")
    values = compose(*quick_overrides(small_text, run_dir))
    trainer, module = fit(TrainConfig.from_dict(values))
    return run_dir, trainer, module


def compose(*overrides: str, config_name: str = "train") -> dict:
    """The real Hydra config of ``tinylm <config_name> <overrides>``, composed from the
    installed package's configs, resolved to plain values; a mistake raises ConfigError.

    Give ``paths.output_dir``: outside a Hydra run there is no run dir (it is "." otherwise).
    """
    from omegaconf import OmegaConf  # here: Hydra loads only for the tests that compose

    from tinylm.cli import compose as tinylm_compose

    return OmegaConf.to_container(tinylm_compose(config_name, overrides), resolve=True)


@contextlib.contextmanager
def local_server(handle: Callable[[socket.socket], bool]) -> Iterator[int]:
    """A server on 127.0.0.1, for Hubs that misbehave; yields its port. Each connection goes to
    ``handle``, which answers it or not and returns True to keep it open (silent) until the
    server closes. The accept loop ends with the test, or after 120 s whatever happens."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.2)
    held: list[socket.socket] = []
    done = threading.Event()

    def serve() -> None:
        deadline = time.monotonic() + 120
        while not done.is_set() and time.monotonic() < deadline:
            try:
                connection = server.accept()[0]
            except TimeoutError:
                continue  # none came: look at the clock again
            if handle(connection):
                held.append(connection)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        done.set()
        thread.join()
        for connection in held:
            connection.close()
        server.close()


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (it was free a moment ago)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the run's TensorBoard files: {tag: [(step, value), ...]}."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # few tests read it

    events = EventAccumulator(str(RunDir(run_dir).tensorboard), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def quick_overrides(text: Path, run_dir: Path, *extra: str, script: bool = False) -> list[str]:
    """A model and run small enough to train in seconds on a CPU; ``script``: for
    scripts/train.py (which takes the run directory as hydra.run.dir) rather than ``compose``."""
    return [
        f"data.source={text}", f"{'hydra.run.dir' if script else 'paths.output_dir'}={run_dir}",
        "model.layers=2", "model.d_model=64", "model.block_size=32", "data.batch_size=16",
        "optim.warmup_steps=5", "trainer.max_steps=40", "trainer.val_check_interval=20",
        "trainer.log_every_n_steps=5", "callbacks.progress_bar.refresh_rate=0",
        "trainer.enable_model_summary=false", *extra,
    ]


# A run small enough for several processes on 2 cores: fp32, no dropout, the learning rate's
# schedule fixed at 20 steps whatever trainer.max_steps says, so a run stopped at step 10 and
# resumed is the same run; data.batch_size is each process's share of a global batch of 8.
TINY_RUN = ["model.layers=1", "model.d_model=32", "model.heads=2", "model.block_size=32", "model.dropout=0",
            "optim.warmup_steps=2", "optim.decay_steps=20", "trainer.val_check_interval=10",
            "trainer.log_every_n_steps=1", "callbacks.progress_bar.refresh_rate=0",
            "callbacks.samples.enabled=false", "trainer.enable_model_summary=false",
            "trainer.accelerator=cpu"]
GLOBAL_BATCH = 8


@pytest.fixture(scope="session")
def one_process(small_text: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The reference for runs on several processes: the tiny run on one process with the whole
    global batch, 20 steps ("run", its scalars) and the same stopped at step 10 ("half", its
    last.ckpt), both trained in this process."""
    from tinylm.config import TrainConfig  # here: Lightning loads only for the tests that train
    from tinylm.train import fit

    runs = {}
    for name, steps in (("run", 20), ("half", 10)):
        run_dir = tmp_path_factory.mktemp(f"one-process-{name}")
        values = compose(f"data.source={small_text}", f"paths.output_dir={run_dir}", *TINY_RUN,
                         f"data.batch_size={GLOBAL_BATCH}", f"trainer.max_steps={steps}")
        fit(TrainConfig.from_dict(values))
        runs[name] = run_dir
    return {"dir": runs["run"], "scalars": scalars(runs["run"]),
            "half": runs["half"] / "checkpoints" / "last.ckpt"}


def tinylm_command(*args: str) -> list[str]:
    """The installed ``tinylm`` command, as a user types it (beside this Python)."""
    return [str(Path(sys.executable).parent / "tinylm"), *args]


def run_script(script: str, *args: str, env: dict | None = None, timeout: float = 300,
               cwd: Path = REPO):
    """Run scripts/<script> in a fresh Python, as a user would; returns the CompletedProcess."""
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / script), *args],
        capture_output=True, text=True, timeout=timeout, cwd=cwd,
        env={**os.environ, **(env or {})},
    )


def start_script(script: str, *args: str, env: dict | None = None):
    """Start scripts/<script> as run_script does, without waiting: for signals and kills.
    The caller waits for it (or kills it)."""
    return subprocess.Popen(
        [sys.executable, str(REPO / "scripts" / script), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        env={**os.environ, **(env or {})},
    )


# ---------------------------------------------------------------- bad input, as a user meets it

# Config mistakes are found before torch and Lightning are imported: 3 s of work at most. It
# is the child's CPU time that is bounded: on a shared machine, wall-clock time under the test
# suite's load says more about the neighbours than about tinylm (wall-clock gets a generous
# bound that still catches any waiting).
CONFIG_CPU_SECONDS, CONFIG_WALL_SECONDS = 3, 20


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """An empty working directory: runs go to its outputs/<date>/<time>, as for a user."""
    path = tmp_path / "work"
    path.mkdir()
    return path


@pytest.fixture(scope="session")
def no_torch(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An environment in which importing torch or lightning fails: an error that still comes
    out as one clean line came before them."""
    root = tmp_path_factory.mktemp("no-torch")
    for name in ("torch", "lightning"):
        (root / name).mkdir()
        (root / name / "__init__.py").write_text(f"raise ImportError('{name} was imported')\n")
    return {"PYTHONPATH": str(root)}


def train_cli(workdir: Path, *args: str, env: dict | None = None):
    """scripts/train.py in ``workdir``; returns the result, the seconds it took and the CPU
    seconds it used."""
    started, used = time.monotonic(), _children_cpu()
    result = run_script("train.py", *args, env=env, cwd=workdir)
    return result, time.monotonic() - started, _children_cpu() - used


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def assert_one_line_error(result, workdir: Path, starts: str, *contains: str) -> None:
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith(f"error: {starts}"), lines[0]
    for text in contains:
        assert text in lines[0], lines[0]
    assert list(workdir.iterdir()) == [], "a run that stopped on bad input left files behind"
