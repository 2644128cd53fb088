"""The officers' web console under /console/: server-rendered pages, every decision made with a security key.

A thin adapter: pages show what the services return (the request as the service recomputed it from stored
fields), and every action posts a WebAuthn assertion over a statement to the same service call the JSON API
uses. The session (a signed cookie: HttpOnly, SameSite=Strict, Secure over TLS, with an idle timeout) says only
who is reading; CSRF tokens guard every POST, POSTs from another origin are refused, and the Content-Security-
Policy allows no inline script.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any, TypeVar

from flask import (
    Blueprint,
    Flask,
    Response,
    current_app,
    jsonify,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_wtf.csrf import CSRFError, CSRFProtect

from appliance.api.problems import note_refusal, problem
from appliance.api.util import json_body, services
from appliance.domain import amounts, present, webauthn
from appliance.domain.messages import TYP_MINT_APPROVAL, TYP_MINT_REQUEST, TYP_POLICY_APPROVAL
from appliance.domain.policy import MINT_REQUESTER_ROLES, POLICY_PROPOSER_ROLE, Operator
from appliance.errors import ApplianceError, Forbidden, InvalidInput, NotFound

bp = Blueprint("console", __name__, url_prefix="/console", template_folder="templates", static_folder="static")
csrf = CSRFProtect()
VIEW_ROLES = frozenset({"treasury", "cfo", "security-admin", "auditor"})  # who may read mint requests
POLICY_ROLES = frozenset({"security-admin", "auditor"})
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
_F = TypeVar("_F", bound=Callable[..., Any])


def install(app: Flask) -> None:
    """Serve the console on `app` (the JSON API stays exempt from CSRF: every write there is signed)."""
    settings = services_of(app).console.app.settings
    app.config.update(SECRET_KEY=services_of(app).console.secret, SESSION_COOKIE_HTTPONLY=True,
                      SESSION_COOKIE_SAMESITE="Strict", SESSION_COOKIE_SECURE=settings.tls is not None,
                      SESSION_COOKIE_NAME="appliance_console", SESSION_COOKIE_PATH="/console",
                      WTF_CSRF_TIME_LIMIT=None, WTF_CSRF_SSL_STRICT=True)
    csrf.init_app(app)
    for name, blueprint in app.blueprints.items():
        if name != "console":
            csrf.exempt(blueprint)
    app.register_blueprint(bp)


def services_of(app: Flask) -> Any:
    return app.extensions["services"]


# -- session, roles, origin -------------------------------------------------------------------------------------

@bp.before_request
def _guard() -> Response | None:
    if request.method == "POST":
        origin = request.headers.get("Origin")
        if origin is not None and origin != request.host_url.rstrip("/") and origin not in _origins():
            raise Forbidden(f"a POST from {origin} is refused: the console accepts its own origin only")
    seen = session.get("seen")
    if seen is not None and time.time() - float(seen) > services().console.app.settings.console.idle_timeout_seconds:
        session.clear()
    if "operator" in session:
        session["seen"] = time.time()
    return None


def _origins() -> tuple[str, ...]:
    rp = services().console.bundle().policy.webauthn
    return () if rp is None else rp.origins


@bp.after_request
def _headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "same-origin"
    return response


def me() -> Operator | None:
    """The signed-in officer, still enrolled and enabled in the active bundle, or None."""
    return services().console.officer(session.get("operator"))


def signed_in(roles: frozenset[str] | None = None) -> Callable[[_F], _F]:
    """A page that needs a session (sign-in page otherwise) and, when `roles` is given, one of those roles."""

    def wrap(view: _F) -> _F:
        @functools.wraps(view)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            officer = me()
            if officer is None:
                session.clear()
                if request.method == "GET":
                    return redirect(url_for("console.login", next=request.path))
                raise Forbidden("sign in first: your session has ended")
            if roles is not None and not officer.roles & roles:
                raise Forbidden(f"{officer.name} holds no role that may see this ({', '.join(sorted(roles))})")
            return view(officer, *args, **kwargs)

        return guarded  # type: ignore[return-value]

    return wrap


@bp.errorhandler(ApplianceError)
def _refused(exc: ApplianceError) -> Any:
    """A refusal, in the problem's own words: JSON for the page's script, a page otherwise (counted and audited
    as the API's are)."""
    note_refusal(current_app, exc)
    if request.is_json or request.method == "POST":
        extra = {"errors": [{"location": p.location, "message": p.message} for p in exc.problems]}
        return problem(exc.status, exc.slug, exc.title, exc.detail, **extra)
    return render_template("problem.html", me=me(), error=exc), exc.status


@bp.errorhandler(CSRFError)
def _csrf(exc: CSRFError) -> Any:
    return problem(400, "csrf", "Refused", f"{exc.description}: reload the page and try again")


# -- sign-in ----------------------------------------------------------------------------------------------------

@bp.get("/login")
def login() -> str:
    return render_template("login.html", me=None, next=_safe_next(request.args.get("next")))


def _safe_next(target: object) -> str:
    return target if isinstance(target, str) and target.startswith("/console/") and "//" not in target \
        else url_for("console.home")


@bp.post("/login/options")
def login_options() -> Response:
    body = json_body()
    statement = services().console.login_statement(body.get("name") if isinstance(body, dict) else None)
    for key in ("operator", "seen", "registration"):  # whoever was signed in here is not any more
        session.pop(key, None)
    session["login"] = statement["payload"]
    return jsonify(statement)


@bp.post("/login")
def login_finish() -> Response:
    body = json_body()
    officer = services().console.login(session.pop("login", None), body)
    session.clear()  # a new session (and CSRF token) for the signed-in officer: nothing carries over
    session["operator"], session["seen"] = officer.name, time.time()
    return jsonify({"redirect": _safe_next(body.get("next") if isinstance(body, dict) else None)})


@bp.post("/logout")
def logout() -> Response:
    session.clear()
    return redirect(url_for("console.login"))  # type: ignore[return-value]


# -- mint requests ----------------------------------------------------------------------------------------------

def _shown(view: dict[str, Any], officer: Operator) -> dict[str, Any]:
    """A request as the pages show it: everything derived from the service's recomputed view."""
    s = services().console.app.settings
    bundle = services().console.bundle()
    allowlist = [{"chain_id": e.chain_id, "address": e.address, "label": e.label}
                 for e in bundle.policy.mint.allowlist]
    amount = int(view["amount"])
    now = services().console.app.now()
    return {**view, "tokens": amounts.format_tokens(amount, s.token_decimals, s.token_symbol),
            "base_units": f"{amount:,}", "label": present.label_of(allowlist, view["chain_id"], view["to"]),
            "created": present.utc(view["created_at"]), "expires": present.utc(view["expires_at"]),
            "valid_after_utc": present.utc(view["valid_after"]), "valid_before_utc": present.utc(view["valid_before"]),
            "age": present.age(now - int(view["created_at"])), "progress": present.progress(view["quorum"]),
            "chain_name": _chain_name(view["chain_id"]),
            "cannot_decide": present.may_decide(view, officer.name, officer.roles),
            "approvals_shown": [{**a, "when": present.utc(a["iat"])} for a in view["approvals"]]}


def _chain_name(chain_id: int) -> str:
    return {1: "Ethereum", 10: "OP Mainnet", 137: "Polygon", 8453: "Base", 42161: "Arbitrum One",
            11155111: "Sepolia", 31337: "local development chain"}.get(chain_id, f"chain {chain_id}")


@bp.get("/")
@signed_in(VIEW_ROLES)
def home(officer: Operator) -> str:
    mint = services().mint
    pending = [_shown(mint.get(item["id"]), officer) for item in mint.list("pending", 50, 0)["items"]]
    mine = [r for r in pending if r["cannot_decide"] is None]
    return render_template("home.html", me=officer, awaiting=mine,
                           others=[r for r in pending if r["cannot_decide"] is not None])


@bp.get("/requests/<request_id>")
@signed_in(VIEW_ROLES)
def request_detail(officer: Operator, request_id: str) -> str:
    if not 1 <= len(request_id) <= 64 or not request_id.replace("-", "").isalnum():
        raise NotFound(f"no mint request {request_id[:64]!r}")
    view = _shown(services().mint.get(request_id), officer)
    trail = [{**e, "when": str(e.get("time", "")).replace("T", " ").replace("Z", " UTC")}
             for e in services().audit.entries_about(view["id"])]
    return render_template("request.html", me=officer, r=view, trail=trail)


@bp.post("/requests/<request_id>/statement")
@signed_in(VIEW_ROLES)
def request_statement(officer: Operator, request_id: str) -> Response:
    body = json_body()
    decision = body.get("decision") if isinstance(body, dict) else None
    if decision not in ("approve", "reject"):
        raise InvalidInput("decision must be approve or reject")
    view = services().mint.get(request_id)
    why_not = present.may_decide(view, officer.name, officer.roles)
    if why_not is not None:
        raise Forbidden(why_not)
    return jsonify(services().console.statement(officer, TYP_MINT_APPROVAL, {
        "request_id": view["id"], "digest": view["digest"], "decision": decision, "policy": view["policy"]}))


@bp.post("/requests/<request_id>/decide")
@signed_in(VIEW_ROLES)
def request_decide(officer: Operator, request_id: str) -> Response:
    view = services().mint.approve(request_id, services().console.envelope(json_body()))
    return jsonify({"status": view["status"], "progress": present.progress(view["quorum"]),
                    "redirect": url_for("console.request_detail", request_id=request_id)})


@bp.get("/new")
@signed_in(MINT_REQUESTER_ROLES)
def new_request(officer: Operator) -> str:
    s = services().console.app.settings
    allowlist = services().console.bundle().policy.mint.allowlist
    chains = {c.chain_id for c in s.chains}
    return render_template("new.html", me=officer, symbol=s.token_symbol,
                           recipients=[e for e in allowlist if e.chain_id in chains], chain_name=_chain_name)


@bp.post("/new/statement")
@signed_in(MINT_REQUESTER_ROLES)
def new_statement(officer: Operator) -> Response:
    body = json_body()
    if not isinstance(body, dict):
        raise InvalidInput("the body must be a JSON object")
    s = services().console.app.settings
    choice = str(body.get("recipient", ""))
    chain, _, address = choice.partition(":")
    if not chain.isdigit() or not services().console.bundle().policy.is_allowlisted(int(chain), address):
        raise InvalidInput("choose a recipient from the allowlist")
    units = amounts.parse_tokens(body.get("amount"), s.token_decimals, "amount", symbol=s.token_symbol)
    return jsonify(services().console.statement(officer, TYP_MINT_REQUEST, {
        "chain_id": int(chain), "to": address, "amount": str(units)}))


@bp.post("/new")
@signed_in(MINT_REQUESTER_ROLES)
def new_create(officer: Operator) -> Response:
    created = services().mint.create(services().console.envelope(json_body()))
    return jsonify({"redirect": url_for("console.request_detail", request_id=created["id"])})


# -- policy: proposals as a diff, votes, enrolments -----------------------------------------------------------

@bp.get("/policy")
@signed_in(POLICY_ROLES)
def policy(officer: Operator) -> str:
    console = services().console
    proposals = console.proposals()
    for p in proposals:
        p["may_vote"] = (POLICY_PROPOSER_ROLE in officer.roles and p["problem"] is None
                         and all(a["operator"] != officer.name for a in p["approvals"]))
    return render_template("policy.html", me=officer, proposals=proposals, enrolments=console.enrolments(),
                           enrolled=console.enrolled_keys(),
                           governance=services().policies.describe()["governance"],
                           admin=POLICY_PROPOSER_ROLE in officer.roles)


@bp.post("/policy/<proposal_id>/statement")
@signed_in(frozenset({POLICY_PROPOSER_ROLE}))
def policy_statement(officer: Operator, proposal_id: str) -> Response:
    body = json_body()
    decision = body.get("decision") if isinstance(body, dict) else None
    if decision not in ("approve", "reject"):
        raise InvalidInput("decision must be approve or reject")
    found = [p for p in services().console.proposals() if p["id"] == proposal_id]
    if not found:
        raise NotFound(f"no open proposal {proposal_id[:64]!r}")
    return jsonify(services().console.statement(officer, TYP_POLICY_APPROVAL, {
        "proposal": proposal_id, "hash": found[0]["hash"], "decision": decision}))


@bp.post("/policy/<proposal_id>/decide")
@signed_in(frozenset({POLICY_PROPOSER_ROLE}))
def policy_decide(officer: Operator, proposal_id: str) -> Response:
    result = services().policies.approve(proposal_id, services().console.envelope(json_body()))
    if result.get("status") == "active":
        services().console.forget_enrolled()
    return jsonify({"status": result.get("status"), "redirect": url_for("console.policy")})


@bp.post("/enrolments/statement")
@signed_in(frozenset({POLICY_PROPOSER_ROLE}))
def enrolment_statement(officer: Operator) -> Response:
    body = json_body()
    ids = body.get("ids") if isinstance(body, dict) else None
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise InvalidInput("ids must be a list of registration ids")
    return jsonify(services().console.enrolment_statement(officer, ids))


@bp.post("/removals/statement")
@signed_in(frozenset({POLICY_PROPOSER_ROLE}))
def removal_statement(officer: Operator) -> Response:
    body = json_body()
    ids = body.get("keys") if isinstance(body, dict) else None
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise InvalidInput("keys must be a list of credential ids")
    return jsonify(services().console.removal_statement(officer, ids))


@bp.post("/proposals")
@signed_in(frozenset({POLICY_PROPOSER_ROLE}))
def propose(officer: Operator) -> Response:
    """A policy proposal (an enrolment or a removal of keys) signed with the admin's security key."""
    services().policies.propose(services().console.envelope(json_body()))
    return jsonify({"redirect": url_for("console.policy")})


# -- security keys ----------------------------------------------------------------------------------------------

@bp.get("/keys")
@signed_in()
def keys(officer: Operator) -> str:
    return _keys_page(officer)


def _keys_page(officer: Operator, invitation: dict[str, str] | None = None) -> str:
    pending = [e for e in services().console.enrolments() if e["operator"] == officer.name]
    enrolled = [{"label": c.label, "fingerprint": webauthn.fingerprint(c), "id": c.id} for c in officer.webauthn]
    others = [op.name for op in services().console.bundle().operators if op.enabled]
    return render_template("keys.html", me=officer, enrolled=enrolled, pending=pending, officers=others,
                           admin=POLICY_PROPOSER_ROLE in officer.roles, invitation=invitation)


@bp.post("/invitations")
@signed_in(frozenset({POLICY_PROPOSER_ROLE}))
def invite(officer: Operator) -> str:
    name = str(request.form.get("operator", ""))
    return _keys_page(officer, {"name": name, "link": services().console.invite(officer, name)})


@bp.get("/enrol/<token>")
def enrol(token: str) -> str:
    name = services().console.invited(token)
    return render_template("enrol.html", me=me(), name=name, token=token)


@bp.post("/keys/options")
def key_options() -> Response:
    name = _registrant(json_body())
    options, challenge = services().console.registration_options(name)
    session["registration"] = {"operator": name, "challenge": challenge}
    return jsonify({"publicKey": options})


@bp.post("/keys")
def key_register() -> Response:
    body = json_body()
    name = _registrant(body)
    asked = session.pop("registration", None) or {}
    if asked.get("operator") != name:
        raise InvalidInput("start the registration again: no registration was asked for here")
    registered = services().console.register(name, asked.get("challenge"), body.get("credential"),
                                             body.get("label"))
    return jsonify({"fingerprint": registered["fingerprint"], "id": registered["id"]})


def _registrant(body: Any) -> str:
    """Who registers: the signed-in officer, or the officer an invitation in the body names."""
    token = body.get("invitation") if isinstance(body, dict) else None
    if isinstance(token, str) and token:
        return services().console.invited(token)
    officer = me()
    if officer is None:
        raise Forbidden("sign in, or open the invitation link a security admin gave you")
    return officer.name
