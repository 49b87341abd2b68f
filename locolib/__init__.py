"""locolib: the shared code behind the book on 'Locality-Promoting Representation Learning'.

Submodules are imported explicitly (``from locolib import cohesion``); importing the package
itself does no work.
"""

__version__ = "0.1.0"
