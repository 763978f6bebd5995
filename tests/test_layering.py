"""The import graph of `cvjax` has no cycle between any two modules.

import-linter (`make lint`) keeps the layers and checks cycles between sibling
packages; a cycle through a package's own `__init__` (the package importing a module
that imports the package back) is not a sibling cycle, so this test walks every import.
"""
import grimp


def _cycles(graph) -> list[tuple[str, str]]:
  """(importer, imported) pairs whose imported module leads back to the importer."""
  return sorted((module, imported)
                for module in graph.modules
                for imported in graph.find_modules_directly_imported_by(module)
                if graph.chain_exists(importer=imported, imported=module))


def test_no_import_cycle_between_cvjax_modules():
  assert _cycles(grimp.build_graph('cvjax', cache_dir=None)) == []


def test_a_cycle_through_a_package_init_is_found():
  graph = grimp.ImportGraph()
  for module in ('pkg', 'pkg.names', 'pkg.reader'):
    graph.add_module(module)
  graph.add_import(importer='pkg', imported='pkg.reader')
  graph.add_import(importer='pkg.reader', imported='pkg.names')
  assert _cycles(graph) == []
  graph.add_import(importer='pkg.reader', imported='pkg')
  assert _cycles(graph) == [('pkg', 'pkg.reader'), ('pkg.reader', 'pkg')]
