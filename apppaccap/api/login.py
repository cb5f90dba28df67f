"""login / logout."""

from apppaccap.api.registry import endpoint
from apppaccap.wire import DataType


@endpoint(DataType.STRING, public=True)
def login(ctx, *, username: str, password: str) -> str:
    """Log in and get a token to pass as `token` with every later call.

    - username: a user created with `apppaccap user add`
    - password: that user's password
    Returns the token (STRING) and sets it as the HttpOnly cookie `apppaccap_token`; the
    door also takes it from the `X-AppPacCap-Token` header. Wrong credentials:
    INVALID_CREDENTIALS. After a failure the same user name and the same address wait
    (0.25 s, doubling to 8 s) and failed logins are capped server-wide; a login tried
    too soon, or while 4 others are being checked, is BUSY.
    """
    return ctx.logins.login(username, password, ctx.remote)


@endpoint(DataType.INT)
def logout(ctx) -> int:
    """End the session of the token sent with this call (and clear its cookie)."""
    if ctx.token:
        ctx.logins.logout(ctx.token)
    return 0
