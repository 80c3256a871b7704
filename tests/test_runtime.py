"""The process is the program's: importing the package changes nothing in it, and the settings
the library recommends come from one call, `mmalign_jax.configure_process()`, which every
command-line entry point makes first thing."""
import ast
import json
import os
import subprocess
import sys


from conftest import ROOT, subprocess_env
from mmalign_jax import host_malloc, xla_flags

PACKAGE = os.path.join(ROOT, "mmalign_jax")
SUBPACKAGES = ("mmalign_jax.train.loop", "mmalign_jax.generate", "mmalign_jax.evaluate",
               "mmalign_jax.annotate", "mmalign_jax.convert", "mmalign_jax.pipeline")


def _run(code: str, env: dict, *args: str, cwd: str = ROOT, timeout: float = 300) -> dict:
    """`python -c code *args` in a fresh process; its last stdout line as JSON."""
    out = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True,
                         text=True, timeout=timeout, cwd=cwd)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _gpu_possible_env(tmp_path) -> dict:
    """The test session's environment with a stand-in CUDA plugin on the path and nothing that
    would stop the library's XLA defaults (JAX_PLATFORMS, the opt-out): exactly where the old
    `import mmalign_jax` added them."""
    (tmp_path / "jax_plugins" / "xla_cuda12").mkdir(parents=True)   # no plugin code: JAX skips it
    env = subprocess_env(XLA_FLAGS="--xla_force_host_platform_device_count=2")
    env["PYTHONPATH"] += os.pathsep + str(tmp_path)
    for unset in ("JAX_PLATFORMS", xla_flags.OPT_OUT, "GLIBC_TUNABLES"):
        env.pop(unset, None)
    return env


_IMPORT_ALL = r"""
import json, os, sys
before = dict(os.environ)
import mmalign_jax
from mmalign_jax import host_malloc, xla_flags
for name in sys.argv[1:]:
    __import__(name)
after = dict(os.environ)
print(json.dumps({
    "changed": {k: [before.get(k), after.get(k)] for k in set(before) | set(after)
                if before.get(k) != after.get(k)},
    "malloc_applied": host_malloc.applied,
    "backends_started": xla_flags.backends_started(),
    "gpu_possible": xla_flags.gpu_possible(os.environ),
    "malloc_possible": host_malloc.possible(os.environ) and host_malloc.requested(os.environ),
}))
"""


def test_importing_the_package_changes_nothing_in_the_process(tmp_path):
    """Where a CUDA plugin would have made the old import append the GPU XLA flags (checked in
    the same process: `gpu_possible`), importing the package and its main subpackages leaves
    `os.environ` — `XLA_FLAGS` included — as it was; and with MMALIGN_JAX_KEEP_STEP_MEMORY=1 on
    the CPU (where the old import called mallopt) no malloc setting is made."""
    res = _run(_IMPORT_ALL, _gpu_possible_env(tmp_path), *SUBPACKAGES)
    assert res["gpu_possible"], res             # the old __init__ would have added the flags here
    assert res["changed"] == {}, res["changed"]
    assert not res["backends_started"]

    env = subprocess_env(**{host_malloc.ENV: "1"})          # JAX_PLATFORMS=cpu
    env.pop("GLIBC_TUNABLES", None)
    res = _run(_IMPORT_ALL, env, *SUBPACKAGES)
    if sys.platform.startswith("linux") and host_malloc.glibc():
        assert res["malloc_possible"], res      # the old __init__ would have called mallopt here
    assert res["changed"] == {} and res["malloc_applied"] == [], res


def test_configure_process_applies_both_and_says_what_it_changed(tmp_path):
    """Under the same stand-in plugin `configure_process()` appends the GPU flags (the user's own
    kept first); on the CPU with MMALIGN_JAX_KEEP_STEP_MEMORY=1 it makes the malloc settings.
    A second call changes nothing and reports nothing."""
    code = ("import json, os, mmalign_jax; first = mmalign_jax.configure_process(); "
            "second = mmalign_jax.configure_process(); "
            "print(json.dumps({'first': first, 'second': second, "
            "'xla_flags': os.environ.get('XLA_FLAGS')}))")
    res = _run(code, _gpu_possible_env(tmp_path))
    gpu_flags = [f"--{k}={v}" for k, v in xla_flags.GPU_DEFAULTS]
    assert res["first"] == {"xla_flags": gpu_flags, "malloc": []}    # a GPU is possible: no mallopt
    assert res["second"] == {"xla_flags": [], "malloc": []}
    assert res["xla_flags"].split() == ["--xla_force_host_platform_device_count=2", *gpu_flags]

    env = subprocess_env(**{host_malloc.ENV: "1"})          # JAX_PLATFORMS=cpu
    env.pop("GLIBC_TUNABLES", None)
    res = _run(code, env)
    glibc = sys.platform.startswith("linux") and host_malloc.glibc()
    assert res["first"] == {"xla_flags": [],
                            "malloc": [s[0] for s in host_malloc.SETTINGS] if glibc else []}
    assert res["second"] == {"xla_flags": [], "malloc": []}
    assert res["xla_flags"] == os.environ.get("XLA_FLAGS")         # JAX_PLATFORMS=cpu: untouched


def _entry_points() -> list:
    """(module name, path) of every file in the package with an `if __name__ == "__main__":`
    block, but the PyTorch baselines of the bench (bench_baselines/: no JAX, and the bench
    hands them its malloc settings through GLIBC_TUNABLES)."""
    out = []
    for folder, _, files in os.walk(PACKAGE):
        if "__pycache__" in folder or os.path.basename(folder) == "bench_baselines":
            continue
        for f in sorted(files):
            if f.endswith(".py"):
                path = os.path.join(folder, f)
                with open(path) as fh:
                    if '__name__ == "__main__"' in fh.read():
                        rel = os.path.relpath(path[:-3], ROOT)
                        out.append((rel.replace(os.sep, "."), path))
    return sorted(out)


def _main_block(tree: ast.Module) -> ast.If:
    for node in tree.body:
        if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test):
            return node
    raise AssertionError("no __main__ block")


def test_every_entry_point_configures_the_process_first_thing():
    names = [m for m, _ in _entry_points()]
    for want in ("mmalign_jax.train.__main__", "mmalign_jax.generate.__main__",
                 "mmalign_jax.pipeline.__main__", "mmalign_jax.evaluate.__main__",
                 "mmalign_jax.annotate.__main__", "mmalign_jax.convert.__main__",
                 "mmalign_jax.data.__main__", "mmalign_jax.bench",
                 "mmalign_jax.experiments.paper_table"):
        assert want in names, names
    for module, path in _entry_points():
        with open(path) as f:
            block = _main_block(ast.parse(f.read()))
        calls = [ast.unparse(s) for s in block.body[:2]]
        assert calls == ["from mmalign_jax.runtime import configure_process",
                         "configure_process()"], (module, calls)


_IMPORT_ENTRY = r"""
import importlib, json, sys
from mmalign_jax import xla_flags
started = {}
for name in sys.argv[1:]:
    importlib.import_module(name)
    started[name] = xla_flags.backends_started()
print(json.dumps(started))
"""


def test_entry_points_import_without_starting_jax():
    """What runs before an entry point's `__main__` block — importing its module — does not
    start JAX's backends, so `configure_process()` there is still in time."""
    mods = [m for m, _ in _entry_points()]
    absl = [m for m in mods if m.endswith(("train.__main__", "generate.__main__",
                                           "pipeline.__main__"))]   # each defines --config
    groups = [[m for m in mods if m not in absl]] + [[m] for m in absl]
    for group in groups:
        res = _run(_IMPORT_ENTRY, subprocess_env(), *group)
        assert res == {m: False for m in group}, res


_OUTSIDE = r"""
import importlib.util, json, os, sys
site, repo = sys.argv[1], sys.argv[2]
opened = []


def audit(event, args):
    # every file the process opens or runs, by path (imports included)
    if event in ("open", "exec", "os.listdir", "os.scandir") and args and isinstance(args[0], (str, bytes, os.PathLike)):
        opened.append(os.fsdecode(args[0]))


sys.addaudithook(audit)
import mmalign_jax
assert os.path.dirname(mmalign_jax.__file__) == os.path.join(site, "mmalign_jax"), mmalign_jax.__file__
from mmalign_jax.pipeline import recipe
configs = {}
for name in ("sft", "dpo", "steerlm", "rejection_sampling", "generate", "pipeline"):
    for preset in ("demo", "llava-1.5-7b"):
        configs[f"{name}:{preset}"] = recipe.load_config(name, preset).to_json()
from mmalign_jax import bench
bench.missing_packages = lambda name: []     # torch / trl need not be installed for the command
commands, origins = {}, {}
for name in ("torch", "trl"):
    cmd, err = bench.baseline_command(name, bench.Workload("tiny", 2, 8, 8), 1, 0)
    assert err is None, err
    assert cmd[1] == "-m", cmd               # run as a module of this package
    commands[name] = cmd[1:3]
    origins[name] = importlib.util.find_spec(cmd[2]).origin
package = os.path.join(site, "mmalign_jax") + os.sep
outside = sorted({p for p in opened
                  if os.path.realpath(os.path.abspath(p)).startswith((repo + os.sep, site + os.sep))
                  and not (os.path.abspath(p) + os.sep).startswith(package)})
heavy = [m for m in ("torch", "transformers", "trl") if m in sys.modules]
print(json.dumps({"outside": outside, "commands": commands, "origins": origins,
                  "configs": sorted(configs), "heavy": heavy}))
"""


def test_package_reads_no_files_outside_itself(tmp_path):
    """An installed copy works: the package alone (copied without the repository around it —
    no configs/, no benchmarks/ beside it) run from an empty folder loads every method config
    through the pipeline's loader and resolves the bench's baselines as modules of its own,
    and the process opens no file of the repository checkout (nor beside the copy)."""
    import shutil
    site, cwd = tmp_path / "site", tmp_path / "cwd"
    shutil.copytree(PACKAGE, site / "mmalign_jax", ignore=shutil.ignore_patterns("__pycache__"))
    cwd.mkdir()
    env = subprocess_env()
    env["PYTHONPATH"] = str(site)            # not the checkout
    res = _run(_OUTSIDE, env, str(site.resolve()), os.path.realpath(ROOT), cwd=str(cwd))
    assert res["outside"] == [], res["outside"]
    assert len(res["configs"]) == 12
    assert res["heavy"] == []                # the bench imports no baseline's packages
    for name, origin in res["origins"].items():
        assert origin.startswith(str(site / "mmalign_jax" / "")), (name, origin)


# ----------------------------------------------------- config overrides (issue 25, case 2)

def test_a_typo_in_a_config_override_is_one_sentence(tmp_path):
    """`--config.dpo.betta=0.1` was a 55-line traceback ending in ml_collections' KeyError
    repr; now stderr is one line naming the field and the nearest valid names, exit 2 — for
    every entry point that takes --config (train here; generate and pipeline in process)."""
    res = subprocess.run([sys.executable, "-m", "mmalign_jax.train", "--config",
                          os.path.join(ROOT, "configs", "dpo.py"), "--config.dpo.betta=0.1"],
                         cwd=str(tmp_path), env=subprocess_env(), capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        "error: --config.dpo.betta: there is no field 'betta' in config.dpo; did you mean "
        "'beta'? (config.dpo has: beta, label_smoothing, logp_reduction, loss_type, "
        "reference, sft_weight)"]

    from absl import flags
    from ml_collections import config_flags
    from mmalign_jax.runtime import config_override_error
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, flag_values=fv)

    def err(config_file, *overrides):
        argv = ["prog", "--config", os.path.join(ROOT, "configs", config_file), *overrides]
        return config_override_error(fv["config"], argv)

    assert err("generate.py", "--config.sampling.temprature=0.7").startswith(
        "--config.sampling.temprature: there is no field 'temprature' in config.sampling; "
        "did you mean 'temperature'?")
    assert err("pipeline.py", "--config.seed=1", "--config.methds=dpo").startswith(
        "--config.methds: there is no field 'methds' in config; did you mean 'methods' or "
        "'method_seeds'?")
    msg = err("dpo.py", "--config.zzz=1")   # nothing near: every field of the section
    assert msg.startswith("--config.zzz: there is no field 'zzz' in config (config has: ")
    assert "optim" in msg and "did you mean" not in msg
    assert err("dpo.py", "--config.dpo.beta.x=1") == (
        "--config.dpo.beta.x: config.dpo.beta is a float, not a section with fields")
    assert err("dpo.py", "--config.dpo.beta=0.2", "--config.optim.lr=1e-4") is None


_BRIEF = r"""
import gc, logging, sys
from mmalign_jax.runtime import brief_library_errors
logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
brief_library_errors()
try:
    raise ValueError("RESOURCE_EXHAUSTED: No space left on device")
except ValueError:
    logging.getLogger("absl").exception("_SignalingThread.run() raised an exception")
    logging.getLogger("asyncio").error("Future exception was never retrieved", exc_info=True)
    logging.getLogger("mmalign_jax.x").exception("ours keeps its traceback")


class Dies:   # an exception nobody can catch goes to sys.unraisablehook, as tensorstore's
    def __init__(self, text):
        self.text = text

    def __del__(self):
        raise RuntimeError(self.text)


Dies("Event loop is closed")
Dies("something else")
gc.collect()
"""


def test_orbax_thread_failures_are_their_message_only():
    """A full disk was 53 tracebacks: orbax's threads (absl logger), asyncio's abandoned
    futures and tensorstore's callbacks on orbax's closed event loop (unraisable hook) each
    printed one. The train/pipeline entry points keep the messages, drop those tracebacks,
    and leave every other error as it was."""
    out = subprocess.run([sys.executable, "-c", _BRIEF], env=subprocess_env(), cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    err = out.stderr
    assert "absl: _SignalingThread.run() raised an exception\n" in err
    assert "never retrieved" not in err and "Event loop is closed" not in err
    assert "ours keeps its traceback\nTraceback" in err
    assert "RuntimeError: something else" in err
    assert err.count("Traceback") == 2, err   # ours, and the other unraisable error
