"""login / logout."""

from apppaccap.api.registry import INT
from apppaccap.api.registry import STRING
from apppaccap.api.registry import action


@action(STRING, public=True)
def login(ctx, *, username: str, password: str) -> str:
    """Log in and get a token to pass as `token` with every later call.

    - username: a user created with `apppaccap user add`
    - password: that user's password
    Returns the token (STRING). Wrong credentials: INVALID_CREDENTIALS, after a delay
    that doubles with each consecutive failure from the same address.
    """
    return ctx.sessions.login(username, password, ctx.remote)


@action(INT)
def logout(ctx) -> int:
    """End the session of the token sent with this call."""
    if ctx.token:
        ctx.sessions.logout(ctx.token)
    return 0
