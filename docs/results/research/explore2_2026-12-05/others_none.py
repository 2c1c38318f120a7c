"""Exploration only: the SRN with the inverse's others='none' (g = tanh(V h + c)), by patching add_inverse."""
import sys
import tpgraph.graph as G
orig = G.Graph.add_inverse
def patched(self, *a, **kw):
    if kw.get("weight") is not None:
        kw["others"] = "none"
    return orig(self, *a, **kw)
G.Graph.add_inverse = patched
from tpgraph.cli import main
sys.exit(main(sys.argv[1:]))
