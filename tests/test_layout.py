"""The package's tiers, enforced: who may import whom.

Each folder of `keras_dynmask` is a tier and uses only the tiers below it:
core < attention < layers < models < tf < app (which alone may use the
package's public names). Nothing outside `tf` and `app` imports TensorFlow
when it is imported, and only `layers/_keras_mask` reaches into
`keras.src`.
"""

import ast
import os
import pathlib
import subprocess
import sys

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "keras_dynmask"
TIERS = ("core", "attention", "layers", "models", "tf", "app")
TENSORFLOW = ("tensorflow", "tensorflow_text", "ai_edge_litert")
# Functions below `tf` that import TensorFlow when they run, only under the
# TensorFlow backend: tracing generation, the replica under tf.distribute,
# and whether XLA is compiling (block-wise attention's key blocks).
RUN_TIME_TENSORFLOW = {
    ("attention/blockwise.py", "available"),
    ("models/generation.py", "_compiled"),
    ("models/generation.py", "_compiled_loop"),
    ("layers/_distribution.py", "_replica_context"),
    ("layers/_distribution.py", "first_row"),
    ("layers/_distribution.py", "replica_count"),
    ("layers/_distribution.py", "logs_for_keras"),
    ("layers/_distribution.py", "synced_means"),
}


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path.relative_to(PACKAGE).as_posix(), ast.parse(path.read_text())


def _imports(tree):
    """`(module imported, enclosing function or None)` for every import."""
    found = []

    def visit(node, function):
        for child in ast.iter_child_nodes(node):
            inner = function
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                inner = function or child.name
            if isinstance(child, ast.Import):
                found.extend((alias.name, inner) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module:
                found.append((child.module, inner))
                if child.module == "keras_dynmask":
                    found.extend(
                        (f"keras_dynmask.{a.name}", inner) for a in child.names
                    )
            visit(child, inner)

    visit(tree, None)
    return found


def _tier(name):
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in TIERS else None


def test_every_module_lives_in_a_tier():
    for name, _ in _modules():
        assert name == "__init__.py" or name.split("/")[0] in TIERS, name


def test_tiers_import_only_the_tiers_below_them():
    broken = []
    for name, tree in _modules():
        if name == "__init__.py":
            continue  # the public names, loaded on first use
        own = TIERS.index(name.split("/")[0])
        for module, _ in _imports(tree):
            if module == "keras_dynmask":
                # The public names reach every tier: only the top may.
                if not name.startswith("app/"):
                    broken.append(f"{name} imports the package root")
            elif module.startswith("keras_dynmask."):
                tier = _tier(module)
                if tier is None or TIERS.index(tier) > own:
                    broken.append(f"{name} imports {module}")
    assert not broken, broken


def test_only_the_tensorflow_and_application_tiers_import_tensorflow():
    broken = []
    for name, tree in _modules():
        if name.split("/")[0] in ("tf", "app"):
            continue
        for module, function in _imports(tree):
            if module.split(".")[0] not in TENSORFLOW:
                continue
            if (name, function) not in RUN_TIME_TENSORFLOW:
                broken.append(f"{name}: {module} in {function or 'module'}")
    assert not broken, broken


def test_only_one_module_reaches_into_keras_internals():
    users = {
        name
        for name, tree in _modules()
        for module, _ in _imports(tree)
        if module.startswith("keras.src")
    }
    assert users == {"layers/_keras_mask.py"}


def test_importing_the_package_or_asking_for_help_loads_no_tensorflow():
    script = (
        "import sys, keras_dynmask\n"
        "from keras_dynmask.app import cli\n"
        "try:\n"
        "    cli.main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('tensorflow', 'keras', 'jax', 'torch'))\n"
        "print(loaded[:3])\n"
    )
    env = {**os.environ, "KERAS_DYNMASK_LAZY": "1"}  # as the command sets
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip().splitlines()[-1] == "[]"


def test_a_keras_file_loads_after_importing_the_package(tmp_path):
    """Keras finds our classes only once registered: importing the package
    registers them all, as a Keras extension's users expect."""
    import keras

    import keras_dynmask as kd

    ids = keras.Input((None,), dtype="int32")
    x = kd.TokenEmbedding(20, 8)(ids)
    x = kd.TransformerBlock(2, 16, pattern="causal & window(2)")(x)
    keras.Model(ids, x).save(tmp_path / "m.keras")
    script = (
        "import keras, keras_dynmask\n"
        f"model = keras.saving.load_model({str(tmp_path / 'm.keras')!r})\n"
        "print(type(model.layers[-1]).__name__)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "KERAS_DYNMASK_LAZY"}
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip().splitlines()[-1] == "TransformerBlock"


TENSORFLOW_TIERS = ("keras_dynmask.tf.", "keras_dynmask.app.")


def test_every_public_name_has_a_runnable_example():
    """`make test` runs every docstring example (`--doctest-modules`)."""
    import keras_dynmask as kd

    def docstring(name):
        module = kd._MODULES.get(name)
        defined_in = kd._PUBLIC.get(name, "")
        if module is None and not defined_in.startswith(TENSORFLOW_TIERS):
            return getattr(kd, name).__doc__
        # Read from the source: the `tf` and `app` modules need TensorFlow,
        # which this test's JAX environment may lack.
        path = PACKAGE.parent / ((module or defined_in).replace(".", "/"))
        path = path.with_suffix(".py")
        if not path.exists():
            path = path.with_suffix("") / "__init__.py"
        tree = ast.parse(path.read_text())
        if module is None:  # a class or function defined there
            (tree,) = [
                node
                for node in tree.body
                if getattr(node, "name", None) == name
            ]
        return ast.get_docstring(tree)

    missing = [
        name for name in kd.__all__ if ">>>" not in (docstring(name) or "")
    ]
    assert not missing, missing
    assert kd.__all__ == sorted(kd.__all__)


def test_layers_take_every_pattern_input_by_its_one_name():
    """`PATTERN_INPUTS` is the one list: each layer that reads pattern
    inputs takes all of them, by those names, and the builders make
    `keras.Input`s of the shapes it gives."""
    import inspect

    import keras_dynmask as kd
    from keras_dynmask.core.patterns import PATTERN_INPUTS

    for layer in (kd.MultiHeadAttention, kd.AttentionMask, kd.TransformerBlock):
        taken = set(inspect.signature(layer.call).parameters)
        assert set(PATTERN_INPUTS) <= taken, (layer.__name__, taken)
    model = kd.models.build_encoder(
        30,
        num_layers=1,
        num_heads=2,
        hidden_dim=8,
        intermediate_dim=16,
        pattern="segment & (prefix | span)",
    )
    shapes = {t.name: tuple(t.shape[1:]) for t in model.inputs}
    for name in ("segment_ids", "prefix_length", "span_length"):
        assert shapes[name] == PATTERN_INPUTS[name], (name, shapes)
