"""The page's controls as plain data: defaults, the Recipe they stand for, and the URL query string that
mirrors them so a view can be shared and reopened exactly. Pure functions, no Streamlit."""

from __future__ import annotations

import binascii
import hashlib
from collections.abc import MutableMapping
from typing import Any

from explorer.app.service import (  # (the page's names for them: controls reads DEFAULTS and relevant here)
    CHOICES,
    DEFAULTS,
    RANGES,
    ModelCard,
    Recipe,
    build,
    relevant,
)

# each technique declares its controls' defaults, choices and ranges (explorer.compress.base.Control); these tables
# follow the registry, so a technique registered after this import (the operator's own) is read from a link too
_CHOICES = CHOICES
_RANGES = RANGES


def parse_query(params: dict[str, str], baselines: list[str]) -> tuple[dict[str, Any], list[str]]:
    """Controls from a query string; values that do not parse or are out of range are dropped (and
    reported) so a stale link still opens, on the defaults for those controls."""
    out, problems = {}, []
    for key, raw in params.items():
        if key not in DEFAULTS:
            continue
        kind = type(DEFAULTS[key])
        try:
            if kind is bool:
                if raw not in ("0", "1", "true", "false"):
                    raise ValueError
                val: Any = raw in ("1", "true")
            elif kind is int:
                val = int(raw)
            elif kind is float:
                val = float(raw)
            else:
                val = str(raw)
        except ValueError:
            problems.append(f"{key}={raw!r} is not a {kind.__name__}")
            continue
        if key in _CHOICES and val not in _CHOICES[key]:
            problems.append(f"{key}={raw!r} must be one of: {', '.join(map(str, _CHOICES[key]))}")
            continue
        if key == "baseline" and val not in baselines:
            problems.append(f"baseline={raw!r} must be one of: {', '.join(baselines)}")
            continue
        if key in _RANGES and not (_RANGES[key][0] <= val <= _RANGES[key][1]):
            problems.append(f"{key}={raw!r} must be in [{_RANGES[key][0]}, {_RANGES[key][1]}]")
            continue
        out[key] = val
    return out, problems


def to_query(controls: dict[str, Any], card: ModelCard | None = None) -> dict[str, str]:
    """The baseline, and what differs from the defaults among the controls that apply, so links stay short,
    open the same model on every machine (the default model depends on which data sets a machine has), and
    never carry a control that was off."""
    keep = relevant(controls, card)
    q = {}
    for k, v in controls.items():
        if k in DEFAULTS and k in keep and v is not None and (v != DEFAULTS[k] or k == "baseline"):
            q[k] = ("1" if v else "0") if isinstance(v, bool) else str(v)
    return q


def to_recipe(c: dict[str, Any], card: ModelCard) -> Recipe:
    """The recipe the controls stand for (explorer.run.controls.build, the one builder)."""
    return build(c, card)


COMPRESSION = tuple(k for k in DEFAULTS if k != "baseline")  # the settings each model keeps for itself


def switch_model(session: MutableMapping[Any, Any], model: str) -> tuple[str, bool] | None:
    """Each model keeps its own compression settings: on a switch, the settings of the model left are kept for
    it, and the model opened gets the settings it had in this session, else the defaults. Returns the model left
    and whether the opened one got its own earlier settings back (None where the model did not change).
    `session` is the page's session state, changed before the sidebar's widgets are drawn."""
    old = session.get("_model")
    session["_model"] = model
    if old is None or old == model:
        return None
    kept = session.setdefault("_settings_of", {})
    kept[old] = {k: session[k] for k in COMPRESSION if k in session}
    mine = kept.get(model)
    for k in COMPRESSION:
        session[k] = (mine or DEFAULTS).get(k, DEFAULTS[k])
    return old, bool(mine)


def visitor_of(ip: str | None, xsrf_cookie: str | None, session: str) -> str:
    """Who is asking, so that one visitor's many tabs share one turn on the run board: the connection's address
    where the server sees one (Streamlit gives none on localhost), else the browser's own XSRF token, which every
    tab of one browser shares (the cookie's mask changes from page to page; the token it masks does not), else
    the page itself. Hashed: the token is a secret of that browser."""
    if ip:
        return "address " + ip
    token = _xsrf_token(xsrf_cookie or "")
    if token:
        return "browser " + hashlib.sha256(token).hexdigest()[:16]
    return "page " + session


def _xsrf_token(cookie: str) -> bytes | None:
    """The token in a version-2 XSRF cookie ("2|mask|masked token|time", as Tornado and Streamlit write it)."""
    parts = cookie.strip("\"'").split("|")
    if len(parts) != 4 or parts[0] != "2":
        return None
    try:
        mask, masked = binascii.a2b_hex(parts[1]), binascii.a2b_hex(parts[2])
    except (binascii.Error, ValueError):
        return None
    if len(mask) != 4 or not masked:
        return None
    return bytes(b ^ mask[i % 4] for i, b in enumerate(masked))
