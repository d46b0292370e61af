"""Show a learner the code a lesson relies on, highlighted, instead of hiding it in a module.

>>> def add(a: int, b: int) -> int:
...     return a + b
>>> print(source(add).data.splitlines()[1])
def add(a: int, b: int) -> int:
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from IPython.display import Markdown


def source(*functions: Callable[..., Any]) -> Markdown:
    """The source of ``functions`` as one highlighted Python block, to read in a notebook."""
    code = "\n\n".join(inspect.getsource(fn).rstrip() for fn in functions)
    return Markdown(f"```python\n{code}\n```")
