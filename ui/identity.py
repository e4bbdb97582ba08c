"""Who is using the app: the Hugging Face account on a Space, the ``--auth`` user, or a name typed at the start;
and the admin check every privileged handler calls (enforced in the handler, not only by hiding buttons).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import gradio as gr

from alignment.limits import LimitExceeded
from labeling.store import LabelError, validate_labeler
from ui.context import AppContext


def signed_in_user(request: gr.Request | None, profile: gr.OAuthProfile | None = None) -> str | None:
    """The name the server vouches for (OAuth or --auth), or None when nobody signed in."""
    if profile is not None:
        name = getattr(profile, "username", None) or (profile.get("preferred_username") if hasattr(profile, "get")
                                                       else None)
        if name:
            return str(name)
    if request is not None and getattr(request, "username", None):
        return str(request.username)
    return None


def labeler_name(request: gr.Request | None, profile: gr.OAuthProfile | None, typed: str | None) -> str:
    """The name labels are credited to; a typed name only counts when nobody is signed in."""
    name = signed_in_user(request, profile) or (typed or "")
    try:
        return validate_labeler(name)
    except LabelError as exc:
        raise gr.Error(str(exc)) from exc


def require_admin(ctx: AppContext, request: gr.Request | None, profile: gr.OAuthProfile | None = None,
                  action: str = "do this") -> str:
    """Return the admin's name, or stop the handler with a clear refusal."""
    user = signed_in_user(request, profile)
    if ctx.is_admin(user):
        return user or "local user"
    who = f"'{user}'" if user else "You are not signed in, so you"
    raise gr.Error(f"{who} cannot {action}: only admins can. Ask an admin, or sign in as one "
                   "(admins are named with --admins, or the Space owner).", title="Admins only")


def user_key(request: gr.Request | None, profile: gr.OAuthProfile | None = None) -> str:
    """Who to count a request against: the signed-in name, else the browser session."""
    user = signed_in_user(request, profile)
    if user:
        return f"user:{user}"
    return f"session:{getattr(request, 'session_hash', None) or 'anonymous'}"


@contextmanager
def user_slot(ctx: AppContext, request: gr.Request | None, profile: gr.OAuthProfile | None = None,
              what: str = "generation") -> Iterator[None]:
    """Hold one of this user's long-request slots for the duration, or refuse with a clear message."""
    try:
        with ctx.limiter.slot(user_key(request, profile), what):
            yield
    except LimitExceeded as exc:
        raise gr.Error(str(exc), title="One at a time") from exc
