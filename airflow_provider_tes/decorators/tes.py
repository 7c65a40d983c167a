"""``@task.tes``: a function returns the command, and it runs on a TES server.

Shaped like ``@task.bash`` and ``@task.kubernetes_cmd``: the function body runs on the worker
when the task executes (so it may use its arguments, XComs and the context), and what it
returns is the ``command`` of a :class:`~airflow_provider_tes.operators.tes.TesTaskOperator`:
a script (str) or an argv (list of str). Every operator argument is a decorator argument.

A deferred task resumes in ``execute_complete`` on a fresh operator, rebuilt from the DAG,
and the function is called there again with the same arguments: the result is judged, and a
resubmission after preemption is built, from the same command. The command is not kept in
XCom, which the API and UI serve as it is (a script may hold what should not be shown there),
so the function must return the same command for the same arguments (no side effects).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.sdk.bases.decorator import DecoratedOperator, TaskDecorator, task_decorator_factory
from airflow.sdk.definitions._internal.types import SET_DURING_EXECUTION

from airflow_provider_tes.arguments import argument_error
from airflow_provider_tes.operators.tes import TesTaskOperator

if TYPE_CHECKING:
    from airflow.sdk import Context


class _TesDecoratedOperator(DecoratedOperator, TesTaskOperator):
    """A :class:`TesTaskOperator` whose ``command`` is what ``python_callable`` returns."""

    custom_operator_name = "@task.tes"
    template_fields: Sequence[str] = (*DecoratedOperator.template_fields, *TesTaskOperator.template_fields)
    template_fields_renderers: ClassVar[dict[str, str]] = {
        **DecoratedOperator.template_fields_renderers,
        **TesTaskOperator.template_fields_renderers,
    }
    # The command is known only once the function ran: show that one in "Rendered Template".
    overwrite_rtif_after_execution = True

    def __init__(
        self,
        *,
        python_callable: Callable[..., Any],
        op_args: Collection[Any] | None = None,
        op_kwargs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("command") is not None:
            raise argument_error("command", "is what the function decorated with @task.tes returns; drop it")
        if kwargs.get("executors") is not None:
            raise argument_error("executors", "is not for @task.tes: its function returns the command")
        kwargs.pop("command", None)
        if kwargs.pop("multiple_outputs", None):
            warnings.warn(
                f"multiple_outputs=True is not supported by {self.custom_operator_name}; ignored",
                UserWarning,
                stacklevel=3,
            )
        super().__init__(
            python_callable=python_callable,
            op_args=op_args,
            op_kwargs=op_kwargs,
            command=SET_DURING_EXECUTION,
            multiple_outputs=False,
            **kwargs,
        )

    def _command(self, context: Context) -> str | list[str]:
        returned = self.python_callable(*self.op_args, **self.determine_kwargs({**context, **self.op_kwargs}))
        name = getattr(self.python_callable, "__name__", "the function")
        if not (
            (isinstance(returned, str) and returned.strip())
            or (isinstance(returned, list) and returned and all(isinstance(a, str) for a in returned))
        ):
            raise argument_error(
                "command",
                f"{name} must return a script (non-empty str) or an argv (list of str), got {returned!r}",
            )
        command: str | list[str] = self.render_command(returned, context)
        return command

    def execute(self, context: Context) -> Any:
        self.command = self._command(context)
        return super().execute(context)

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> Any:
        self.command = self._command(context)
        return super().execute_complete(context, event)


def tes_task(python_callable: Callable[..., Any] | None = None, **kwargs: Any) -> TaskDecorator:
    """Run the command a function returns in a container on a TES server (``@task.tes``).

    The function returns a script (str, run by ``shell``) or an argv (list of str), and is
    called on the worker when the task runs; a returned string is templated, and one naming a
    ``.sh``/``.bash`` file next to the DAG is read from it, as ``command`` is. Accepts every
    :class:`~airflow_provider_tes.operators.tes.TesTaskOperator` argument except ``command``
    and ``executors``.
    """
    return task_decorator_factory(
        python_callable=python_callable,
        decorated_operator_class=_TesDecoratedOperator,
        **kwargs,
    )
