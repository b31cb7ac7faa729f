"""Requests the app refuses at once, before MONAI Label queues them as a background task.

``POST /train/<model>`` is answered ``200`` and the training runs in a background process; for a model without
a training task (Co-Seg and LTSE are served but not trained from here, or a name no bundle is served under)
that process only fails later, in the task's log. :func:`refuse_training_without_task` puts a route in front
of the server's that answers such a request ``404`` at once, with why and which models can be trained.
"""

from __future__ import annotations

import functools
import inspect
from typing import Callable, Mapping

from fastapi import FastAPI, HTTPException
from fastapi.routing import APIRoute

TRAIN_PATH = "/train/{model}"


def why_not_trained(model: str, trainers: Mapping[str, object], not_trained: Mapping[str, str]) -> str | None:
    """None when ``model`` has a training task; else what a client is told (``not_trained``: served models
    without one, and why)."""
    if model in trainers:
        return None
    offered = f"models trained from here: {', '.join(sorted(trainers)) or 'none'}"
    if model in not_trained:
        return f"{model} has no /train task ({not_trained[model]}); {offered}"
    return f"no model {model!r} is served; {offered}"


def refuse_training_without_task(server: FastAPI, train_endpoint: Callable, reason: Callable[[str], str | None],
                                 prefix: str = "") -> None:
    """Put a route in front of ``server``'s ``POST /train/{model}``: ``reason(model)`` not None -> HTTP 404
    with it; else ``train_endpoint`` (MONAI Label's own) answers, with the same parameters and role check."""
    if any(getattr(route, "endpoint", None) is not None and
           getattr(route.endpoint, "refuses_models_without_training", False) for route in server.router.routes):
        return  # already in front (the app was started again in the same server)

    @functools.wraps(train_endpoint)  # the same parameters (the model, the user's role) for FastAPI to fill in
    async def train_if_it_can(**kwargs):
        why = reason(kwargs["model"])
        if why is not None:
            raise HTTPException(status_code=404, detail=why)
        answer = train_endpoint(**kwargs)
        return await answer if inspect.isawaitable(answer) else answer

    train_if_it_can.refuses_models_without_training = True
    server.router.routes.insert(0, APIRoute(prefix + TRAIN_PATH, train_if_it_can, methods=["POST"],
                                            include_in_schema=False))
