"""Synthetic anatomy: tissues and physical CT numbers, scanner effects, procedural phantoms, rendering.

Submodules are imported on use (``from mskseg.synth.phantom import make_l3_phantom``) so that importing the
package stays cheap.
"""
from __future__ import annotations
