"""The package is layered: no import cycle, and imports only go downward.

The graph is read from the source with `ast`, so it counts every import,
module-level or inside a function: an import that runs only when called
still ties the two modules together.
"""

import ast
import pathlib


PACKAGE = pathlib.Path(__file__).resolve().parent.parent / 'latentlm'

# Bottom to top. A module may import its own layer's modules and those of
# the layers below it, never a layer above. The commands (`python -m
# latentlm.X`) are the top; nothing imports them.
LAYERS = (
    ('core',),
    ('data',),
    ('models',),
    ('sampling',),
    ('metrics',),
    ('tasks',),
    ('training',),
    ('train', 'evaluate', 'generate', 'report', 'bench', 'aot', 'ngram',
     'spelling'),
)
COMMANDS = LAYERS[-1]


def _modules(root=PACKAGE):
  """{dotted name: path} of every module in the package."""
  found = {}
  for path in sorted(root.rglob('*.py')):
    parts = list(path.relative_to(root.parent).with_suffix('').parts)
    if parts[-1] == '__init__':
      parts = parts[:-1]
    found['.'.join(parts)] = path
  return found


def _resolve(name, modules):
  """The module `name` stands for: itself, or its nearest enclosing one."""
  while name and name not in modules:
    name = name.rpartition('.')[0]
  return name or None


def import_graph(root=PACKAGE):
  """{module: {module it imports}} inside the package, from the source."""
  modules = _modules(root)
  top = root.name
  graph = {}
  for name, path in modules.items():
    is_package = path.name == '__init__.py'
    package = name if is_package else name.rpartition('.')[0]
    edges = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
      targets = []
      if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
      elif isinstance(node, ast.ImportFrom):
        if node.level:
          base = package.split('.')
          base = base[:len(base) - (node.level - 1)]
          source = '.'.join(base + ([node.module] if node.module else []))
        else:
          source = node.module
        # `from a import b` imports the module a.b when there is one.
        targets = [f'{source}.{alias.name}' if f'{source}.{alias.name}' in
                   modules else source for alias in node.names]
      for target in targets:
        if target == top or target.startswith(top + '.'):
          resolved = _resolve(target, modules)
          if resolved and resolved != name:
            edges.add(resolved)
    graph[name] = edges
  return graph


def find_cycle(graph):
  """One import cycle as a list of modules (first == last), or None."""
  WHITE, GREY, BLACK = 0, 1, 2
  color = dict.fromkeys(graph, WHITE)
  stack = []

  def visit(node):
    color[node] = GREY
    stack.append(node)
    for dep in sorted(graph.get(node, ())):
      if color.get(dep, BLACK) == GREY:
        return stack[stack.index(dep):] + [dep]
      if color.get(dep) == WHITE:
        found = visit(dep)
        if found:
          return found
    stack.pop()
    color[node] = BLACK
    return None

  for node in sorted(graph):
    if color[node] == WHITE:
      found = visit(node)
      if found:
        return found
  return None


def layer(module):
  """The index in LAYERS of a module's layer (the package root: None)."""
  parts = module.split('.')
  if len(parts) < 2:
    return None
  for i, names in enumerate(LAYERS):
    if parts[1] in names:
      return i
  raise AssertionError(f'{module} is in no layer: add it to LAYERS in '
                       f'{pathlib.Path(__file__).name}')


def layering_violations(graph):
  """'a -> b' for each import of a layer above the importer's."""
  bad = []
  for module, deps in sorted(graph.items()):
    for dep in sorted(deps):
      if module.split('.')[1:2] == dep.split('.')[1:2]:
        continue  # inside one folder (or a command importing itself)
      low, high = layer(module), layer(dep)
      if low is None or high is None:
        continue
      if high > low or (high == low and dep.split('.')[1] in COMMANDS):
        bad.append(f'{module} -> {dep}')
  return bad


def test_no_import_cycle():
  cycle = find_cycle(import_graph())
  assert cycle is None, 'import cycle: ' + ' -> '.join(cycle)


def test_imports_only_go_down():
  bad = layering_violations(import_graph())
  assert not bad, ('imports of a layer above (LAYERS, bottom to top: '
                   f'{LAYERS}):\n' + '\n'.join(bad))


def test_every_module_has_a_layer():
  for module in import_graph():
    layer(module)


def test_graph_sees_function_local_and_relative_imports(tmp_path):
  root = tmp_path / 'pkg'
  (root / 'sub').mkdir(parents=True)
  (root / '__init__.py').write_text('')
  (root / 'sub' / '__init__.py').write_text('')
  (root / 'a.py').write_text('from pkg.sub import b\n')
  (root / 'sub' / 'b.py').write_text(
      'def f():\n  from pkg import a\n  return a\n')
  (root / 'sub' / 'c.py').write_text('from . import b\nimport pkg.a\n')
  graph = import_graph(root)
  assert graph['pkg.a'] == {'pkg.sub.b'}
  assert graph['pkg.sub.b'] == {'pkg.a'}
  assert graph['pkg.sub.c'] == {'pkg.sub.b', 'pkg.a'}
  assert find_cycle(graph) in (['pkg.a', 'pkg.sub.b', 'pkg.a'],
                               ['pkg.sub.b', 'pkg.a', 'pkg.sub.b'])
