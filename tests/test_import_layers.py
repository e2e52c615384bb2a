"""The import graph of sora_jax/ has floors and no cycles (read from the source with ast; nothing is imported).

Every module sits on a floor and may import only from its own floor or the floors below.
Imports inside functions count: a lazy import upwards is still an upward dependency.
Move a function down rather than import upwards.
"""

import ast
import pathlib

import pytest

PACKAGE_ROOT = pathlib.Path(__file__).resolve().parent.parent / "sora_jax"

# The floors, bottom to top. A module belongs to the floor of the longest prefix listed for it.
FLOORS = (
  # 0. leaves: configuration, media, monitoring, the diffusion maths, pure metrics
  (
    "sora_jax.configuration",
    "sora_jax.hardware",  # CPU model / flags, the compute dtype "auto" stands for
    "sora_jax.errors",
    "sora_jax.media",
    "sora_jax.monitoring",
    "sora_jax.diffusion",
    "sora_jax.evaluation",  # (only evaluation.metrics here; the modules listed on higher floors go there)
  ),
  # 1. the device mesh, logical-axis partitioning, multi-host start-up
  ("sora_jax.sharding",),
  # 2. networks: VAE, DiT, text encoders and their text fields, the denoiser factory
  ("sora_jax.models",),
  # 3. datasets, input pipelines, the latent cache; the shapes analyzer reads data/shapes
  ("sora_jax.data", "sora_jax.evaluation.shapes_analyzer"),
  # 4. train steps, the loop, optimizer, checkpoints, the memory estimator
  ("sora_jax.training",),
  # 5. workdir -> modules + inference params (reads checkpoints, builds models)
  ("sora_jax.restore",),
  # 6. the sampler, the Pipeline, and the evaluators that restore or sample
  (
    "sora_jax.sampling",
    "sora_jax.evaluation.vae_eval",
    "sora_jax.evaluation.adherence",
    "sora_jax.evaluation.cache_adherence",
    "sora_jax.evaluation.conditioning_eval",
  ),
  # 7. end-to-end runs the tools call (DiT training draws periodic samples); the web app over the Pipeline
  ("sora_jax.recipes", "sora_jax.app"),
  # 8. the package itself (exposes Pipeline lazily)
  ("sora_jax",),
)


def floor_of(module: str) -> int:
  best, floor = -1, None
  for level, prefixes in enumerate(FLOORS):
    for prefix in prefixes:
      if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
        best, floor = len(prefix), level
  if floor is None:
    raise AssertionError(f"{module} is on no floor: add it to FLOORS in {__file__}")
  return floor


def module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, pathlib.Path]:
  return {module_name(p): p for p in sorted(PACKAGE_ROOT.rglob("*.py"))}


def imports_of(path: pathlib.Path, modules: dict, name: str | None = None) -> set[str]:
  """The sora_jax modules `path` (module `name`) imports anywhere in its body (`from pkg import mod` -> pkg.mod)."""
  name = name or module_name(path)
  package = name if path.name == "__init__.py" else name.rpartition(".")[0]
  found = set()
  for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
    if isinstance(node, ast.Import):
      targets = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:  # relative import
        base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
      targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
    else:
      continue
    for target in targets:
      while target and target not in modules:  # `import sora_jax.models.vae.X` -> the deepest module
        target = target.rpartition(".")[0]
      if target.startswith("sora_jax") and target != name:
        found.add(target)
  return found


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
  return [
    f"{name} (floor {floor_of(name)}) imports {target} (floor {floor_of(target)})"
    for name, targets in sorted(graph.items())
    for target in sorted(targets)
    if floor_of(target) > floor_of(name)
  ]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """Strongly connected components of more than one module (Tarjan), each a cycle."""
  index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

  def visit(node):
    index[node] = low[node] = counter[0]
    counter[0] += 1
    stack.append(node)
    on_stack.add(node)
    for nxt in sorted(graph.get(node, ())):
      if nxt not in index:
        visit(nxt)
        low[node] = min(low[node], low[nxt])
      elif nxt in on_stack:
        low[node] = min(low[node], index[nxt])
    if low[node] == index[node]:
      component = []
      while True:
        member = stack.pop()
        on_stack.discard(member)
        component.append(member)
        if member == node:
          break
      if len(component) > 1:
        found.append(sorted(component))

  for node in sorted(graph):
    if node not in index:
      visit(node)
  return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
  modules = all_modules()
  return {name: imports_of(path, modules) for name, path in modules.items()}


def test_every_module_is_on_a_floor(graph):
  for name in graph:
    floor_of(name)
  assert "sora_jax.restore" in graph["sora_jax.sampling.pipeline"]  # the walk sees real edges
  assert "sora_jax.models.text.fields" in graph["sora_jax.data.latent_cache"]


def test_no_module_imports_from_a_higher_floor(graph):
  upward = upward_imports(graph)
  assert not upward, "imports against the floors:\n  " + "\n  ".join(upward)


def test_the_import_graph_has_no_cycles(graph):
  assert not cycles(graph), f"import cycles: {cycles(graph)}"


def test_the_checks_catch_a_lazy_upward_import_and_a_cycle(tmp_path):
  """What the checks above would report: a function-local import upwards, and a two-module cycle."""
  module = tmp_path / "a.py"
  module.write_text("import jax\n\ndef restore():\n  from sora_jax.training import checkpointing\n")
  known = {"sora_jax.training.checkpointing": None, "sora_jax.training": None}
  assert imports_of(module, known, name="sora_jax.models.a") == {"sora_jax.training.checkpointing"}
  graph = {"sora_jax.models.vae": {"sora_jax.training.vae_step"}, "sora_jax.training.vae_step": {"sora_jax.models.vae"}}
  assert upward_imports(graph) == ["sora_jax.models.vae (floor 2) imports sora_jax.training.vae_step (floor 4)"]
  assert cycles(graph) == [["sora_jax.models.vae", "sora_jax.training.vae_step"]]
