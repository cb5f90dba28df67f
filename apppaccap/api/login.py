"""login / logout."""

from apppaccap.api.registry import endpoint
from apppaccap.wire import DataType


@endpoint(DataType.STRING, public=True)
def login(ctx, *, username: str, password: str) -> str:
    """Log in and get a token to pass as `token` with every later call.

    - username: a user created with `apppaccap user add`
    - password: that user's password
    Returns the token (STRING) and sets it as the HttpOnly cookie `apppaccap_token`; the
    door also takes it from the `X-AppPacCap-Token` header. Only the local account whose
    connection logged in may use the token (a login from another host: other hosts).
    Wrong credentials: INVALID_CREDENTIALS. After a failure the same user name and the
    same address (a local caller: the same account) wait (0.25 s, doubling to 8 s) and
    failed logins are capped server-wide; a local account that has not failed itself
    does not wait for a name others failed. A login tried too soon, or while 4 others are
    being checked, is BUSY.
    """
    # the token is the caller's own: only the same local account may use it (auth.py)
    return ctx.logins.login(username, password, _throttle_source(ctx), ctx.caller_uid)


def _throttle_source(ctx) -> str:
    """Whom a failed login slows down: the local account when the kernel names it (one
    account owns all of 127.0.0.0/8, so rotating loopback addresses would otherwise buy it
    fresh addresses at will and let it fill the server-wide ceiling), else the address."""
    if ctx.caller_uid is not None:
        return f"uid {ctx.caller_uid}"
    return ctx.remote


@endpoint(DataType.INT)
def logout(ctx) -> int:
    """End the session of the token sent with this call (and clear its cookie)."""
    if ctx.token:
        ctx.logins.logout(ctx.token)
    return 0
