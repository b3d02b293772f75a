"""The ``nsarm`` command-line suite (Typer). Modules here never import torch at module level."""
