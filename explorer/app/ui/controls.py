"""Sidebar controls, mirrored in the URL query string. Controls that do not apply to the configuration are
shown disabled (explorer.run.controls.relevant): they change nothing, so they start no run and stay out of the
link."""

from __future__ import annotations

from typing import Any

import streamlit as st

from explorer.app import service
from explorer.app.service import Control, ModelCard
from explorer.app.ui import state
from explorer.core.markup import md


def _init_from_query(baselines: list[str], default: str) -> None:
    """On a session's first run, seed the widgets from the query string (a shared link)."""
    if st.session_state.get("_controls_initialised"):
        return
    values, problems = state.parse_query(dict(st.query_params), baselines)
    for k, v in {**state.DEFAULTS, "baseline": default, **values}.items():
        st.session_state.setdefault(k, v)
    if st.session_state["baseline"] not in baselines:
        st.session_state["baseline"] = baselines[0]
    ship = st.query_params.get("ship")
    if ship is not None:
        if ship in service.SHIPS:
            st.session_state.setdefault("ship", ship)
        else:
            problems.append(f"ship={ship!r} must be one of: {', '.join(service.SHIPS)}")
    st.session_state["_query_problems"] = problems
    st.session_state["_controls_initialised"] = True


def apply_pending() -> None:
    """Controls set by a button (the sweet spot's 'apply'), written before any widget is drawn, as Streamlit
    requires for widgets that already exist."""
    pending = st.session_state.pop("_apply_controls", None)
    if pending:
        for k, v in pending.items():
            st.session_state[k] = v


def sidebar(cards: dict[str, ModelCard], default: str) -> dict[str, Any]:
    baselines = list(cards)
    _init_from_query(baselines, default)
    switched = state.switch_model(st.session_state, st.session_state["baseline"])
    if switched:
        st.session_state["_switched"] = (st.session_state["baseline"], *switched)
    apply_pending()
    sb = st.sidebar  # its heading is the shell's (explorer.app.ui.shell), drawn before the heavy imports
    sb.selectbox("Baseline model", baselines, key="baseline")
    told = st.session_state.get("_switched")
    if told and told[0] == st.session_state["baseline"]:
        new, old, restored = told
        sb.info(f"{md(new)} opens on " + ("the compression settings you last used with it" if restored else
                "its default settings: no compression setting is carried over") + f" ({md(old)}'s settings are "
                "kept for when you return to it).")
    now = {k: st.session_state[k] for k in state.DEFAULTS}
    card = cards[now["baseline"]]
    ships = service.ship_choices(dict(card))
    if st.session_state.get("ship", ships[0]) not in ships:  # an ONNX model has no packed file
        st.session_state["ship"] = ships[-1]
    sb.selectbox("What you deploy", ships, key="ship",
                 format_func=lambda k: service.SHIPS[k][1][0].upper() + service.SHIPS[k][1][1:],
                 help="The file you will ship: its bytes are the size on the tiles, the Pareto chart, the sweet spot "
                      "and the summary, against the baseline's own file of that kind.")
    sb.toggle("Presenter view", key="presenter",
              help="For a demo: the Overview shows three figures, the curve with this configuration marked and one "
                   "sentence; the statistics and tables stay one click away")
    _refused_from_link(card, now["baseline"])
    on = state.relevant(now, card)
    for title, opened, ctrls in service.sections():  # every registered technique's, the operator's own too
        with sb.expander(title, expanded=opened):
            for ctrl in ctrls:
                _widget(ctrl, card, ctrl.name in on)

    controls = {k: st.session_state[k] for k in state.DEFAULTS}
    link = state.to_query(controls, card)
    if st.session_state.get("ship", service.SHIP_DEFAULT) != service.SHIP_DEFAULT:
        link["ship"] = st.session_state["ship"]
    _mirror(link)  # the link reopens this view
    for p in st.session_state.get("_query_problems", []):
        st.warning(f"Ignored from the link: {md(p)}")  # in the page, not below the sidebar's controls
    return controls


def _widget(ctrl: Control, card: ModelCard, applies: bool) -> None:
    """One technique's control as its own data says: a select slider or box for options (less those this model
    refuses), a box for a switch, a slider or number box for a number; disabled where it cannot change the result."""
    why = ctrl.unavailable(card) if ctrl.unavailable else None
    if why and isinstance(ctrl.default, bool):  # never for this model: drawn off, under a key of its own, so the
        st.checkbox(ctrl.title, value=bool(ctrl.off), disabled=True, key=f"{ctrl.name}_not_applicable",
                    help=md(why))
        return  # setting kept for other models stays as it is
    kw: dict[str, Any] = {"key": ctrl.name, "help": md(why or ctrl.help) or None}  # a model's name may be in it
    applies = applies and not why
    if ctrl.options:
        options = list(ctrl.allowed(card))
        if ctrl.slider:  # a slider's ticks have room for the values only
            st.select_slider(ctrl.title, options, disabled=not applies, **kw)
        else:
            st.selectbox(ctrl.title, options, disabled=not applies, format_func=ctrl.say, **kw)
    elif isinstance(ctrl.default, bool):
        st.checkbox(ctrl.title, disabled=not applies, **kw)
    else:
        whole = isinstance(ctrl.default, int)
        lo, hi, step = (int(v) if whole else float(v) for v in (ctrl.lo or 0, ctrl.hi or 0, ctrl.step or 1))
        draw = st.slider if ctrl.slider else st.number_input
        draw(ctrl.title, lo, hi, step=step, disabled=not applies, format=ctrl.fmt, **kw)


def _refused_from_link(card: ModelCard, name: str) -> None:
    """A value this model refuses (from a link, or kept from another model's settings, such as attention heads on a
    model without attention) is set back to its default and said in the page until the setting changes."""
    for ctrl in service.all_controls():
        v = st.session_state.get(ctrl.name)
        why = ctrl.refuse(v, card) if ctrl.refuse and ctrl.options else None
        if why:  # plain text: escaped where it is shown
            st.session_state[f"_refused_{ctrl.name}"] = (name, ctrl.default, f"{why}: {ctrl.title.lower()} is "
                                                         f"{ctrl.say(ctrl.default)} instead.")
            st.session_state[ctrl.name] = ctrl.default
        told = st.session_state.get(f"_refused_{ctrl.name}")
        if told and told[0] == name and st.session_state.get(ctrl.name) == told[1]:
            st.warning(md(told[2]))


BOUND = ("tab",)  # query parameters that widgets keep themselves (st.tabs' bind="query-params")


def _mirror(wanted: dict[str, str]) -> None:
    """Make the URL's query string say `wanted`, leaving the parameters bound to widgets alone (Streamlit
    refuses to set them, and from_dict would drop them)."""
    for k in [k for k in st.query_params if k not in wanted and k not in BOUND]:
        del st.query_params[k]
    for k, v in wanted.items():
        if st.query_params.get(k) != v:
            st.query_params[k] = v
