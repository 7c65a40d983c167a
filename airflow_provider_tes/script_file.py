"""When a ``command`` names a script file next to the DAG, and when it is the script itself.

Airflow's own rule (``template_ext``) reads *any* string of *any* templated field that ends
in ``.sh`` as a file name, so an inline script whose last word is ``run.sh`` fails with
``TemplateNotFound`` (Airflow issue #21918), and so would an input URL such as
``s3://bucket/setup.sh``. The operator therefore declares no ``template_ext`` and applies
this narrower rule to ``command`` alone:

    a ``str`` command is a file name when it is one word (no whitespace at all), ends in
    ``.sh`` or ``.bash``, and that file exists in the DAG's template search path (the DAG's
    folder plus ``template_searchpath``). Anything else is an inline script.

A file's content is then templated like an inline script. A list command (argv) is never
read from a file. To run a script of that name from the image instead, write ``sh run.sh``
or pass an argv.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import jinja2

#: Endings of a ``command`` that may name a script file.
SCRIPT_FILE_ENDINGS = (".sh", ".bash")


def looks_like_script_file(command: Any) -> bool:
    """Whether ``command`` has the shape of a script file name (one word ending in .sh/.bash)."""
    return (
        isinstance(command, str)
        and command.endswith(SCRIPT_FILE_ENDINGS)
        and not any(char.isspace() for char in command)
    )


def read_script_file(command: Any, jinja_env: jinja2.Environment) -> tuple[str, str] | None:
    """``(content, path)`` of the file ``command`` names, or None when it is an inline script."""
    import jinja2

    if not looks_like_script_file(command) or jinja_env.loader is None:
        return None
    try:
        source, filename, _ = jinja_env.loader.get_source(jinja_env, command)
    except jinja2.TemplateNotFound:
        return None
    return source, filename or command
